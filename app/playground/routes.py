"""The playground's routes in one router, for the app factory to include."""

from fastapi import APIRouter

from app.playground.api import router as api_router
from app.playground.page import router as page_router

router = APIRouter()
router.include_router(api_router)
router.include_router(page_router)
