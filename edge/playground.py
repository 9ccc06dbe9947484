"""The browser playground: static files (edge/static/) served at /playground/.

The page itself holds no secret and is served without a key; every API call it makes sends the key the user
types in as `Authorization: Bearer`, so it can do nothing a curl with that key could not. Off with
`server.playground: false` (the prod Kubernetes overlay turns it off).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"


async def _to_index(request: Request) -> Response:
    return RedirectResponse("/playground/", status_code=307)


def playground_routes() -> list[BaseRoute]:
    return [
        Route("/playground", _to_index, methods=["GET"]),
        Mount("/playground", StaticFiles(directory=STATIC, html=True), name="playground"),
    ]
