"""`GET /playground` and its static files, with headers that keep the page to its own origin.

The files are package data (`app/playground/static/`): plain HTML, CSS and an ES module, no
build step and nothing fetched from elsewhere. Only the files that ship are served (the list is
read once), so no path a client sends can reach anything else. They are open without an API
key (see `app.http.auth`); the key is typed into the page and sent by it on every API call.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

STATIC_DIR = Path(__file__).parent / "static"
PAGE = STATIC_DIR / "index.html"

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_FILES = {path.name: path for path in STATIC_DIR.iterdir() if path.suffix in _MEDIA_TYPES}

# Scripts, styles, images and API calls from this origin only; no inline code, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _file(path: Path) -> FileResponse:
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=SECURITY_HEADERS)


@router.get("/playground")
async def playground_page() -> FileResponse:
    return _file(PAGE)


@router.get("/playground/static/{name}")
async def playground_file(name: str) -> FileResponse:
    path = _FILES.get(name)
    if path is None:
        raise HTTPException(404, f"the playground has no file {name!r}")
    return _file(path)
