"""Events as stored: compact JSON, the same text json.dumps writes, read back as written."""

from __future__ import annotations

import json

from raylens.cluster import events as ev


def test_an_event_is_stored_as_compact_json_and_read_back_as_written() -> None:
    event = {
        "job_id": "a" * 32,
        "state": "done",
        "lane": "normal",
        "attempts": 2,
        "error_code": None,
        "at": 1796417938.1539004,
        "point_ids": ["0b1c6f0e-8f1a-5c61-9d52-3f2a4e5b6c7d"],
        "run_id": "1b5c21f96b574931",
    }
    text = ev.encode(event)
    assert text == json.dumps(event, separators=(",", ":"))  # what earlier releases stored
    assert ev.decode("7", text) == {"id": "7", **event}
    assert ev.decode("8", text.encode()) == {"id": "8", **event}  # Redis hands back bytes
    assert ev.decode("9", json.dumps(event, ensure_ascii=True))["at"] == event["at"]
