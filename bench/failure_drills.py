"""Failure drills: the durability columns of `make bench`, one short drill per row.

Every drill runs the row's own code on the tests' tiny OpenCLIP model (tests/_tiny_clip.py;
the drills measure durability, not speed) over `images` generated JPEGs plus one corrupt file
(JPEG magic bytes, then garbage) placed second among the inputs. At half-way (half the good
images' vectors stored, and the row holding work) every process of the row that runs the model
gets SIGKILL; the row is then restarted the way that system restarts (RESTART), and the drill
waits until every image is stored or failed, or nothing has moved for `settle_s` seconds
(bench_http's --drill-settle). The peers count from a Journal (_peer_common) their processes
append to; raylens (failure_raylens.py) from its job store and index.

    uv run python bench/failure_drills.py [--rows raw,rq,...] [--images 48] [--json]

Columns (DEFINITIONS, also in bench_http's --help):
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peer_common import TESTS_DIR, stdout_to_stderr  # noqa: E402

DEFINITIONS = """\
  corrupt   one corrupt image among the inputs: "finished+reported" (the row ran to its end
            and named the bad image as failed), "finished, not reported" (it ended without
            naming it), "crashed" (the row raised or never ended)
  redone    images whose processing began more than once (a raylens job leased twice, an RQ
            job or Celery task or HTTP request started again, a Ray Data batch re-run), whether
            or not the first try got as far as storing; a second write of the same point id
            counts here, not as dup
  lost      good images with no vector stored when the drill ended: every image stored or
            failed, or, where work got stuck, the wait ran out (rq: --drill-settle s without
            progress; serve_task_consumer: 30 s + --drill-settle after the last enqueue)
  dup       stored points minus distinct images among them: the same image stored under a
            second point id
  killed    what got SIGKILL at half-way (half the good images stored; ray_data: embedded)
            and how it came back
"""
__doc__ = (__doc__ or "") + "\n" + DEFINITIONS

ROWS = (
    "raw",
    "raylens_bulk",
    "raylens_http",
    "rq",
    "serve_task_consumer",
    "serve_naive",
    "ray_data",
    "serve_batch",
)
PEER_MODULES = {
    "rq": "peer_rq",
    "serve_task_consumer": "peer_serve_tc",
    "serve_naive": "peer_serve_naive",
    "ray_data": "peer_ray_data",
    "serve_batch": "peer_serve_batch",
}
# How each peer's model-running processes are titled by Ray (their /proc cmdline).
VICTIMS = {
    "serve_task_consumer": "ServeReplica:peer-tc:",
    "serve_naive": "ServeReplica:peer-naive:",
    "serve_batch": "ServeReplica:peer-batch:",
    "ray_data": "MapBatches(Embedder)",
}
RESTART = {
    "raylens_bulk": "raylens's supervisor replaces the worker; its leases expire and re-queue",
    "raylens_http": "raylens's supervisor replaces the worker; its leases expire and re-queue",
    "rq": "the drill starts the same worker command again (as systemd would)",
    "serve_task_consumer": "the Serve controller replaces the replica",
    "serve_naive": "the Serve controller replaces the replica; clients do not retry",
    "serve_batch": "the Serve controller replaces the replica; clients do not retry",
    "ray_data": "Ray restarts the actor and retries its batch (max_restarts=-1); if the "
    "dataset fails anyway, the drill runs the same pipeline again",
}
CORRUPT_BYTES = b"\xff\xd8\xff\xe0" + b"not really a jpeg " * 8
CORRUPT_NAME = "photo_00000_corrupt.jpg"
FINISHED_REPORTED = "finished+reported"
FINISHED_SILENT = "finished, not reported"
CRASHED = "crashed"


@dataclass
class Drill:
    """One row's failure figures (None: does not apply to that row)."""

    name: str
    corrupt: str | None = None
    redone: int | None = None
    lost: int | None = None
    dup: int | None = None
    images: int = 0  # good images in the drill
    stored_at_kill: int | None = None
    killed: str = ""
    seconds: float = 0.0
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- the counting (pure) --------------------------------------------------------------------


def corrupt_verdict(finished: bool, reported: bool) -> str:
    if not finished:
        return CRASHED
    return FINISHED_REPORTED if reported else FINISHED_SILENT


def count_kill(expected: Iterable[str], began: Counter[str], stored: Iterable[str]) -> dict:
    """redone / lost / dup (DEFINITIONS) over the good images `expected` (their keys), from
    how often each image's processing began and the content key of every stored point."""
    expected = list(expected)
    stored = list(stored)
    held = set(stored)
    return {
        "redone": sum(1 for k in expected if began[k] > 1),
        "lost": sum(1 for k in expected if k not in held),
        "dup": len(stored) - len(held),
    }


def read_journal(path: Path) -> tuple[Counter[str], Counter[str]]:
    """(how often each key's processing began, how often it was stored) from a Journal file."""
    began: Counter[str] = Counter()
    stored: Counter[str] = Counter()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return began, stored
    for line in text.splitlines():
        tag, _, key = line.partition(" ")
        if tag == "B":
            began[key] += 1
        elif tag == "S":
            stored[key] += 1
    return began, stored


def in_flight(journal: Path, exclude: str = "") -> int:
    """Images in the model's hands: processing began, neither embedded nor stored yet
    (`exclude`: the corrupt one, which never is)."""
    began, past = set(), set()
    try:
        text = journal.read_text()
    except FileNotFoundError:
        return 0
    for line in text.splitlines():
        tag, _, key = line.partition(" ")
        (began if tag == "B" else past).add(key)
    return len(began - past - {exclude})


def journal_count(journal: Path, tag: str) -> int:
    """How many `tag` lines (B, E or S) the journal holds."""
    try:
        return sum(1 for line in journal.read_text().splitlines() if line.startswith(f"{tag} "))
    except FileNotFoundError:
        return 0


def cell(v: int | str | None) -> str:
    return "-" if v is None else str(v)


def table_lines(drills: list[dict[str, Any]]) -> list[str]:
    """The failure section printed under the bench table: one line per row, then the
    definitions."""
    out = [
        f"  {'failure drill':22} {'images':>6} {'corrupt':>22} {'redone':>7} {'lost':>5} "
        f"{'dup':>4}  killed"
    ]
    for d in drills:
        out.append(
            f"  {d['name']:22} {d['images']:>6} {cell(d['corrupt']):>22} {cell(d['redone']):>7} "
            f"{cell(d['lost']):>5} {cell(d['dup']):>4}  {d['killed'] or '-'}"
        )
        if d.get("notes"):
            out.append(f"  {'':22} {d['notes']}")
    return out


# ---- processes -------------------------------------------------------------------------------


def descendants(match: str) -> list[psutil.Process]:
    """This process's descendants whose command line (a Ray worker's title) contains match."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if match in " ".join(p.cmdline()):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


class HalfwayKiller(threading.Thread):
    """Polls `progress()` (vectors stored) and, once it reaches `at`, sends SIGKILL to every
    process `victims()` names; records what it killed and the progress at that moment.

    Progress moves in steps (a batch acknowledged, a job collected), so `at` is often reached
    just after the work in hand finished: with `busy`, the kill waits (up to `busy_wait_s`)
    until the row holds work again, so that it lands in the middle of that work."""

    def __init__(
        self,
        progress: Callable[[], int],
        at: int,
        victims: Callable[[], list[int]],
        timeout_s: float,
        period_s: float = 0.02,
        busy: Callable[[], bool] | None = None,
        busy_wait_s: float = 2.0,
    ) -> None:
        super().__init__(name="halfway-killer", daemon=True)
        self.progress, self.at, self.victims = progress, at, victims
        self.busy, self.busy_wait_s = busy, busy_wait_s
        self.timeout_s, self.period_s = timeout_s, period_s
        self.killed: list[int] = []
        self.stored_at_kill: int | None = None
        self.error: str | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self.halt.is_set() and time.monotonic() < deadline:
            try:
                if self.progress() >= self.at:
                    self._wait_busy()
                    pids = self.victims()
                    for pid in pids:
                        try:
                            os.kill(pid, 9)
                            self.killed.append(pid)
                        except ProcessLookupError:
                            pass
                    self.stored_at_kill = self.progress()
                    if not pids:
                        self.error = "no process to kill was found"
                    return
            except Exception as exc:  # the row may be starting or stopping: look again
                self.error = f"{type(exc).__name__}: {exc}"[:300]
            self.halt.wait(self.period_s)
        if self.stored_at_kill is None:
            self.error = self.error or f"half-way ({self.at} stored) never reached"

    def _wait_busy(self) -> None:
        deadline = time.monotonic() + self.busy_wait_s
        while self.busy is not None and time.monotonic() < deadline:
            try:
                if self.busy():
                    return
            except Exception:  # e.g. a report that timed out: look again
                pass
            time.sleep(self.period_s)


def killed_text(k: Any, what: str, restart: str, progress: str = "stored") -> str:
    if not k.killed:
        return f"nothing killed ({k.error or 'the row ended first'})"
    return f"{len(k.killed)} {what} at {k.stored_at_kill} {progress}; {restart}"


# ---- inputs ----------------------------------------------------------------------------------


def tiny_model(folder: Path) -> Any:
    """The tests' tiny OpenCLIP model, written into folder (config + checkpoint)."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.append(str(TESTS_DIR))
    from _tiny_clip import write_tiny_model  # type: ignore[import-not-found]

    return write_tiny_model(folder)


def drill_inputs(folder: Path, n: int, seed: int) -> tuple[list[Path], Path]:
    """n generated JPEGs (bench_core.make_images) and one corrupt file; (all inputs with the
    corrupt one second, the corrupt one). Second, not first: the Serve peers warm up on the
    first."""
    from bench_core import make_images

    good = [p.resolve() for p in make_images(folder, n, seed=seed)]
    bad = (folder / CORRUPT_NAME).resolve()
    bad.write_bytes(CORRUPT_BYTES)
    return [good[0], bad, *good[1:]], bad


# ---- raw -------------------------------------------------------------------------------------


def drill_raw(work: Path, tiny: Any, n: int, threads: int) -> Drill:
    """The raw-limit loop on the inputs: no queue, nothing stored, no resume (no kill drill)."""
    from bench_core import raw_limit

    paths, _ = drill_inputs(work / "images", min(n, 8), seed=3)
    t0 = time.monotonic()
    try:
        raw_limit(
            paths, tiny.name, threads, [8], str(tiny.checkpoint_path), tiny.config_path
        )  # fmt: skip
        finished, why = True, ""
    except Exception as exc:
        finished, why = False, f"{type(exc).__name__}: {str(exc)[:120]}"
    return Drill(
        "raw",
        corrupt=corrupt_verdict(finished, False),
        images=len(paths) - 1,
        seconds=time.monotonic() - t0,
        killed="n/a: stores nothing; a restart starts over from the first image",
        notes=f"corrupt: {why}" if why else "",
    )


# ---- the peers -------------------------------------------------------------------------------


def stored_keys(name: str, work: Path, wait_s: float = 30.0) -> list[str]:
    """The image key of every point in the peer's collection (read once its processes have
    let go of the folder)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return _stored_keys(name, work)
        except Exception:  # the peer's last process may still hold the folder
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _stored_keys(name: str, work: Path) -> list[str]:
    if name in ("ray_data", "serve_batch"):  # Qdrant Edge through raylens's VectorIndex
        from raylens.cluster.index import VectorIndex
        from raylens.cluster.settings import Settings

        ix = VectorIndex(Settings(data_dir=work / "qdrant", qdrant_collection="peer"))
        try:
            return [ix.get(i)["payload"]["key"] for i in ix.point_ids()]
        finally:
            ix.close()
    from qdrant_client import QdrantClient

    folder, coll, field_ = (
        (work / "rq-qdrant", "images", "path") if name == "rq" else (work / "qdrant", "peer", "key")
    )
    client = QdrantClient(path=str(folder))
    try:
        if not client.collection_exists(coll):
            return []
        points, _ = client.scroll(coll, limit=1_000_000, with_payload=True)
        return [p.payload[field_] for p in points]
    finally:
        client.close()


def drill_peer(
    name: str, work: Path, tiny: Any, n: int, threads: int, settle_s: float, **peer_kwargs: Any
) -> Drill:
    """One peer: its own run() on the inputs, killed at half-way (see VICTIMS, RESTART);
    peer_kwargs go to its run() (the smoke tests shrink batches with them)."""
    import importlib

    module = importlib.import_module(PEER_MODULES[name])
    paths, bad = drill_inputs(work / "images", n, seed=0)
    journal = work / "journal.log"
    at = math.ceil(n / 2)
    common = dict(
        pretrained=str(tiny.checkpoint_path), model_config=tiny.config_path, **peer_kwargs
    )
    t0 = time.monotonic()
    out: dict[str, Any] | None = None
    why = ""
    runs = 1

    def run_once() -> dict[str, Any]:
        if name == "rq":
            return module.run(
                paths, tiny.name, threads, work, **common, timeout_s=120, journal=journal,
                kill_at=at, settle_s=settle_s,
            )  # fmt: skip
        if name == "serve_task_consumer":
            extra: dict[str, Any] = {"results_timeout_s": 30 + settle_s}
        else:
            extra = {"strict": False}
        return module.run(
            paths, tiny.name, threads, work, **common, timeout_s=120, journal=journal, **extra
        )  # fmt: skip

    killer: Any = None
    if name != "rq":
        # Ray Data's model stage runs ahead of its store stage (by half the run, at this size):
        # its half-way is half the images embedded, else the kill finds the model idle.
        tag = "E" if name == "ray_data" else "S"
        killer = HalfwayKiller(
            lambda: journal_count(journal, tag),
            at,
            lambda: [p.pid for p in descendants(VICTIMS[name])],
            300,
            busy=lambda: in_flight(journal, exclude=str(bad.resolve())) > 0,
        )
        killer.start()
    try:
        out = run_once()
    except Exception as exc:
        why = f"{type(exc).__name__}: {str(exc)[:200]}"
        if name == "ray_data":  # no resume: the same command again, into the same collection
            runs = 2
            try:
                out = run_once()
            except Exception as exc2:
                why += f"; the second run too: {type(exc2).__name__}: {str(exc2)[:200]}"
    finally:
        if killer is not None:
            killer.halt.set()
            killer.join()
    if name == "rq":
        killer = _RqKill(out)
    good = [str(p.resolve()) for p in paths if p != bad]
    began, _ = read_journal(journal)
    try:
        stored = [k for k in stored_keys(name, work) if k != str(bad.resolve())]
    except Exception as exc:
        stored, why = [], why + f"; its collection could not be read: {exc}"[:200]
    reported = out is not None and str(bad.resolve()) in (out.get("failed_keys") or [])
    counts = count_kill(good, began, stored)
    notes = _peer_notes(out, why, runs)
    return Drill(
        name,
        corrupt=corrupt_verdict(out is not None, reported),
        images=len(good),
        stored_at_kill=killer.stored_at_kill,
        killed=killed_text(
            killer, _what(name), RESTART[name], "embedded" if name == "ray_data" else "stored"
        ),
        seconds=time.monotonic() - t0,
        notes=notes,
        extra={"failed": None if out is None else out.get("failed")},
        **counts,
    )


def _peer_notes(out: dict[str, Any] | None, why: str, runs: int) -> str:
    """What the drill saw beyond the counts: a run that raised, what never finished, and
    where the system still holds the unfinished work."""
    notes: list[str] = [f"{runs} runs of the pipeline: {why}" if runs > 1 else why]
    if out is not None and out.get("unfinished_keys"):
        notes.append(f"{len(out['unfinished_keys'])} never finished within the drill")
    if out is not None and out.get("broker"):
        b = out["broker"]
        notes.append(
            f"broker at the end: {b['queued']} queued, {b['unacked']} delivered to the killed "
            "replica and unacked (kombu redelivers those after visibility_timeout, 1 h)"
        )
    if out is not None and out.get("started_registry"):
        notes.append(
            f"{out['started_registry']} job(s) left in RQ's StartedJobRegistry (failed as "
            "abandoned after job_timeout; no Retry policy, so never run again)"
        )
    return "; ".join(x for x in notes if x)


class _RqKill:
    """The RQ run's own KillPlan figures, in HalfwayKiller's shape."""

    def __init__(self, out: dict[str, Any] | None) -> None:
        out = out or {}
        self.killed = out.get("killed_pids") or []
        self.stored_at_kill = out.get("stored_at_kill")
        self.error = None if self.killed else "the run ended before half-way"


def _what(name: str) -> str:
    return {
        "rq": "processes (worker + work-horse)",
        "ray_data": "Embedder actor process(es)",
    }.get(name, "replica process(es)")


# ---- all of them -----------------------------------------------------------------------------


def run_drills(
    rows: Iterable[str],
    work: Path,
    *,
    images: int = 48,
    threads: int = 2,
    batch: int = 16,
    settle_s: float = 15.0,
    prefetch: int | None = None,
) -> list[dict[str, Any]]:
    """Every drill for `rows` (names as in ROWS), in ROWS order; one dict per row. `prefetch`:
    the raylens rows' RAYLENS_PREFETCH_BATCHES (None: its default)."""
    rows = [r for r in ROWS if r in set(rows)]
    # A batching row gets at least 4 batches: with 2, "half-way" is the end of the run.
    batched = max(images, 4 * batch)
    work.mkdir(parents=True, exist_ok=True)
    tiny = tiny_model(work / "tiny-model")
    out: list[Drill] = []
    for name in rows:
        if name in ("raylens_http",) and "raylens_bulk" in rows:
            continue  # done with raylens_bulk, on the same system
        print(f"failure drill {name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            if name == "raw":
                out.append(drill_raw(work / name, tiny, images, threads))
            elif name in ("raylens_bulk", "raylens_http"):
                from failure_raylens import drill_raylens

                wanted = [r for r in rows if r.startswith("raylens_")]
                out += drill_raylens(
                    wanted, work / "raylens", tiny, batched, threads, batch, settle_s, prefetch
                )
            else:
                # The batching peers batch as raylens does in the drill (their timed rows use
                # 32): "redone" then compares one batch with one batch.
                same = {"ray_data": {"batch_size": batch}, "serve_batch": {"max_batch_size": batch}}
                n = batched if name in same else images
                out.append(
                    drill_peer(name, work / name, tiny, n, threads, settle_s, **same.get(name, {}))
                )
        except Exception as exc:  # one drill that breaks must not lose the others
            out.append(
                Drill(name, corrupt=CRASHED, notes=f"the drill failed: {type(exc).__name__}: "
                      f"{str(exc)[:300]}", seconds=time.monotonic() - t0)
            )  # fmt: skip
    return [d.to_dict() for d in out]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"from {','.join(ROWS)}")
    ap.add_argument("--images", type=int, default=48, help="good images per drill")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 2))
    ap.add_argument("--batch", type=int, default=16, help="raylens's max batch size")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds without progress = end")
    ap.add_argument(
        "--prefetch",
        type=int,
        default=None,
        help="the raylens rows' RAYLENS_PREFETCH_BATCHES (default: raylens's default, 1)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        ap.error(f"unknown row(s) {unknown}; choose from {','.join(ROWS)}")
    with stdout_to_stderr(), tempfile.TemporaryDirectory(prefix="raylens-drills-") as tmp:
        drills = run_drills(
            rows, Path(tmp), images=args.images, threads=args.threads, batch=args.batch,
            settle_s=args.settle, prefetch=args.prefetch,
        )  # fmt: skip
    if args.json:
        print(json.dumps(drills, indent=2))
    else:
        print("\n".join(table_lines(drills)))
        print(DEFINITIONS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
