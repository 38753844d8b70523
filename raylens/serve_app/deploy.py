"""The Serve deployment of the HTTP ingress, and how it is started.

- `raylens up` calls `deploy(settings)` after the queue and the workers are up.
- `serve deploy raylens/serve_app/serve_config.yaml` uses `app_builder` (settings from RAYLENS_*).
- A notebook calls `launch()`: a local Ray cluster in this process, raylens, and the ingress.
"""

from __future__ import annotations

import logging
from typing import Any

from raylens.cluster.settings import Settings, load_settings
from raylens.errors import SettingsError

log = logging.getLogger("raylens.serve")

APP_NAME = "raylens"
DEPLOYMENT_NAME = "raylens-ingress"


class Ingress:
    """One ingress replica: a FastAPI app over the cluster's async API."""

    def __init__(self, settings: Settings) -> None:
        from raylens.actors.api import ClusterAPI

        self.settings = settings
        self.api = ClusterAPI(settings)

    def __serve_build_asgi_app__(self) -> Any:
        from raylens.serve_app.app import create_app

        return create_app(self.settings, self.api)


def http_options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.http_host,
        "port": settings.http_port,
        "request_timeout_s": settings.http_request_timeout_s,
    }


def deployment_options(settings: Settings) -> dict[str, Any]:
    """The ingress deployment's options (backpressure from settings, never Serve's defaults)."""
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        # The replica admits more than its own limit so that it, not Serve, refuses the excess:
        # its 503 `overloaded` carries Retry-After (Serve's own 503 does not).
        "max_ongoing_requests": settings.http_max_ongoing_requests
        + max(settings.http_max_queued_requests, 16),
        "max_queued_requests": settings.http_max_queued_requests,
        # The ingress only awaits; it needs no CPU reservation of its own, so it never
        # competes with workers for scheduling.
        "ray_actor_options": {"num_cpus": 0},
    }
    top = settings.http_max_replicas
    if top is not None and top > settings.http_replicas:
        options["autoscaling_config"] = {
            "min_replicas": settings.http_replicas,
            "initial_replicas": settings.http_replicas,
            "max_replicas": top,
            "target_ongoing_requests": settings.http_target_ongoing_requests,
        }
    else:
        options["num_replicas"] = settings.http_replicas
    return options


def build(settings: Settings) -> Any:
    """The bound Serve application."""
    from ray import serve

    deployment = serve.deployment(serve.ingress()(Ingress), **deployment_options(settings))
    return deployment.bind(settings)  # type: ignore[attr-defined]


def app_builder(args: dict[str, Any] | None = None) -> Any:
    """Entry point for `serve run` / `serve deploy`: args override RAYLENS_* settings."""
    return build(load_settings(**(args or {})))


def deploy(settings: Settings) -> str:
    """Start Serve's HTTP proxy (host/port from settings) and run the ingress; returns its URL."""
    from ray import serve

    try:
        serve.start(http_options=http_options(settings))
    except Exception as exc:  # Serve's proxy raises a RuntimeError wrapped by Ray
        if "Failed to bind" not in str(exc):
            raise
        raise SettingsError(
            f"HTTP port {settings.http_port} on {settings.http_host} is taken by another "
            "process: stop it, or choose another port with RAYLENS_HTTP_PORT"
        ) from None
    serve.run(build(settings), name=APP_NAME, route_prefix="/", blocking=False)
    return url_of(settings)


def url_of(settings: Settings) -> str:
    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::") else settings.http_host
    return f"http://{host}:{settings.http_port}"


def undeploy() -> None:
    """Remove the ingress and Serve's proxies (jobs and workers are left alone)."""
    from ray import serve

    try:
        serve.shutdown()
    except Exception as exc:  # Serve was never started on this cluster
        log.info("serve shutdown: %s", exc)


def launch(settings: Settings | None = None, http_port: int | None = None) -> str:
    """Everything on this machine from a notebook or script: a Ray cluster inside this
    process (all its GPUs: one worker per GPU unless RAYLENS_NUM_WORKERS says otherwise),
    the queue, the workers and the HTTP ingress. Returns the ingress URL."""
    import ray

    from raylens.actors import launch

    if settings is None:
        settings = load_settings()
    if http_port is not None:
        settings = settings.model_copy(update={"http_port": http_port})
    if not ray.is_initialized():
        ray.init(address="local", namespace=settings.namespace, log_to_driver=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus > 1 and "num_workers" not in settings.model_fields_set:
        settings = settings.model_copy(update={"num_workers": gpus})
    launch.start(settings)
    url = deploy(settings)
    _launched.append(settings)
    return url


_launched: list[Settings] = []


def shutdown() -> None:
    """Stop what launch() started, then Ray (queued jobs stay in the store)."""
    import ray

    from raylens.actors import launch

    undeploy()
    while _launched:
        launch.stop(_launched.pop(), timeout_s=10)
    ray.shutdown()
