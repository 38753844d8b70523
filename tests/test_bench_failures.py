"""The failure columns of `make bench` (bench/failure_drills.py): counting and printing.

Pure unit tests (no Ray, no model): redone / lost / dup from recorded data, the journal the
peers' processes append to, the corrupt verdict, the half-way killer on a real process, and
the table lines. The drills themselves run in the gated smoke tests
(tests/test_bench_failures_drills.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import failure_drills as fd  # noqa: E402
from _peer_common import Journal  # noqa: E402


def test_count_kill_counts_redone_lost_and_dup_over_the_good_images_only() -> None:
    expected = ["a", "b", "c", "d"]
    began = Counter({"a": 1, "b": 2, "c": 3, "d": 1, "bad": 2})
    stored = ["a", "b", "b", "c", "bad"]  # b twice: under two point ids; d never stored
    assert fd.count_kill(expected, began, stored) == {"redone": 2, "lost": 1, "dup": 1}


def test_count_kill_is_all_zero_when_every_image_ran_once_and_was_stored_once() -> None:
    keys = [f"k{i}" for i in range(5)]
    assert fd.count_kill(keys, Counter(keys), keys) == {"redone": 0, "lost": 0, "dup": 0}


def test_count_kill_counts_an_image_that_never_began_as_lost_not_redone() -> None:
    assert fd.count_kill(["x"], Counter(), []) == {"redone": 0, "lost": 1, "dup": 0}


def test_journal_lines_from_several_writers_are_read_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    a, b = Journal(path), Journal(path)
    a.began("/img/1.jpg", "/img/2.jpg")
    b.began("/img/1.jpg")  # a second try, from another process
    a.stored("/img/1.jpg")
    b.stored("/img/2.jpg")
    began, stored = fd.read_journal(path)
    assert began == Counter({"/img/1.jpg": 2, "/img/2.jpg": 1})
    assert stored == Counter({"/img/1.jpg": 1, "/img/2.jpg": 1})


def test_in_flight_counts_images_began_but_neither_embedded_nor_stored(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    j = Journal(path)
    j.began("a", "b", "c", "bad")
    j.embedded("a")  # in another process's hands now (a writer)
    j.stored("b")
    assert fd.in_flight(path, exclude="bad") == 1  # only c is with the model
    assert fd.in_flight(tmp_path / "none.log") == 0
    assert [fd.journal_count(path, t) for t in "BES"] == [4, 1, 1]


def test_journal_without_a_path_writes_nothing_and_a_missing_file_reads_empty(
    tmp_path: Path,
) -> None:
    Journal(None).began("x")
    assert fd.read_journal(tmp_path / "none.log") == (Counter(), Counter())


def test_journal_pickles_without_its_descriptor(tmp_path: Path) -> None:
    import pickle

    j = Journal(tmp_path / "j.log")
    j.began("one")
    copy = pickle.loads(pickle.dumps(j))  # as it travels to a Ray worker
    copy.stored("one")
    assert fd.read_journal(tmp_path / "j.log") == (Counter({"one": 1}), Counter({"one": 1}))


@pytest.mark.parametrize(
    ("finished", "reported", "verdict"),
    [
        (True, True, "finished+reported"),
        (True, False, "finished, not reported"),
        (False, True, "crashed"),
        (False, False, "crashed"),
    ],
)
def test_corrupt_verdict(finished: bool, reported: bool, verdict: str) -> None:
    assert fd.corrupt_verdict(finished, reported) == verdict


def test_halfway_killer_kills_the_victims_once_progress_reaches_half() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    progress = iter(range(100))
    killer = fd.HalfwayKiller(lambda: next(progress), 5, lambda: [proc.pid], 30, period_s=0.001)
    killer.start()
    killer.join(10)
    assert proc.wait(10) == -9
    assert killer.killed == [proc.pid]
    assert killer.stored_at_kill is not None and killer.stored_at_kill >= 5
    assert "1 things at" in fd.killed_text(killer, "things", "restarted")


def test_halfway_killer_says_so_when_half_way_is_never_reached() -> None:
    killer = fd.HalfwayKiller(lambda: 0, 5, lambda: [], 0.05, period_s=0.01)
    killer.start()
    killer.join(5)
    assert killer.killed == [] and killer.stored_at_kill is None
    assert "never reached" in fd.killed_text(killer, "x", "y")


def test_descendants_finds_a_child_by_its_command_line() -> None:
    marker = f"drill-marker-{time.time_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        deadline = time.monotonic() + 10
        while not fd.descendants(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p.pid for p in fd.descendants(marker)] == [proc.pid]
    finally:
        proc.kill()
        proc.wait()


def drill(name: str, **kw: object) -> dict:
    return fd.Drill(name, **kw).to_dict()  # type: ignore[arg-type]


def test_failure_table_has_one_line_per_row_and_dashes_where_a_column_does_not_apply() -> None:
    lines = fd.table_lines(
        [
            drill("raw", corrupt="crashed", killed="n/a", images=8),
            drill(
                "raylens_bulk",
                images=64,
                corrupt="finished+reported",
                redone=16,
                lost=0,
                dup=0,
                killed="1 worker",
                notes="attempts {1: 32, 2: 16}",
            ),
        ]
    )
    head = ["failure", "drill", "images", "corrupt", "redone", "lost", "dup", "killed"]
    assert lines[0].split() == head
    raw = lines[1].split()
    assert raw[:6] == ["raw", "8", "crashed", "-", "-", "-"]
    bulk = lines[2].split()
    assert bulk[:6] == ["raylens_bulk", "64", "finished+reported", "16", "0", "0"]
    assert lines[3].strip() == "attempts {1: 32, 2: 16}"


def test_bench_table_prints_the_failure_columns_and_the_json_rows_carry_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    import bench_http

    rows = [
        {"name": n, "images_per_s": 2.0, "p50_ms": 1.0, "p99_ms": 2.0, "peak_rss_mb": 3.0,
         "peak_pss_mb": None, "ratio_to_raw": 1.0}
        for n in ("raw", "raylens_http", "rq")
    ]  # fmt: skip
    drills = [
        drill("raw", corrupt="crashed"),
        drill("raylens_http", corrupt="finished+reported", redone=8, lost=0, dup=0),
    ]
    bench_http.add_failures(rows, drills)
    assert {k: rows[1][k] for k in bench_http.FAILURE_KEYS} == {
        "corrupt": "finished+reported",
        "redone": 8,
        "lost": 0,
        "dup": 0,
    }
    assert {k: rows[2][k] for k in bench_http.FAILURE_KEYS} == dict.fromkeys(
        bench_http.FAILURE_KEYS
    )  # no drill ran for rq
    lines = bench_http.table_rows(rows, failures=True)
    assert lines[0].split()[-4:] == ["corrupt", "redone", "lost", "dup"]
    assert lines[2].split()[-4:] == ["finished+reported", "8", "0", "0"]
    assert lines[3].split()[-4:] == ["-", "-", "-", "-"]
    assert "corrupt" not in bench_http.table_rows(rows, failures=False)[0]


def test_bench_help_describes_the_drill_flags_and_every_column() -> None:
    res = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parents[1] / "bench" / "bench_http.py"),
         "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    for text in ("--failure-drills", "--no-failure-drills", "--drill-images", "--drill-settle"):
        assert text in res.stdout
    for column in ("corrupt", "redone", "lost", "dup"):
        assert f"  {column} " in res.stdout
