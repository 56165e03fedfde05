"""Which app answers the API's routes over HTTP.

The service declares its endpoints twice on purpose: as BentoML API methods, for BentoML's
typed schema (/schema.json), its clients and in-process callers; and as routes of the mounted
FastAPI app, which parses uploads under our limits, admits them (RequestGuard) and answers every
error as documented. BentoML puts its API routes before mounted apps, so without this
middleware its own input handling would answer those paths with its own errors.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class ToTheRoutes:
    """ASGI middleware on BentoML's app: HTTP requests for `paths` go to `routes`."""

    def __init__(self, app: ASGIApp, routes: ASGIApp, paths: set[str]):
        self.app = app
        self.routes = routes
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths:
            await self.routes(scope, receive, send)
        else:
            await self.app(scope, receive, send)
