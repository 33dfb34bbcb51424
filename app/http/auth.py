"""Access control: optional API keys on every route that costs compute, and CORS.

Keys come from `LAMINI_API_KEYS` (plain) and/or `LAMINI_API_KEYS_FILE` (SHA-256 hex digests,
so the file can be shared without sharing the keys). Only digests are kept in memory and a
presented key is compared against every digest with `hmac.compare_digest`, so neither the
comparison nor the position of the matching key shows in the response time. Keys are never
logged or echoed.

The check is ASGI middleware and closed by default: every path needs a key except health,
readiness, the API docs, the playground page and its static files and (unless
`auth_protect_metrics`) `/metrics`. A route added later is therefore protected without anyone
remembering to protect it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.errors import AccessConfigError
from app.http.errors import ErrorShapes
from app.serving.errors import AuthenticationError
from app.settings import Settings

logger = logging.getLogger(__name__)

ALWAYS_OPEN_PATHS = frozenset(
    {
        "/health",
        "/healthz",
        "/ready",
        "/readyz",
        "/live",
        "/livez",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/playground",
    }
)
# The playground page's static files (plain files, no compute): open so the page can load and
# ask for a key. Every call the page makes to the API still needs one.
OPEN_PATH_PREFIXES = ("/playground/static/",)
METRICS_PATH = "/metrics"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def key_digest(key: str) -> bytes:
    """The SHA-256 digest of a key: what is stored and compared, never the key itself."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def read_digest_file(path: Path) -> list[bytes]:
    """Digests from a keys file: one SHA-256 hex digest a line, `#` comments and blanks skipped.

    `sha256sum` output (`<hex>  -`) is accepted as is.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AccessConfigError(f"cannot read the API keys file {path}: {exc}") from exc
    digests = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        hex_digest = text.split()[0].lower()
        if not _SHA256_HEX.fullmatch(hex_digest):
            raise AccessConfigError(
                f"{path}:{number}: expected a SHA-256 hex digest (64 hex characters), "
                'make one with: printf %s "$KEY" | sha256sum'
            )
        digests.append(bytes.fromhex(hex_digest))
    if not digests:
        raise AccessConfigError(f"the API keys file {path} holds no key digests")
    return digests


@dataclass(frozen=True)
class ApiKeyRing:
    """The digests of every accepted key; empty means authentication is off."""

    digests: tuple[bytes, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeyRing:
        digests = [key_digest(key.get_secret_value()) for key in settings.api_keys]
        if settings.api_keys_file is not None:
            digests += read_digest_file(settings.api_keys_file)
        return cls(tuple(digests))

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def accepts(self, key: str) -> bool:
        """Constant-time membership: every digest is compared, whatever matches first."""
        presented = key_digest(key)
        matched = False
        for digest in self.digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if there is one."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class ApiKeyMiddleware:
    """Reject requests without a valid bearer key, except on the open paths."""

    def __init__(
        self,
        app: ASGIApp,
        keyring: ApiKeyRing,
        open_paths: frozenset[str],
        error_shapes: ErrorShapes,
    ) -> None:
        self.app = app
        self.keyring = keyring
        self.open_paths = open_paths
        self.error_shapes = error_shapes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_open(scope):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope["headers"])
        if token is None:
            message = "missing API key: send it as the header 'Authorization: Bearer <key>'"
            code = "missing_api_key"
        elif not self.keyring.accepts(token):
            message = "invalid API key (the key sent is not one this server accepts)"
            code = "invalid_api_key"
        else:
            await self.app(scope, receive, send)
            return
        logger.warning("401 %s %s: %s", scope["method"], scope["path"], code)
        error = AuthenticationError(message, code)
        response = self.error_shapes.for_path(scope["path"]).service_error(error)
        await response(scope, receive, send)

    def _is_open(self, scope: Scope) -> bool:
        # Preflight requests never carry credentials; CORS answers them.
        path = scope["path"]
        return (
            scope["method"] == "OPTIONS"
            or path.rstrip("/") in self.open_paths
            or (path.startswith(OPEN_PATH_PREFIXES) and "/.." not in path)
        )


def open_paths(settings: Settings) -> frozenset[str]:
    """Paths that never need a key."""
    if settings.auth_protect_metrics:
        return ALWAYS_OPEN_PATHS
    return ALWAYS_OPEN_PATHS | {METRICS_PATH}


def install_access_control(app: Starlette, settings: Settings, error_shapes: ErrorShapes) -> None:
    """Add key checking and CORS to a Starlette/FastAPI app (call before request-id logging).

    CORS is added last so it is the outer layer: preflights are answered before the key
    check, and 401 answers carry CORS headers a browser can read.
    """
    keyring = ApiKeyRing.from_settings(settings)
    if keyring.enabled:
        app.add_middleware(
            ApiKeyMiddleware,
            keyring=keyring,
            open_paths=open_paths(settings),
            error_shapes=error_shapes,
        )
        logger.info("API keys required (%d accepted)", len(keyring.digests))
    else:
        logger.info("no API keys configured: every route is open")
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
        )
