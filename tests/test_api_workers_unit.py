"""ClusterAPI's calls to workers (search embeddings, reports), with stand-in actor handles: a
worker replaced since the cached list was read is looked up again, not reported as a failure."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import ray

from raylens.actors import api as api_mod
from raylens.actors.api import ClusterAPI
from raylens.cluster.settings import Settings
from raylens.errors import StoreUnavailable


class _Method:
    def __init__(self, result: Any) -> None:
        self.result = result

    def remote(self, *args: Any) -> Any:
        async def call() -> Any:
            if isinstance(self.result, BaseException):
                raise self.result
            return self.result

        return call()


class _Worker:
    """An actor handle's shape: an id, and `embed_query.remote(...)`."""

    def __init__(self, actor_id: str, result: Any) -> None:
        self._actor_id = actor_id
        self.embed_query = _Method(result)


def _api(tmp_path: Any, lists: list[list[_Worker]], monkeypatch: pytest.MonkeyPatch) -> ClusterAPI:
    reads = iter(lists)
    monkeypatch.setattr(api_mod.launch, "worker_handles", lambda settings: next(reads))
    return ClusterAPI(Settings(data_dir=tmp_path, search_timeout_s=5))


def test_a_query_reaches_the_new_worker_when_the_cached_one_was_replaced(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    died = ray.exceptions.ActorDiedError()
    old, new = _Worker("old", died), _Worker("new", "vector")
    api = _api(tmp_path, [[old], [new]], monkeypatch)
    try:
        assert asyncio.run(api._on_worker("embed_query", "a cat", None)) == "vector"
    finally:
        api.close()


def test_a_query_fails_clearly_when_no_worker_answers_after_a_fresh_look(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    died = ray.exceptions.ActorDiedError()
    old = _Worker("old", died)
    # The fresh list still names the dead worker, which is not asked twice.
    api = _api(tmp_path, [[old], [old]], monkeypatch)
    try:
        with pytest.raises(StoreUnavailable, match=r"1 tried; the last one: ActorDiedError"):
            asyncio.run(api._on_worker("embed_query", "a cat", None))
    finally:
        api.close()


def test_a_query_with_no_workers_says_to_start_them(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = _api(tmp_path, [[], []], monkeypatch)
    try:
        with pytest.raises(StoreUnavailable, match="no raylens workers are running"):
            asyncio.run(api._on_worker("embed_query", "a cat", None))
    finally:
        api.close()
