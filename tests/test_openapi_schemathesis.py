"""The OpenAPI document is exact: schemathesis, run as a new user runs it (`schemathesis run
--checks all`), finds nothing against a real ingress on the tiny model, with auth off and on.

One system (queue, one worker with faces on, so the face routes run their detector) serves both
runs; the ingress is deployed once without API keys and once with them. The runner gets real
images for the media types the schema declares for file parts (`encoding.contentType`), as
schemathesis's media-type strategies are meant to supply, and sends the key in the auth run.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Test cases schemathesis generates per operation and phase (-n); about 1,000 requests a run,
# a minute or two on two CPU cores.
MAX_EXAMPLES = 15
SEED = 17
API_KEY = "schemathesis-key-0123456789"
HOOKS = "test_openapi_schemathesis"  # this module, imported by the runner (SCHEMATHESIS_HOOKS)
# Operations whose positive_data_acceptance is checked by this module's own check (below).
STATEFUL_OPS = ("POST /v1/jobs", "POST /v1/search", "POST /v1/faces/search")
# Rejections of schema-valid requests that depend on the server's state or the image's content,
# which no JSON Schema can say: the active model's vector length, the faces an image holds, an
# Idempotency-Key already used for other files (422, as the IETF Idempotency-Key draft says).
# Each is described in the schema's text; the runner accepts them only with these messages.
STATE_DEPENDENT = re.compile(
    r"no face found in the query image"
    r"|face_index \d+ out of range: the image has \d+ face"
    r"|vector has \d+ values; the model makes \d+-d vectors"
    r"|Idempotency-Key .* was used for a different request"
)
CONFIG = """
[checks]
enabled = true  # --checks all; per-operation settings below still apply

[[operations]]
include-name = ["POST /v1/jobs", "POST /v1/search", "POST /v1/faces/search"]
checks.positive_data_acceptance.enabled = false
"""


# ---- hooks, run inside the schemathesis process ----------------------------------------------
def _images(fmt: str) -> Any:
    """Real images of one format: small random ones, and a photo with a face (skimage's
    astronaut) so searches by face find one."""
    from hypothesis import strategies as st
    from PIL import Image
    from skimage import data as skdata

    def encode(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        return buf.getvalue()

    def random_image(seed: int) -> bytes:
        import numpy as np

        rng = np.random.default_rng(seed)
        return encode(Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)))

    face = encode(Image.fromarray(skdata.astronaut()))
    return st.one_of(st.just(face), st.integers(0, 10_000).map(random_image))


def register_hooks() -> None:
    import schemathesis

    for fmt, pil in (
        ("jpeg", "JPEG"),
        ("png", "PNG"),
        ("gif", "GIF"),
        ("webp", "WEBP"),
        ("bmp", "BMP"),
        ("tiff", "TIFF"),
    ):
        schemathesis.openapi.media_type(f"image/{fmt}", _images(pil))

    @schemathesis.check
    def stateful_positive_data_acceptance(ctx: Any, response: Any, case: Any) -> bool | None:
        """positive_data_acceptance for STATEFUL_OPS (disabled there by CONFIG): a schema-valid
        request is taken, except for the STATE_DEPENDENT rejections."""
        if case.operation.label not in STATEFUL_OPS or case.meta is None:
            return None
        if not case.meta.generation.mode.is_positive:
            return None
        status = response.status_code
        if 200 <= status < 400 or status in (401, 403, 404, 409, 429) or status >= 500:
            return None
        if status == 422 and STATE_DEPENDENT.search(response.text or ""):
            return None
        raise AssertionError(f"valid data should have been accepted, got {status}")


if os.environ.get("SCHEMATHESIS_HOOKS") == HOOKS:
    register_hooks()


# ---- the tests -----------------------------------------------------------------------------
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def system(
    ray_cluster: None, tiny_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    from raylens.actors import launch
    from raylens.serve_app.deploy import undeploy

    from _ports import free_port
    from _system_fixtures import tiny_settings

    settings = tiny_settings(
        tmp_path_factory.mktemp("schemathesis") / "data",
        tiny_model,
        http_port=free_port(),
        max_upload_bytes=3_000_000,
        max_input_bytes=1_500_000,
        events_stream_s=1.0,  # GET /v1/events streams this long; every call returns soon
        events_keepalive_s=0.5,
    )
    launch.start(settings)
    yield settings
    undeploy()
    launch.stop(settings, timeout_s=5)


def serve(settings: Any) -> str:
    """Deploy the ingress with these settings: the first call starts Serve, a later one updates
    the app in place (same port). Returns once several readiness probes in a row answer as these
    settings say (200 with the key, 401 without it when keys are set)."""
    import httpx

    from raylens.serve_app.deploy import deploy

    url = deploy(settings)
    key = {"Authorization": f"Bearer {API_KEY}"}
    deadline = time.monotonic() + 180
    in_a_row = 0
    while in_a_row < 5:
        assert time.monotonic() < deadline, "the ingress never answered as deployed"
        try:
            ok = httpx.get(f"{url}/v1/readyz", headers=key, timeout=5).status_code == 200
            bare = httpx.get(f"{url}/v1/readyz", timeout=5).status_code
            ok = ok and bare == (401 if settings.api_keys else 200)
        except httpx.TransportError:
            ok = False
        in_a_row = in_a_row + 1 if ok else 0
        time.sleep(0.5)
    return url


def run_schemathesis(url: str, tmp_path: Path, auth: bool) -> tuple[int, str, int]:
    """`schemathesis run --checks all` against url: (exit status, output, test cases)."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "run",
        f"{url}/openapi.json",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",  # hypothesis describes strategies through ast, which is not thread-safe here
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    if auth:
        cmd += ["--header", f"Authorization: Bearer {API_KEY}"]
    tests = Path(__file__).parent
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": HOOKS,
        "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540, check=False
    )
    text = out.stdout + out.stderr
    cases = re.search(r"(\d+) generated", text)
    return out.returncode, text, int(cases.group(1)) if cases else 0


@pytest.mark.parametrize("auth", [False, True], ids=["auth-off", "auth-on"])
def test_schemathesis_finds_nothing_against_the_ingress(
    system: Any, tmp_path: Path, auth: bool
) -> None:
    url = serve(system.model_copy(update={"api_keys": API_KEY if auth else None}))
    t0 = time.monotonic()
    status, text, cases = run_schemathesis(url, tmp_path, auth)
    took = time.monotonic() - t0
    print(f"schemathesis, auth {'on' if auth else 'off'}: {cases} test cases in {took:.0f} s")
    assert status == 0, text[-20_000:]
    assert cases > 100, text[-5_000:]  # it really ran
