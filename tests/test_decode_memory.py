"""Unit: decode memory is bounded in bytes, not only in pixels (RAYLENS_MAX_DECODED_BYTES_*).

A 16-bit greyscale PNG of 9,000 x 9,000 is under the pixel limit and only a few hundred kB on
disk, yet decodes to hundreds of MB (and its conversion to 8 bits took gigabytes): the decoded
bytes of each input are estimated from its header and refused over the per-input limit, and the
decodes of one worker hold at most the per-worker budget at once (one input bigger than that
budget runs alone). Video frames held at once count too. Memory is measured as the peak RSS of
a subprocess (Pillow's and FFmpeg's buffers are invisible to tracemalloc).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import GifImagePlugin, Image, ImageFile, PngImagePlugin, WebPImagePlugin

from raylens.cluster.jobs import Failure, Job, SourceKind
from raylens.cluster.model_setup import video_limits
from raylens.cluster.pipeline_read import Decoded, JobReader
from raylens.cluster.settings import Settings, load_settings
from raylens.errors import ErrorCode, SettingsError, TooLarge
from raylens.media.budget import DecodeBudget
from raylens.media.video import VideoLimits, decoder_bytes, sample_frames

ROOT = Path(__file__).resolve().parents[1]
MB = 1_000_000
LINUX_PEAK = Path("/proc/self/clear_refs").exists()


class StubEmbedder:
    """The three preprocess facts JobReader asks a model for."""

    image_size = 224
    resize_mode = "shortest"
    interpolation = "bicubic"


def grey16_png(side: int) -> bytes:
    """A 16-bit greyscale PNG (mode I;16) with a smooth pattern: small on disk, big decoded."""
    y = np.arange(side, dtype=np.uint32)
    arr = ((y[:, None] * 7 + y[None, :] * 3) % 65536).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def path_job(path: Path) -> Job:
    return Job(
        id=path.stem,
        source_kind=SourceKind.PATH,
        source=str(path),
        sha256="0" * 64,
        content_key=path.stem,
        created_at=0.0,
        updated_at=0.0,
        pipeline="embed",
    )


def reader(settings: Settings) -> JobReader:
    return JobReader(
        settings,
        StubEmbedder(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]  # path jobs only: no payload store
        video_limits(settings),
        faces_on=False,
    )


# --- per input: refused from the header, before a pixel is decoded ---------------------------


def test_a_16_bit_png_under_the_pixel_limit_is_refused_over_the_decoded_bytes_limit(
    tmp_path: Path, monkeypatch
) -> None:
    side = 3000  # 9 Mpx, 18 MB as 16-bit samples, ~280 kB as a PNG
    path = tmp_path / "grey16.png"
    path.write_bytes(grey16_png(side))
    settings = Settings(
        data_dir=tmp_path, max_image_pixels=50_000_000, max_decoded_bytes_per_input=20 * MB
    )
    loads: list[str] = []
    real_load = ImageFile.ImageFile.load

    def spy(self):  # type: ignore[no-untyped-def]
        loads.append(self.mode)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    out = reader(settings).load_and_decode(path_job(path))
    assert isinstance(out, Failure), f"decoded a {side}x{side} 16-bit PNG over the byte limit"
    assert out.code is ErrorCode.DECOMPRESSION_BOMB and not out.retryable
    assert "RAYLENS_MAX_DECODED_BYTES_PER_INPUT" in out.message
    assert f"{side}x{side}" in out.message and "I;16" in out.message
    assert loads == [], "pixels were decoded before the refusal"


def test_the_same_png_decodes_when_the_input_limit_allows_it(tmp_path: Path) -> None:
    path = tmp_path / "grey16.png"
    path.write_bytes(grey16_png(1500))
    out = reader(Settings(data_dir=tmp_path)).load_and_decode(path_job(path))
    assert isinstance(out, Decoded), out
    img = out.items[0].image
    assert img.pixels.shape == (224, 224, 3) and (img.width, img.height) == (1500, 1500)


def test_the_decoded_bytes_settings_have_sane_validated_defaults(monkeypatch) -> None:
    s = Settings()
    assert s.max_decoded_bytes_per_input >= 4 * s.max_image_pixels  # any RGB image it admits
    assert s.max_decoded_bytes_per_worker >= s.max_decoded_bytes_per_input
    monkeypatch.setenv("RAYLENS_MAX_DECODED_BYTES_PER_WORKER", "0")
    with pytest.raises(SettingsError, match="RAYLENS_MAX_DECODED_BYTES_PER_WORKER"):
        load_settings()


# --- per worker: a byte budget the decode threads share ------------------------------------


_CONCURRENT = textwrap.dedent(
    """
    import ctypes, json, sys
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from test_decode_memory import path_job, reader
    from raylens.cluster.pipeline_read import Decoded
    from raylens.cluster.settings import Settings

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    settings = Settings(**json.loads(sys.argv[2]))
    paths = [Path(p) for p in sys.argv[3:]]
    r = reader(settings)
    r.load_and_decode(path_job(paths[0]))  # warm up: plugins, numpy, thread start-up
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to now
    with ThreadPoolExecutor(len(paths)) as pool:
        out = list(pool.map(r.load_and_decode, [path_job(p) for p in paths]))
    ok = all(isinstance(o, Decoded) for o in out)
    print(json.dumps({"ok": ok, "out": [repr(o)[:200] for o in out if not isinstance(o, Decoded)],
                      "growth": status("VmHWM") - base}))
    """
)


def _peak_growth(settings: dict[str, Any], paths: list[Path]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", _CONCURRENT, str(ROOT / "tests"), json.dumps(settings)]
        + [str(p) for p in paths],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not LINUX_PEAK, reason="peak RSS reset needs Linux /proc/self/clear_refs")
def test_concurrent_16_bit_decodes_stay_under_the_worker_budget(tmp_path: Path) -> None:
    data = grey16_png(3000)  # 18 MB of 16-bit samples each
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"g{i}.png")
        paths[-1].write_bytes(data)
    budget = 200 * MB  # each decode is estimated at ~91 MB: two run at once, not four
    settings = {
        "data_dir": str(tmp_path),
        "max_decoded_bytes_per_input": 100 * MB,
        "max_decoded_bytes_per_worker": budget,
    }
    got = _peak_growth(settings, paths)
    assert got["ok"], got["out"]
    # 40 MB: the allocator, thread stacks and the model-sized outputs around the budget.
    assert got["growth"] <= budget + 40 * MB, (
        f"4 concurrent decodes grew RSS by {got['growth'] / MB:.0f} MB; budget {budget / MB:.0f} MB"
    )


def test_the_budget_makes_a_decode_wait_until_enough_is_released() -> None:
    budget = DecodeBudget(100)
    order: list[str] = []
    with budget.hold(70):
        t = threading.Thread(target=lambda: _hold(budget, 50, order, "second"))
        t.start()
        time.sleep(0.2)
        assert order == [] and budget.in_use == 70, "the second decode did not wait"
        order.append("first done")
    t.join(5)
    assert order == ["first done", "second"] and budget.in_use == 0


def _hold(budget: DecodeBudget, n: int, order: list[str], name: str, s: float = 0.0) -> None:
    with budget.hold(n):
        time.sleep(s)
        order.append(name)


def test_an_input_bigger_than_the_budget_runs_alone_and_never_deadlocks() -> None:
    budget = DecodeBudget(100)
    order: list[str] = []
    threads = [
        threading.Thread(target=_hold, args=(budget, 40, order, "small-1", 0.2)),
        threading.Thread(target=_hold, args=(budget, 250, order, "big", 0.2)),
        threading.Thread(target=_hold, args=(budget, 40, order, "small-2", 0.0)),
    ]
    peaks = []
    for t in threads:
        t.start()
        time.sleep(0.05)
    while any(t.is_alive() for t in threads):
        peaks.append(budget.in_use)
        time.sleep(0.005)
    assert order == ["small-1", "big", "small-2"], order  # first come, first served
    assert max(peaks) == 250 and 290 not in peaks, "the big input did not run alone"
    assert budget.in_use == 0


def test_the_budget_is_released_when_a_decode_raises() -> None:
    budget = DecodeBudget(10)
    with pytest.raises(RuntimeError), budget.hold(8):
        raise RuntimeError("bad input")
    assert budget.in_use == 0
    with budget.hold(10):
        assert budget.in_use == 10


# --- the estimate is an upper bound of what a decode holds ------------------------------------


_PEAKS = textwrap.dedent(
    """
    import ctypes, io, json, sys
    import numpy as np
    from PIL import Image
    from raylens.media.budget import DecodeBudget
    from raylens.media.transforms import decode_image

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    class Recording(DecodeBudget):
        def hold(self, nbytes):
            self.asked = nbytes
            return super().hold(nbytes)

    side = int(sys.argv[1])
    y, x = np.mgrid[0:side, 0:side]
    rgb = np.stack([(x * 3) % 256, (y * 5) % 256, ((x + y) * 7) % 256], -1).astype(np.uint8)
    grey16 = ((x * 7 + y * 3) % 65536).astype(np.uint16)
    cases = {
        "png I;16": (Image.fromarray(grey16), "PNG", {"compress_level": 1}),
        "tiff F": (Image.fromarray(grey16.astype(np.float32) / 65535.0), "TIFF", {}),
        "png RGBA": (Image.fromarray(rgb).convert("RGBA"), "PNG", {"compress_level": 1}),
        "png P": (Image.fromarray(rgb).quantize(64), "PNG", {"transparency": 0}),
        "png L": (Image.fromarray(rgb).convert("L"), "PNG", {"compress_level": 1}),
        "png RGB": (Image.fromarray(rgb), "PNG", {"compress_level": 1}),
        "webp RGB": (Image.fromarray(rgb), "WEBP", {"quality": 50, "method": 0}),
        "bmp RGB": (Image.fromarray(rgb), "BMP", {}),
    }
    encoded = {}
    for name, (im, fmt, kw) in cases.items():
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        encoded[name] = buf.getvalue()
    del cases, rgb, grey16, x, y
    small = io.BytesIO()
    Image.new("RGB", (64, 64)).save(small, "PNG")
    decode_image(small.getvalue(), 224, max_pixels=10**9, max_bytes=10**9)  # warm up
    out = {}
    for name, data in encoded.items():
        budget = Recording(10**12)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        base = status("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")
        decode_image(data, 224, max_pixels=10**9, max_bytes=10**9, budget=budget)
        out[name] = {"growth": status("VmHWM") - base, "estimate": budget.asked}
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(not LINUX_PEAK, reason="peak RSS reset needs Linux /proc/self/clear_refs")
def test_the_estimate_bounds_the_peak_memory_of_a_decode_in_every_mode() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PEAKS, "2500"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, p in peaks.items():
        # The estimate may be generous, never short (4 MB: the allocator's rounding).
        assert p["growth"] <= p["estimate"] + 4 * MB, (name, p)
        assert p["estimate"] <= 4 * p["growth"] + 8 * MB, ("too generous", name, p)


# --- animated images: only the first frame is ever decoded -------------------------------


def _animated(fmt: str, frames: int, side: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 255, (side, side), dtype=np.uint8), "L") for _ in "abc"]
    seq = [ims[i % 3].convert("P" if fmt == "GIF" else "RGB") for i in range(frames)]
    extra = {"disposal": 1} if fmt == "GIF" else {}
    buf = io.BytesIO()
    seq[0].save(buf, fmt, save_all=True, append_images=seq[1:], duration=40, loop=0, **extra)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_a_many_frame_image_decodes_only_its_first_frame(fmt, tmp_path, monkeypatch) -> None:
    path = tmp_path / f"anim.{fmt.lower()}"
    path.write_bytes(_animated(fmt, 150))
    with Image.open(path) as im:
        assert getattr(im, "n_frames", 1) == 150
    frames: list[int] = []  # every frame a plugin moved to (or, for WebP, decoded)
    if fmt == "WEBP":
        real_next = WebPImagePlugin.WebPImageFile._get_next

        def spy_next(self):  # type: ignore[no-untyped-def]
            frames.append(len(frames))
            return real_next(self)

        monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "_get_next", spy_next)
    else:
        cls = GifImagePlugin.GifImageFile if fmt == "GIF" else PngImagePlugin.PngImageFile
        real_seek = cls._seek

        def spy_seek(self, frame, *args, **kw):  # type: ignore[no-untyped-def]
            frames.append(frame)
            return real_seek(self, frame, *args, **kw)

        monkeypatch.setattr(cls, "_seek", spy_seek)
    out = reader(Settings(data_dir=tmp_path)).load_and_decode(path_job(path))
    assert isinstance(out, Decoded), out
    assert frames and set(frames) == {0}, f"frames {sorted(set(frames))} of 150 were decoded"


# --- video: the frames held at once count ----------------------------------------------------


def _video(seconds: int = 4, fps: int = 10, w: int = 320, h: int = 240) -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(seconds * fps):
            rgb = np.full((h, w, 3), (i * 13) % 256, np.uint8)
            rgb[: h // 2] = rng.integers(0, 255, 3, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def test_a_video_whose_sampled_frames_are_over_the_input_limit_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(_video(seconds=4))  # 4 samples at 1/s, 320x240x3 = 230 kB each as kept
    ok = reader(Settings(data_dir=tmp_path)).load_and_decode(path_job(path))
    assert isinstance(ok, Decoded) and len(ok.items) == 4, ok
    tight = Settings(data_dir=tmp_path, max_decoded_bytes_per_input=MB // 2)
    out = reader(tight).load_and_decode(path_job(path))
    assert isinstance(out, Failure), "a video over the decoded bytes limit was sampled"
    assert out.code is ErrorCode.TOO_LARGE and not out.retryable
    assert "RAYLENS_MAX_DECODED_BYTES_PER_INPUT" in out.message


def test_sample_frames_counts_the_frames_it_holds_against_its_limit_and_budget() -> None:
    data = _video(seconds=4)  # 320x240, 4.0 s
    frame, decoder = 320 * 240 * 3, decoder_bytes(320, 240)
    # From the header: 4 s at one sample a second certainly holds 4 frames.
    with pytest.raises(TooLarge, match="at least .*RAYLENS_MAX_DECODED_BYTES_PER_INPUT"):
        sample_frames(data, VideoLimits(max_decoded_bytes=decoder + 3 * frame))
    # While sampling: at 0, 1.5 and 3 s, where the header promised only 2 samples.
    with pytest.raises(TooLarge, match="the 3 frames sampled by 3.0 s"):
        sample_frames(data, VideoLimits(every_s=1.5, max_decoded_bytes=decoder + 5 * frame // 2))

    class Recording(DecodeBudget):
        asked = 0

        def hold(self, nbytes: int):  # type: ignore[no-untyped-def]
            self.asked = nbytes
            return super().hold(nbytes)

    budget = Recording(10**9)
    limits = VideoLimits(max_decoded_bytes=decoder + 4 * frame)
    frames, _ = sample_frames(data, limits, budget=budget)
    held = sum(f.rgb.nbytes for f in frames)
    assert len(frames) == 4 and decoder + held <= budget.asked <= decoder + 5 * frame
    assert budget.in_use == 0


# --- device JPEG decode: over the limit it takes the CPU path (reduced-scale decode) ----------


def test_a_device_decode_over_the_input_limit_goes_to_the_cpu_path_at_reduced_scale() -> None:
    import torch

    from raylens.media.device_decode import decode_jpeg_on_device, device_cost

    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (200, 30, 90)).save(buf, "JPEG", quality=80)
    data = buf.getvalue()
    limits = {"max_pixels": 50_000_000, "max_bytes": 50_000_000}
    on_device = decode_jpeg_on_device(data, 224, "cpu", **limits, budget=DecodeBudget(10**9))
    assert isinstance(on_device.pixels, torch.Tensor)
    cap = device_cost(4000, 3000, len(data)) - 1  # the full-size decode on the device is over
    cpu = decode_jpeg_on_device(data, 224, "cpu", **limits, max_decoded_bytes=cap)
    assert isinstance(cpu.pixels, np.ndarray) and (cpu.width, cpu.height) == (4000, 3000)
