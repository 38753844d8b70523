"""deploy(): what a user sees when Serve cannot start (unit: Serve's start is replaced)."""

from __future__ import annotations

import pytest

from raylens.cluster.settings import Settings
from raylens.errors import SettingsError


def _serve_start_raising(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    from ray import serve

    def start(**_: object) -> None:
        raise exc

    monkeypatch.setattr(serve, "start", start)


def test_a_taken_http_port_is_a_settings_error_naming_the_port_and_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from raylens.serve_app.deploy import deploy

    # What Ray 2.60 raises from ProxyActor.ready() (a RayTaskError whose text carries this).
    _serve_start_raising(monkeypatch, RuntimeError("Failed to bind to address '127.0.0.1:28123'."))

    with pytest.raises(SettingsError) as err:
        deploy(Settings(http_host="127.0.0.1", http_port=28123))

    assert "28123" in err.value.message and "RAYLENS_HTTP_PORT" in err.value.message


def test_other_serve_start_failures_are_not_reported_as_a_taken_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from raylens.serve_app.deploy import deploy

    _serve_start_raising(monkeypatch, RuntimeError("the Serve controller died"))

    with pytest.raises(RuntimeError, match="controller died"):
        deploy(Settings(http_port=28124))
