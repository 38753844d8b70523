"""The HTTP app of one ingress replica: routers behind auth and request limits, one error shape.

No business logic here: every handler is async and only awaits the cluster API, which runs Ray
calls, payload writes and hashing off the event loop, so /v1/healthz answers while workers are
saturated.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI

from raylens.actors.api import ClusterAPI
from raylens.cluster.settings import Settings
from raylens.serve_app.error_handlers import exception_handlers
from raylens.serve_app.middleware import authoriser, host_origin_guard, inflight_limit
from raylens.serve_app.openapi import DESCRIPTION, TAGS
from raylens.serve_app.redaction import Redactor
from raylens.serve_app.routes import events, health, jobs, runs, search, webhooks


def create_app(settings: Settings, api: ClusterAPI | None = None) -> FastAPI:
    """The FastAPI app of one ingress replica (a ClusterAPI of its own unless given one)."""
    api = api or ClusterAPI(settings)
    auth = [Depends(authoriser(settings))]
    app = FastAPI(
        title="raylens",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        middleware=[host_origin_guard(settings), inflight_limit(settings)],
        exception_handlers=exception_handlers(settings),
    )
    for router in (
        jobs.router(api, settings, auth),
        search.router(api, settings, auth),
        events.router(api, settings, auth),
        webhooks.router(api, auth),
        runs.router(api, auth),
        health.router(api, auth, Redactor(settings).values),
    ):
        app.include_router(router)
    app.state.api = api
    return app
