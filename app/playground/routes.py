"""The playground's routes in one router, for the app factory to include."""

from fastapi import APIRouter

from app.playground import api, page

router = APIRouter()
router.include_router(api.router)
router.include_router(page.router)
