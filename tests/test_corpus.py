"""Unit: every case of the malformed corpus gets exactly its written-down outcome (no Ray).

The same checks the system applies, in the same order: check_upload (HTTP intake) decides the
"upload" refusals; what it accepts is decoded like a worker does (decode_image at the model's
224, keep_side for faces; videos through sample_frames with the default limits).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raylens.cluster.intake import check_upload
from raylens.cluster.settings import Settings
from raylens.errors import ErrorCode, InputError
from raylens.media.transforms import DecodedImage, decode_image, sniff_format
from raylens.media.video import VideoLimits, sample_frames, sniff_video

from _corpus import (
    DECODE_SIZE,
    DEFAULT_MAX_IMAGE_PIXELS,
    DRILL_MAX_INPUT_BYTES,
    JOB,
    OK,
    ORIENTATION_GROUP,
    UPLOAD,
    Case,
    malformed_corpus,
    orientation_upright,
    write_corpus,
)

KEEP_SIDE = 1024
VIDEO_MAX_SIDE = 2 * DECODE_SIZE  # what the worker asks sample_frames for at 224
UPLOAD_CODES = {"empty_input", "unsupported_format", "too_large"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    return malformed_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("data"), max_input_bytes=DRILL_MAX_INPUT_BYTES)


def _decode(case: Case) -> DecodedImage:
    return decode_image(
        case.data,
        DECODE_SIZE,
        max_pixels=DEFAULT_MAX_IMAGE_PIXELS,
        max_bytes=DRILL_MAX_INPUT_BYTES,
        keep_side=KEEP_SIDE,
    )


def _outcome(case: Case, settings: Settings) -> tuple[str, str]:
    """(where, code or "ok") through intake, then the worker's decode."""
    try:
        check_upload(case.data, settings, f"upload {case.filename!r}")
    except InputError as exc:
        return UPLOAD, exc.code.value
    try:
        if sniff_format(case.data) is None and sniff_video(case.data) is not None:
            frames, _ = sample_frames(case.data, VideoLimits(), max_side=VIDEO_MAX_SIDE)
            assert frames and all(f.rgb.dtype == np.uint8 for f in frames), case.kind
            assert max(frames[0].rgb.shape[:2]) <= VIDEO_MAX_SIDE, case.kind
        else:
            img = _decode(case)
            assert img.pixels.shape == (DECODE_SIZE, DECODE_SIZE, 3), case.kind
            assert img.pixels.dtype == np.uint8, case.kind
            assert img.full is not None and max(img.full.shape[:2]) <= KEEP_SIDE, case.kind
    except InputError as exc:
        return JOB, exc.code.value
    return JOB, OK


def test_at_least_30_distinct_kinds(corpus: list[Case]) -> None:
    kinds = [c.kind for c in corpus]
    assert len(set(kinds)) == len(kinds) >= 30
    assert len({c.filename for c in corpus}) == len(corpus)
    # The queue dedups by content: two equal payloads would be one job in the drill.
    assert len({hashlib.sha256(c.data).hexdigest() for c in corpus}) == len(corpus)
    codes = {e.value for e in ErrorCode}
    for c in corpus:
        assert c.expect == OK or c.expect in codes, c
        assert c.where == (UPLOAD if c.expect in UPLOAD_CODES else JOB), c
        assert c.group is None or c.expect == OK, c
        assert c.expect == "too_large" or len(c.data) <= DRILL_MAX_INPUT_BYTES, c
    # Every outcome the drill is about is there at least once.
    expected = {c.expect for c in corpus}
    assert expected >= UPLOAD_CODES | {
        OK,
        "truncated_image",
        "corrupt_image",
        "decompression_bomb",
        "corrupt_video",
    }
    assert sum(c.group == ORIENTATION_GROUP for c in corpus) == 8


def test_each_case_gets_exactly_its_outcome(corpus: list[Case], settings: Settings) -> None:
    wrong = []
    for case in corpus:
        got = _outcome(case, settings)
        if got != (case.where, case.expect):
            wrong.append(f"{case.kind}: expected {case.where}/{case.expect}, got {got[0]}/{got[1]}")
    assert not wrong, "\n".join(wrong)


def test_orientations_decode_to_the_same_upright_picture(corpus: list[Case]) -> None:
    group = [c for c in corpus if c.group == ORIENTATION_GROUP]
    upright = orientation_upright()
    reference = _decode(group[0]).pixels.astype(np.float64)
    for case in group:
        decoded = _decode(case)
        assert (decoded.width, decoded.height) == (upright.shape[1], upright.shape[0]), case.kind
        diff = np.abs(decoded.pixels.astype(np.float64) - reference).mean()
        assert diff < 2.0, f"{case.kind}: mean abs diff {diff:.2f} from orientation 1"
        # The tag is what makes it upright: the stored pixels alone are another picture.
        stored = np.asarray(Image.open(io.BytesIO(case.data)).convert("RGB"), dtype=np.float64)
        if case.kind != "exif_orientation_1":
            assert np.abs(stored - upright).mean() > 20, f"{case.kind} is stored upright"
        else:
            assert np.abs(stored - upright).mean() < 2


def test_deterministic_and_cap_follows(tmp_path: Path, corpus: list[Case]) -> None:
    again = malformed_corpus()  # no scratch folder: built anew, not the fixture's cached copy
    assert [c.kind for c in again] == [c.kind for c in corpus]
    changed = [c.kind for c, d in zip(corpus, again, strict=True) if c.data != d.data]
    assert not changed, f"not the same bytes when built again: {changed}"
    small = {c.kind: c for c in malformed_corpus(max_input_bytes=300_000)}
    assert 300_000 < len(small["oversize_png"].data) < 305_000
    big = next(c for c in corpus if c.kind == "oversize_png")
    assert DRILL_MAX_INPUT_BYTES < len(big.data) < DRILL_MAX_INPUT_BYTES + 8192
    assert small["png_1x1"].data == next(c.data for c in corpus if c.kind == "png_1x1")
    with pytest.raises(ValueError):
        malformed_corpus(max_input_bytes=1000)
    paths = write_corpus(corpus, tmp_path / "files")
    assert paths["text_as_jpg"].name == "text_as_jpg.jpg"
    assert all(paths[c.kind].read_bytes() == c.data for c in corpus)
