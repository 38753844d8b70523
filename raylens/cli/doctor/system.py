"""The "system" checks: platform, Python, torch and its GPUs, the device a worker would pick."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raylens.cli.doctor.common import fix_from_message, gib, read_file
from raylens.cli.doctor.report import ERROR, OK, SKIP, WARN, Check
from raylens.cluster.settings import Settings


def _os_release() -> str | None:
    text = read_file(Path("/etc/os-release"))
    if text:
        for line in text.splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    mac = platform.mac_ver()[0]
    return f"macOS {mac}" if mac else None


def _memory() -> tuple[int | None, int | None]:
    total = avail = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    meminfo = read_file(Path("/proc/meminfo")) or ""
    m = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.M)
    if m:
        avail = int(m.group(1)) * 1024
    return total, avail


def _cpu_limit() -> float | None:
    """A cgroup v2 CPU quota (containers), in CPUs."""
    text = read_file(Path("/sys/fs/cgroup/cpu.max"))
    if not text:
        return None
    quota, _, period = text.strip().partition(" ")
    if quota == "max" or not period:
        return None
    try:
        return int(quota) / int(period)
    except ValueError:
        return None


def platform_info() -> dict[str, Any]:
    total, avail = _memory()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "os": _os_release(),
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_limit": _cpu_limit(),
        "memory_total_bytes": total,
        "memory_available_bytes": avail,
    }


def check_platform(info: Mapping[str, Any]) -> list[Check]:
    cpus = f"{info['cpus']} CPUs"
    if info.get("cpus_usable") and info["cpus_usable"] != info["cpus"]:
        cpus += f" ({info['cpus_usable']} usable)"
    if info.get("cpu_limit"):
        cpus += f", cgroup limit {info['cpu_limit']:g}"
    mem = f"{gib(info['memory_total_bytes'])} RAM ({gib(info['memory_available_bytes'])} free)"
    os_name = f" ({info['os']})" if info.get("os") else ""
    return [
        Check("platform", OK, f"{info['platform']}{os_name}; {cpus}; {mem}", group="system"),
        Check(
            "python",
            OK,
            f"{info['python']} {info['python_implementation']} ({info['python_executable']})",
            group="system",
        ),
    ]


def nvidia_hardware() -> bool:
    """Whether an NVIDIA driver is visible on this machine, whatever torch thinks."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def torch_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": bool(torch.cuda.is_available()),
        "threads": torch.get_num_threads(),
        "gpus": [],
    }
    mps = getattr(torch.backends, "mps", None)
    info["mps_built"] = bool(mps is not None and mps.is_built())
    info["mps_available"] = bool(mps is not None and mps.is_available())
    if info["cuda_available"]:
        info["cudnn"] = torch.backends.cudnn.version()
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpu: dict[str, Any] = {
                "index": i,
                "name": props.name,
                "memory_total_bytes": int(props.total_memory),
                "capability": f"{props.major}.{props.minor}",
            }
            with contextlib.suppress(Exception):
                gpu["memory_free_bytes"] = int(torch.cuda.mem_get_info(i)[0])
            info["gpus"].append(gpu)
    return info


def check_torch(info: Mapping[str, Any], nvidia_present: bool) -> list[Check]:
    build = f"CUDA {info['cuda_build']} build" if info["cuda_build"] else "CPU-only build"
    cuda = "CUDA available" if info["cuda_available"] else "CUDA not available"
    if info["cuda_available"] and info.get("cudnn"):
        cuda += f" (cuDNN {info['cudnn']})"
    mps = "MPS available" if info["mps_available"] else "MPS not available"
    detail = f"torch {info['version']} ({build}); {cuda}; {mps}; {info['threads']} threads"
    checks = []
    if nvidia_present and not info["cuda_available"]:
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1")
        checks.append(
            Check(
                "torch",
                WARN,
                detail + "; an NVIDIA driver is present but torch cannot use it",
                "unset CUDA_VISIBLE_DEVICES (it hides every GPU)"
                if hidden
                else "install a CUDA build of torch that matches the driver "
                "(https://pytorch.org/get-started/locally/), or check the driver with nvidia-smi",
                group="system",
            )
        )
    else:
        checks.append(Check("torch", OK, detail, group="system"))
    gpus = info.get("gpus") or []
    if gpus:
        lines = []
        for g in gpus:
            free = f", {gib(g['memory_free_bytes'])} free" if "memory_free_bytes" in g else ""
            lines.append(
                f"{g['index']}: {g['name']} ({gib(g['memory_total_bytes'])}{free}, "
                f"compute {g['capability']})"
            )
        checks.append(Check("gpus", OK, "; ".join(lines), group="system", data={"gpus": gpus}))
    else:
        checks.append(Check("gpus", SKIP, "no CUDA GPU visible to torch", group="system"))
    return checks


def check_device(settings: Settings) -> Check:
    """The device and dtype a worker on this machine would pick (no model loaded)."""
    from raylens.errors import ModelLoadError
    from raylens.models.device import select_device, select_dtype

    try:
        device = select_device(settings.clip_device)
        dtype = select_dtype(device, settings.clip_precision)
    except ModelLoadError as exc:
        return Check(
            "device",
            ERROR,
            exc.message,
            fix_from_message(exc.message, "set RAYLENS_CLIP_DEVICE=auto"),
            group="system",
        )
    dt = str(dtype).replace("torch.", "")
    return Check(
        "device",
        OK,
        f"RAYLENS_CLIP_DEVICE={settings.clip_device}, RAYLENS_CLIP_PRECISION="
        f"{settings.clip_precision} -> {device} ({dt}) on this machine",
        group="system",
        data={"device": device, "dtype": dt},
    )
