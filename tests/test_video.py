"""Unit: sampling frames from videos encoded here from real photos (no Ray, no model)."""

from __future__ import annotations

import io
import math
import random
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from raylens.errors import CorruptVideo, EmptyInput, SourceMissing, TooLarge, UnsupportedFormat
from raylens.media.formats import VIDEO_SUFFIXES
from raylens.media.video import (
    VideoLimits,
    sample_frames,
    sniff_video,
)

W, H, FPS = 320, 240, 10  # each photo is shown for exactly 1 s: 4 s, 40 frames
TOL = 1.0 / FPS + 1e-6


def _photos(width: int = W, height: int = H) -> list[np.ndarray]:
    loaders = (skdata.astronaut, skdata.coffee, skdata.chelsea, skdata.rocket)
    return [
        np.asarray(Image.fromarray(f()).convert("RGB").resize((width, height), Image.BICUBIC))
        for f in loaders
    ]


PHOTOS = _photos()


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


H264 = next((c for c in ("libx264", "h264") if _has_encoder(c)), "mpeg4")
VPX = next((c for c in ("libvpx", "libvpx-vp9") if _has_encoder(c)), None)


class _Unseekable:
    """A write-only sink: the muxer cannot go back to write sizes or the duration."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def write(self, b: bytes) -> int:
        return self.buf.write(b)

    def seekable(self) -> bool:
        return False


def _encode(
    fmt: str,
    codec: str,
    frames: list[np.ndarray],
    fps: int = FPS,
    *,
    rotation: int | None = None,
    seekable: bool = True,
    options: dict[str, str] | None = None,
) -> bytes:
    sink: io.BytesIO | _Unseekable = io.BytesIO() if seekable else _Unseekable()
    with av.open(sink, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if options:
            stream.options = options
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return (sink.buf if isinstance(sink, _Unseekable) else sink).getvalue()


def _slideshow(photos: list[np.ndarray], fps: int = FPS) -> list[np.ndarray]:
    return [p for p in photos for _ in range(fps)]


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return _encode("mp4", H264, _slideshow(PHOTOS))


@pytest.fixture(scope="module")
def webm() -> bytes:
    if VPX is None:
        pytest.skip("this PyAV build has no VP8/VP9 encoder (libvpx / libvpx-vp9)")
    return _encode("webm", VPX, _slideshow(PHOTOS))


@pytest.fixture(scope="module", params=["mp4", "webm"])
def video(request) -> bytes:
    return request.getfixturevalue(request.param)


def _best_match(rgb: np.ndarray, sources: list[np.ndarray]) -> int:
    diffs = [np.abs(rgb.astype(np.int16) - s.astype(np.int16)).mean() for s in sources]
    return int(np.argmin(diffs))


def _times(frames) -> list[float]:
    return [f.timestamp_s for f in frames]


# --- sniffing --------------------------------------------------------------------------


def test_sniff_containers(mp4, webm) -> None:
    assert sniff_video(mp4) == "mp4"
    assert sniff_video(webm) == "webm"
    mov = _encode("mov", H264, PHOTOS[:1] * 2)
    assert mov[4:12] == b"ftypqt  "
    assert sniff_video(mov) == "mov"
    assert sniff_video(_encode("matroska", H264, PHOTOS[:1] * 2)) == "mkv"
    assert sniff_video(b"\x00\x00\x00\x18ftypM4V \x00\x00\x00\x00") == "mp4"
    assert sniff_video(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00") is None  # a HEIC photo
    assert sniff_video(b"\x89PNG\r\n\x1a\n") is None
    assert sniff_video(b"") is None
    assert {".mp4", ".m4v", ".mov", ".webm", ".mkv"} == VIDEO_SUFFIXES


# --- interval sampling ---------------------------------------------------------------------


def test_every_second_gives_the_four_photos(video) -> None:
    frames, info = sample_frames(video, VideoLimits(every_s=1.0))
    assert len(frames) == 4
    for got, want in zip(_times(frames), [0.0, 1.0, 2.0, 3.0]):
        assert abs(got - want) <= TOL
    assert [_best_match(f.rgb, PHOTOS) for f in frames] == [0, 1, 2, 3]
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert {f.reason for f in frames} == {"interval"}
    assert all(f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8 for f in frames)
    assert (info.width, info.height, info.fps) == (W, H, 10.0)
    assert info.frames_decoded == 40 and info.frames_sampled == 4
    assert info.duration_s == pytest.approx(4.0, abs=TOL)
    assert info.seconds > 0


def test_half_second_gives_eight(video) -> None:
    frames, _ = sample_frames(video, VideoLimits(every_s=0.5))
    assert len(frames) == 8
    assert _times(frames) == pytest.approx([k * 0.5 for k in range(8)], abs=TOL)
    assert [_best_match(f.rgb, PHOTOS) for f in frames] == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("every_s", [0.3, 0.25, 0.7])
def test_interval_does_not_drift(mp4, every_s) -> None:
    """The first frame at or after k * every_s, for every k, on the 0.1 s frame grid."""
    frames, _ = sample_frames(mp4, VideoLimits(every_s=every_s))
    want = sorted({math.ceil(round(k * every_s * FPS, 6)) / FPS for k in range(100)})
    want = [t for t in want if t < 4.0]
    assert _times(frames) == pytest.approx(want, abs=1e-6)


def test_max_side_scales_the_longer_side(mp4) -> None:
    frames, info = sample_frames(mp4, VideoLimits(), max_side=64)
    assert [f.rgb.shape for f in frames] == [(48, 64, 3)] * 4
    assert (info.width, info.height) == (W, H)  # the stream's own size
    small = _photos(64, 48)
    assert [_best_match(f.rgb, small) for f in frames] == [0, 1, 2, 3]
    frames, _ = sample_frames(mp4, VideoLimits(), max_side=1000)  # never scaled up
    assert frames[0].rgb.shape == (H, W, 3)


def test_path_source(mp4, tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(mp4)
    frames, info = sample_frames(path, VideoLimits())
    assert len(frames) == 4 and info.container == "mp4"
    frames, _ = sample_frames(str(path), VideoLimits())
    assert len(frames) == 4
    with pytest.raises(SourceMissing):
        sample_frames(tmp_path / "missing.mp4", VideoLimits())


def test_display_rotation_is_applied() -> None:
    """A phone video: pixels stored sideways, the display matrix says turn them upright."""
    stored = [np.ascontiguousarray(np.rot90(p)) for p in PHOTOS[:2]]  # turned left
    data = _encode("mp4", H264, _slideshow(stored), rotation=-90)  # display: turn right
    frames, _ = sample_frames(data, VideoLimits(), max_side=160)
    assert [f.rgb.shape for f in frames] == [(120, 160, 3)] * 2
    assert [_best_match(f.rgb, _photos(160, 120)[:2]) for f in frames] == [0, 1]


# --- scene detection -------------------------------------------------------------------


def test_scene_changes_found_at_the_cuts(video) -> None:
    frames, _ = sample_frames(video, VideoLimits(every_s=100, scene_threshold=0.1))
    assert [f.reason for f in frames] == ["interval", "scene", "scene", "scene"]
    assert _times(frames) == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=TOL)
    assert [_best_match(f.rgb, PHOTOS) for f in frames] == [0, 1, 2, 3]


def test_scene_and_interval_together(mp4) -> None:
    frames, _ = sample_frames(mp4, VideoLimits(every_s=2.0, scene_threshold=0.1))
    assert [(round(f.timestamp_s, 1), f.reason) for f in frames] == [
        (0.0, "interval"),
        (1.0, "scene"),
        (2.0, "interval"),
        (3.0, "scene"),
    ]


def test_scene_min_gap_delays_a_close_cut() -> None:
    """A cut 0.1 s after a sample is taken at the first frame min_gap_s after it."""
    seq = [PHOTOS[0]] * 10 + [PHOTOS[1]] + [PHOTOS[2]] * 9  # 1.0: one frame of photo 1
    data = _encode("mp4", H264, seq)
    frames, _ = sample_frames(data, VideoLimits(every_s=100, scene_threshold=0.1, min_gap_s=0))
    assert _times(frames) == pytest.approx([0.0, 1.0, 1.1], abs=1e-6)
    frames, _ = sample_frames(data, VideoLimits(every_s=100, scene_threshold=0.1, min_gap_s=0.25))
    assert _times(frames) == pytest.approx([0.0, 1.0, 1.3], abs=1e-6)
    assert [_best_match(f.rgb, PHOTOS[:3]) for f in frames] == [0, 1, 2]


def test_scene_threshold_one_never_fires(mp4) -> None:
    frames, _ = sample_frames(mp4, VideoLimits(every_s=100, scene_threshold=1.0))
    assert len(frames) == 1


# --- limits ----------------------------------------------------------------------------


def test_too_many_frames(video) -> None:
    with pytest.raises(TooLarge, match="RAYLENS_VIDEO_MAX_FRAMES"):
        sample_frames(video, VideoLimits(max_frames=2))
    frames, _ = sample_frames(video, VideoLimits(max_frames=4))  # exactly at the limit
    assert len(frames) == 4


def test_too_long(video) -> None:
    with pytest.raises(TooLarge, match="RAYLENS_VIDEO_MAX_DURATION_S"):
        sample_frames(video, VideoLimits(max_duration_s=2))


def test_too_long_without_a_header_duration() -> None:
    """A live-recorded WebM has no duration: refused when a frame's timestamp passes it."""
    if VPX is None:
        pytest.skip("this PyAV build has no VP8/VP9 encoder (libvpx / libvpx-vp9)")
    live = _encode("webm", VPX, _slideshow(PHOTOS), seekable=False)
    with av.open(io.BytesIO(live)) as c:
        assert c.duration is None and c.streams.video[0].duration is None
    frames, info = sample_frames(live, VideoLimits())
    assert len(frames) == 4 and info.duration_s == pytest.approx(3.9)
    with pytest.raises(TooLarge, match=r"RAYLENS_VIDEO_MAX_DURATION_S.*"):
        sample_frames(live, VideoLimits(max_duration_s=2))


def test_too_many_pixels(video) -> None:
    with pytest.raises(TooLarge, match="RAYLENS_VIDEO_MAX_PIXELS"):
        sample_frames(video, VideoLimits(max_pixels=W * H - 1))
    frames, _ = sample_frames(video, VideoLimits(max_pixels=W * H))
    assert len(frames) == 4


def test_limits_are_validated() -> None:
    for bad in (
        {"every_s": 0},
        {"every_s": float("nan")},
        {"scene_threshold": 1.5},
        {"max_frames": 0},
        {"min_gap_s": -1},
    ):
        with pytest.raises(ValueError):
            VideoLimits(**bad)


# --- bad input -------------------------------------------------------------------------


def test_empty_and_not_a_video(tmp_path: Path) -> None:
    with pytest.raises(EmptyInput):
        sample_frames(b"", VideoLimits())
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(EmptyInput):
        sample_frames(empty, VideoLimits())
    png = io.BytesIO()
    Image.fromarray(PHOTOS[0]).save(png, format="PNG")
    with pytest.raises(UnsupportedFormat, match="not a supported video"):
        sample_frames(png.getvalue(), VideoLimits())
    with pytest.raises(UnsupportedFormat):
        sample_frames(b"\x00\x00\x00\x18ftypheic" + bytes(100), VideoLimits())


def test_truncated_is_corrupt(video) -> None:
    """FFmpeg quietly decodes what is left of a cut file; the box/Segment sizes catch it."""
    for cut in (0.5, 0.95):
        with pytest.raises(CorruptVideo, match="truncated"):
            sample_frames(video[: int(len(video) * cut)], VideoLimits())


def test_truncated_faststart_mp4_is_corrupt(tmp_path: Path) -> None:
    """moov first (what web uploads usually are): without the size check 2 photos of 4."""
    path = tmp_path / "fast.mp4"
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as out:
        stream = out.add_stream(H264, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for rgb in _slideshow(PHOTOS):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    assert len(sample_frames(data, VideoLimits())[0]) == 4
    with pytest.raises(CorruptVideo, match="truncated"):
        sample_frames(data[: len(data) // 2], VideoLimits())


def test_garbage_after_an_ftyp_header_is_corrupt() -> None:
    rng = random.Random(7)
    for _ in range(5):
        junk = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + rng.randbytes(4096)
        with pytest.raises(CorruptVideo):
            sample_frames(junk, VideoLimits())
    # Box sizes that add up, contents that do not: FFmpeg finds no usable stream in it.
    boxes = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
    boxes += (8 + 4096).to_bytes(4, "big") + b"moov" + rng.randbytes(4096)
    with pytest.raises(CorruptVideo, match="no video stream|cannot decode mp4"):
        sample_frames(boxes, VideoLimits())


def test_damaged_mp4_middle_is_corrupt(mp4) -> None:
    """Bytes overwritten mid-stream: h264 flags the damaged frames, no partial result."""
    rng = random.Random(0)
    damaged = bytearray(mp4)
    mid = len(mp4) // 2
    damaged[mid : mid + 2000] = rng.randbytes(2000)
    with pytest.raises(CorruptVideo):
        sample_frames(bytes(damaged), VideoLimits())


def test_no_video_stream() -> None:
    sink = io.BytesIO()
    with av.open(sink, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 8000
        for _ in range(4):
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    with pytest.raises(CorruptVideo, match="no video stream"):
        sample_frames(sink.getvalue(), VideoLimits())


def test_video_stream_without_frames() -> None:
    sink = io.BytesIO()
    with av.open(sink, "w", format="matroska") as out:
        stream = out.add_stream(H264, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        out.start_encoding()  # write the header, then no frame at all
    with pytest.raises(CorruptVideo, match="no frame to sample|End of file"):
        sample_frames(sink.getvalue(), VideoLimits())


def test_zero_padding_after_the_last_box_is_fine(mp4) -> None:
    assert len(sample_frames(mp4 + bytes(5), VideoLimits())[0]) == 4
    with pytest.raises(CorruptVideo, match="truncated"):
        sample_frames(mp4 + b"\x00\x00\x01", VideoLimits())


# --- speed -----------------------------------------------------------------------------


def test_timing_1080p_10s() -> None:
    """A 1920x1080, 10 s, 25 fps H.264 clip (a slow pan over a photo); prints frames/s."""
    base = np.asarray(Image.fromarray(skdata.astronaut()).resize((2400, 1350), Image.BICUBIC))
    frames = [np.ascontiguousarray(base[i : i + 1080, 2 * i : 2 * i + 1920]) for i in range(250)]
    options = {"preset": "ultrafast"} if H264 == "libx264" else None
    t0 = time.perf_counter()
    data = _encode("mp4", H264, frames, fps=25, options=options)
    encode_s = time.perf_counter() - t0
    for max_side in (None, 224):
        sampled, info = sample_frames(data, VideoLimits(every_s=1.0), max_side=max_side)
        assert len(sampled) == 10 and info.frames_decoded == 250
        print(
            f"\n1080p {H264} {len(data) / 1e6:.1f} MB (encoded in {encode_s:.1f} s), "
            f"max_side={max_side}: {info.seconds:.2f} s, "
            f"{info.frames_decoded / info.seconds:.0f} decoded frames/s, "
            f"{10 / info.seconds:.1f} s of video per s"
        )
    sampled, info = sample_frames(data, VideoLimits(every_s=1.0, scene_threshold=0.3))
    print(
        f"1080p with scene detection: {info.seconds:.2f} s, "
        f"{info.frames_decoded / info.seconds:.0f} decoded frames/s"
    )
