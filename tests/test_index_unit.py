"""VectorIndex against a Qdrant server URL, without a server: what the client is given and what
is decided before any request (a closed local port answers every request with a refusal)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raylens.cluster.index import VectorIndex
from raylens.cluster.settings import Settings

from _ports import free_port


def server_index(tmp_path: Path, timeout_s: float) -> VectorIndex:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    return VectorIndex(Settings(data_dir=tmp_path, qdrant_url=url, qdrant_timeout_s=timeout_s))


@pytest.mark.parametrize(("timeout_s", "expected"), [(0.5, 1), (1.0, 1), (2.4, 3), (30.0, 30)])
def test_vector_index_rounds_a_sub_second_qdrant_timeout_up_when_it_makes_the_client(
    tmp_path: Path, timeout_s: float, expected: int
) -> None:
    """qdrant_client takes whole seconds (an int); int(0.5) would be 0: no call could succeed."""
    remote = server_index(tmp_path, timeout_s).backend.client._client
    assert remote._timeout == expected  # gRPC and each call's default
    assert remote._rest_args["timeout"] == expected  # the httpx client of the REST API


@pytest.mark.parametrize("face_id", ["nope", "123", "x" * 64, "0" * 31])
def test_vector_index_get_answers_none_without_asking_the_server_when_the_id_is_no_uuid(
    tmp_path: Path, face_id: str
) -> None:
    """Every raylens point id is a UUID: any other id is not stored, so a lookup answers
    'not found' (404) instead of the server's parse error, which read as an outage (503)."""
    index = server_index(tmp_path, 0.5)
    assert index.get(face_id, "raylens_faces") is None
