"""The "store" checks that need no service: the data folder and the SQLite job store."""

from __future__ import annotations

import os
import shutil
import sqlite3

from raylens.cli.doctor.common import gib
from raylens.cli.doctor.report import ERROR, OK, WARN, Check
from raylens.cluster.settings import Settings

LOW_DISK_BYTES = 1 << 30


def check_data_dir(settings: Settings) -> Check:
    path = settings.data_dir
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    writable = os.access(existing, os.W_OK | os.X_OK)
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        free = None
    where = str(path) if path.exists() else f"{path} (not created yet)"
    detail = f"{where}; {gib(free)} free on its disk"
    data = {"path": str(path), "exists": path.exists(), "free_bytes": free}
    if not writable:
        return Check(
            "data dir",
            ERROR,
            detail + f"; {existing} is not writable",
            "set RAYLENS_DATA_DIR to a folder this user can write",
            group="store",
            data=data,
        )
    if free is not None and free < LOW_DISK_BYTES:
        return Check(
            "data dir",
            WARN,
            detail + "; less than 1 GiB free",
            "free disk space or set RAYLENS_DATA_DIR to a larger disk",
            group="store",
            data=data,
        )
    return Check("data dir", OK, detail, group="store", data=data)


def check_sqlite_store(settings: Settings) -> Check:
    path = settings.sqlite_path
    if not path.exists():
        return Check(
            "job store",
            OK,
            f"sqlite {path}: not created yet (`raylens up` creates it)",
            group="store",
        )
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        try:
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
            rows = db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        return Check(
            "job store",
            ERROR,
            f"sqlite {path} cannot be read: {exc}",
            "check the file's permissions, or move it away and let `raylens up` create a new "
            "one (its jobs are lost)",
            group="store",
        )
    jobs = {state: n for state, n in rows}
    counts = ", ".join(f"{k} {v}" for k, v in sorted(jobs.items())) or "no jobs"
    return Check(
        "job store",
        OK,
        f"sqlite {path} ({mode} journal, {path.stat().st_size / 1e6:.1f} MB): {counts}",
        group="store",
        data={"backend": "sqlite", "path": str(path), "jobs": jobs},
    )
