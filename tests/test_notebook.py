"""The Kaggle quickstart notebook runs headless, start to end, on the tiny model."""

from __future__ import annotations

import re
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from _ports import free_port

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "kaggle_quickstart.ipynb"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

CLEANUP = """\
try:
    from raylens.serve_app.deploy import shutdown as _shutdown
    _shutdown()
except Exception as exc:  # best effort after a failed cell
    print("cleanup failed:", repr(exc))
"""


def _text(nb: Any) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o.get("text", ""))
            elif "data" in o and "text/plain" in o["data"]:
                out.append(o["data"]["text/plain"])
    return "\n".join(out)


def _images(nb: Any) -> int:
    return sum(
        1
        for cell in nb.cells
        for o in cell.get("outputs", [])
        if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
    )


def test_kaggle_quickstart_runs(
    tmp_path: Path, tiny_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbclient  # dev dependencies: a missing one must fail CI, not skip the notebook
    import nbformat
    from nbclient.exceptions import CellExecutionError

    env = {
        "RAYLENS_NOTEBOOK_CI": "1",
        "RAYLENS_DATA_DIR": str(tmp_path / "data"),
        "RAYLENS_CLIP_MODEL": tiny_model.name,
        "RAYLENS_CLIP_PRETRAINED": str(tiny_model.checkpoint_path),
        "RAYLENS_CLIP_MODEL_CONFIG": str(tiny_model.config_path),
        "RAYLENS_NUM_WORKERS": "1",
        "RAYLENS_HTTP_PORT": str(free_port()),
        "RAYLENS_RAY_PORT": str(free_port()),
        "RAYLENS_DASHBOARD_PORT": str(free_port()),
        "RAYLENS_NAMESPACE": f"raylens-nb-{uuid.uuid4().hex[:8]}",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    monkeypatch.delenv("RAYLENS_NOTEBOOK_IMAGES", raising=False)  # exercise image generation
    workdir = tmp_path / "work"
    workdir.mkdir()

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    # The "python3" kernelspec must run this interpreter (jupyter_client maps a bare "python"
    # argv to sys.executable); fail loudly if it resolved to another environment.
    pin = f"import sys\nassert sys.prefix == {sys.prefix!r}, sys.executable"
    nb.cells.insert(0, nbformat.v4.new_code_cell(pin))
    n_cells = len(nb.cells)
    nb.cells.append(nbformat.v4.new_code_cell(CLEANUP))

    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    failure: CellExecutionError | None = None
    client.reset_execution_trackers()
    with client.setup_kernel():
        try:
            for index in range(n_cells):
                client.execute_cell(nb.cells[index], index)
        except CellExecutionError as exc:
            failure = exc
            client.execute_cell(nb.cells[n_cells], n_cells)  # stop Ray / Serve in the kernel
    if failure is not None:
        pytest.fail(f"a notebook cell failed:\n{failure}", pytrace=False)

    text = _text(nb)
    counts = re.search(r"done: (\d+)  failed: (\d+)", text)
    assert counts, text[-3000:]
    done, failed = int(counts.group(1)), int(counts.group(2))
    assert failed == 0 and done >= 12, text[-3000:]
    assert "text: 'a photo of a cat'" in text and "raylens stopped" in text
    assert _images(nb) == 2  # two contact sheets
    assert len(list((workdir / "raylens_demo_images").glob("*.png"))) >= 12
