"""Optional API key: a Bearer token on every route but ``/health`` (and ``/metrics`` unless configured),
compared in constant time (``hmac.compare_digest``)."""

from __future__ import annotations

import hmac

from .errors import send_error

OPEN = ("/health",)


class ApiKeyMiddleware:
    """Pure ASGI, so streaming responses pass through untouched."""

    def __init__(self, app, api_key: str, metrics_need_key: bool = False):
        self.app = app
        self.key = api_key.encode()
        self.open = OPEN if metrics_need_key else OPEN + ("/metrics",)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.open or scope.get("method") == "OPTIONS":
            return await self.app(scope, receive, send)  # OPTIONS: CORS preflights carry no credentials
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
                break
        if not hmac.compare_digest(given, self.key):
            message = "missing API key: send 'Authorization: Bearer <key>'" if not given else "invalid API key"
            return await send_error(scope, send, 401, message, {"WWW-Authenticate": "Bearer"})
        return await self.app(scope, receive, send)


def document_bearer(schema: dict, open_paths: tuple[str, ...]) -> dict:
    """Declare the Bearer scheme in the OpenAPI schema and require it on every operation but ``open_paths``."""
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["bearer"] = {"type": "http", "scheme": "bearer", "description": "the server's API key"}
    for path, operations in schema.get("paths", {}).items():
        if path not in open_paths:
            for op in operations.values():
                op["security"] = [{"bearer": []}]
    return schema
