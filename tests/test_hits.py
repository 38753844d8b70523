"""Unit: the search rules shared by HTTP and the CLI (query checks, filters, hit shapes)."""

from __future__ import annotations

import pytest

from raylens.cluster.hits import (
    check_filters,
    check_one_query,
    check_top_k,
    face_matches,
    hit_out,
)
from raylens.errors import InvalidRequest


def test_check_one_query_refuses_when_two_kinds_are_given() -> None:
    with pytest.raises(InvalidRequest, match="got text, vector"):
        check_one_query("a dog", None, [0.1])


def test_check_one_query_refuses_when_none_is_given() -> None:
    with pytest.raises(InvalidRequest, match="exactly one"):
        check_one_query("", None, [])


def test_check_top_k_names_its_setting_when_out_of_range() -> None:
    check_top_k(1, 10)
    check_top_k(10, 10)
    for bad in (0, 11, -3):
        with pytest.raises(InvalidRequest, match="RAYLENS_SEARCH_MAX_TOP_K"):
            check_top_k(bad, 10)


def test_check_filters_refuses_when_a_key_or_value_is_not_a_plain_field() -> None:
    assert check_filters(None) is None
    assert check_filters({"source": "a.jpg", "frame.index": 3}) == {
        "source": "a.jpg",
        "frame.index": 3,
    }
    bad_paths = ({"a.": 1}, {"a..b": 1}, {".a": 1}, {"a.1b": 1}, {"a" * 65: 1}, {"a\n": 1})
    for bad in ({"bad key": 1}, {"$where": 1}, {"x": [1, 2]}, {"x": 1.5}, {"x": None}, *bad_paths):
        with pytest.raises(InvalidRequest):
            check_filters(bad)


def test_hit_out_lifts_payload_fields_when_an_index_hit_is_answered() -> None:
    hit = {"id": "p1", "score": 0.75, "payload": {"job_id": "j", "sha256": "s", "name": "n"}}
    out = hit_out(hit)
    assert out["id"] == "p1" and out["score"] == 0.75
    assert (out["job_id"], out["sha256"], out["name"], out["video_id"]) == ("j", "s", "n", None)
    assert out["payload"] == hit["payload"]


def test_face_matches_keeps_only_hits_within_the_distance_when_filtering() -> None:
    hits = [
        {"id": "a", "score": 0.31, "payload": {"face_index": 0}},
        {"id": "b", "score": 0.6, "payload": {"face_index": 1}},
        {"id": "c", "score": 0.61, "payload": {}},
    ]
    got = face_matches(hits, max_distance=0.6)
    assert [h["id"] for h in got] == ["a", "b"]
    assert got[0]["distance"] == 0.31 and got[0]["face_index"] == 0
