"""Unit (Ray-free): the ingress checks Host against its bind address and refuses cross-origin
browser requests (DNS rebinding, form posts from other sites); /v1/healthz stays open."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from raylens.cluster.settings import Settings
from raylens.errors import JobNotFound
from raylens.serve_app.app import create_app


class StubAPI:
    """The two ClusterAPI calls these tests reach: readiness and retrying a job."""

    async def ready(self) -> dict[str, Any]:
        return {"ready": True, "queue": "ok", "workers": []}

    async def retry(self, job_id: str) -> Any:
        raise JobNotFound(f"no job {job_id}")


def client(tmp_path, host: str = "127.0.0.1:8000", **overrides: Any) -> TestClient:
    settings = Settings(data_dir=tmp_path, **overrides)
    app = create_app(settings, StubAPI())  # type: ignore[arg-type]
    return TestClient(app, base_url=f"http://{host}")


def assert_error(resp: Any, status: int, setting: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert setting in body["error"]["message"]


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8000", "127.0.0.1", "localhost:8000", "localhost", "[::1]:8000", "[::1]"]
)
def test_loopback_binding_accepts_loopback_hosts(tmp_path, host) -> None:
    with client(tmp_path, host) as c:
        assert c.get("/v1/readyz").status_code == 200
        assert c.post("/v1/jobs/abc/retry").status_code == 404


@pytest.mark.parametrize("host", ["attacker.example:8000", "attacker.example", "127.0.0.1:9999"])
def test_loopback_binding_refuses_other_hosts_with_the_setting_to_change(tmp_path, host) -> None:
    with client(tmp_path, host) as c:
        assert_error(c.get("/v1/readyz"), 421, "RAYLENS_HTTP_ALLOWED_HOSTS")
        assert_error(c.post("/v1/jobs/abc/retry"), 421, "RAYLENS_HTTP_ALLOWED_HOSTS")
        assert c.get("/v1/healthz").status_code == 200


def test_allowed_hosts_setting_adds_names(tmp_path) -> None:
    with client(tmp_path, "raylens.internal", http_allowed_hosts="raylens.internal") as c:
        assert c.get("/v1/readyz").status_code == 200
    with client(tmp_path, "other.internal", http_allowed_hosts="raylens.internal") as c:
        assert_error(c.get("/v1/readyz"), 421, "RAYLENS_HTTP_ALLOWED_HOSTS")


def test_wildcard_binding_accepts_any_host_unless_an_allow_list_is_set(tmp_path) -> None:
    with client(tmp_path, "10.1.2.3:8000", http_host="0.0.0.0") as c:
        assert c.get("/v1/readyz").status_code == 200
    listed = {"http_host": "0.0.0.0", "http_allowed_hosts": "search.example.com"}
    with client(tmp_path, "search.example.com", **listed) as c:
        assert c.get("/v1/readyz").status_code == 200
    with client(tmp_path, "attacker.example:8000", **listed) as c:
        assert_error(c.get("/v1/readyz"), 421, "RAYLENS_HTTP_ALLOWED_HOSTS")
    with client(tmp_path, "127.0.0.1:8000", **listed) as c:  # local callers keep working
        assert c.get("/v1/readyz").status_code == 200


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://localhost:3000"])
def test_cross_origin_browser_requests_are_refused(tmp_path, origin) -> None:
    with client(tmp_path) as c:
        headers = {"Origin": origin}
        assert_error(c.post("/v1/jobs/abc/retry", headers=headers), 403, "ALLOWED_ORIGINS")
        assert_error(c.get("/v1/readyz", headers=headers), 403, "RAYLENS_HTTP_ALLOWED_ORIGINS")
        assert c.get("/v1/healthz", headers=headers).status_code == 200


def test_same_origin_and_allowed_origins_pass_and_no_origin_is_unaffected(tmp_path) -> None:
    with client(tmp_path) as c:
        assert c.post("/v1/jobs/abc/retry").status_code == 404  # curl, the Python client
        same = {"Origin": "http://127.0.0.1:8000"}  # e.g. the /docs page of the ingress itself
        assert c.post("/v1/jobs/abc/retry", headers=same).status_code == 404
    with client(tmp_path, http_allowed_origins="http://localhost:3000, https://app.example") as c:
        for origin in ("http://localhost:3000", "https://app.example"):
            resp = c.post("/v1/jobs/abc/retry", headers={"Origin": origin})
            assert resp.status_code == 404, resp.text
        assert c.get("/v1/readyz", headers={"Origin": "http://evil.example"}).status_code == 403


def test_origin_check_holds_with_api_keys_and_before_auth(tmp_path) -> None:
    with client(tmp_path, api_keys="k1") as c:
        resp = c.post("/v1/jobs/abc/retry", headers={"Origin": "http://evil.example"})
        assert_error(resp, 403, "RAYLENS_HTTP_ALLOWED_ORIGINS")
        ok = c.post("/v1/jobs/abc/retry", headers={"Authorization": "Bearer k1"})
        assert ok.status_code == 404


def test_openapi_declares_the_host_and_origin_refusals(tmp_path) -> None:
    with client(tmp_path) as c:
        doc = c.get("/openapi.json").json()
    retry = doc["paths"]["/v1/jobs/{job_id}/retry"]["post"]["responses"]
    ready = doc["paths"]["/v1/readyz"]["get"]["responses"]
    for responses in (retry, ready):
        assert {"403", "421"} <= set(responses)
    healthz = doc["paths"]["/v1/healthz"]["get"]["responses"]
    assert not {"403", "421"} & set(healthz)
