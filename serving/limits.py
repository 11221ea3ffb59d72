"""Body size limit: a body over ``max_body_bytes`` is refused with 413 before it is read in full.

A declared ``Content-Length`` over the limit is refused at once, unread; a chunked body is read only up to
the limit. The body is then handed to the app as it came.
"""

from __future__ import annotations

from .errors import send_error


class BodyLimitMiddleware:
    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await send_error(scope, send, 400, "Content-Length is not a number")
        if declared is not None:
            if declared > self.limit:
                return await send_error(scope, send, 413, f"body of {declared} bytes is over the limit of "
                                        f"{self.limit} bytes")
            return await self.app(scope, receive, send)
        # No length given (chunked): read up to the limit, then replay what was read.
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                return await send_error(scope, send, 413, f"body is over the limit of {self.limit} bytes")
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)
