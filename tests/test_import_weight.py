"""Unit: the processes that never run the model (supervisor, queue, Serve replica, CLI) import
raylens without torch or open_clip: seconds of CPU and ~450 MB of RSS each. Holding a worker
handle imports the worker module, so that module must not import them at its top either."""

from __future__ import annotations

import subprocess
import sys

LIGHT = [
    "raylens.cli.main",
    "raylens.actors.supervisor",
    "raylens.actors.queue",
    "raylens.actors.launch",
    "raylens.actors.worker",
    "raylens.serve_app.app",
    "raylens.serve_app.deploy",
]


def test_control_modules_import_without_torch_or_open_clip() -> None:
    code = (
        f"import sys\nfor m in {LIGHT!r}: __import__(m)\n"
        "print(sorted(m for m in ('torch', 'open_clip', 'dlib') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"
