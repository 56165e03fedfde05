"""The page at /: index.html with its script and style as files of their own, under a strict
Content-Security-Policy: nothing inline runs, the page reaches this service alone, and it
cannot be framed. The preview of the chosen picture is a blob: URL, the one source beyond 'self'.

A gateway in front (the nginx role) passes this policy through and gives every other answer a
lockdown policy of its own."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
}
HERE = Path(__file__).parent
router = APIRouter(include_in_schema=False)


def serve(name: str, media_type: str):
    body = (HERE / name).read_bytes()
    # no-cache: a browser revalidates, so a deploy's page never runs the last release's script.
    headers = {"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"}

    async def endpoint() -> Response:
        return Response(body, media_type=media_type, headers=headers)

    return endpoint


for path, (name, media_type) in FILES.items():
    router.add_api_route(path, serve(name, media_type), methods=["GET"])
