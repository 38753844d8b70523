"""The doctor's verdicts: `Check`, `Report`, and the text and JSON renderings of a report."""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Any, TextIO

OK, WARN, ERROR, SKIP = "ok", "warn", "error", "skip"
STATUSES = (OK, WARN, ERROR, SKIP)
GROUPS = ("system", "settings", "ray", "store", "index", "models")


@dataclass
class Check:
    """One verdict. warn and error always carry a fix (a default one when none is given)."""

    name: str
    status: str
    detail: str
    fix: str | None = None
    group: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown check status {self.status!r}")
        if self.status in (WARN, ERROR) and not self.fix:
            self.fix = "see the detail above"
        if self.status in (OK, SKIP):
            self.fix = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "detail": self.detail}
        if self.fix:
            out["fix"] = self.fix
        out["group"] = self.group
        if self.data:
            out["data"] = self.data
        return out


@dataclass
class Report:
    """The checks in report order, facts about this machine, and how long the run took."""

    checks: list[Check]
    info: dict[str, Any]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(c.status == ERROR for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in STATUSES}

    def by_name(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checks": [c.to_dict() for c in self.checks],
            "ok": self.ok,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            **self.info,
            "seconds": round(self.seconds, 2),
        }


_LABEL = {OK: "ok", WARN: "WARN", ERROR: "ERROR", SKIP: "skip"}


def _wrap(text: str, indent: int, width: int) -> list[str]:
    lines: list[str] = []
    for para in text.splitlines() or [""]:
        lead = " " * (len(para) - len(para.lstrip()))
        lines += textwrap.wrap(
            para,
            max(40, width - indent),
            subsequent_indent=lead + "  ",
            break_on_hyphens=False,
            break_long_words=False,
        ) or [""]
    return lines


def render_text(report: Report, width: int = 100) -> str:
    name_w = max((len(c.name) for c in report.checks), default=10)
    pad = 2 + 5 + 2 + name_w + 2
    info = report.info
    git = f", git {info['git']}" if info.get("git") else ""
    out = [
        f"raylens doctor: raylens {info.get('raylens_version')}{git}; "
        f"{info.get('generated_at')}; took {report.seconds:.1f}s"
    ]
    for group in [*GROUPS, ""]:
        checks = [c for c in report.checks if c.group == group]
        if not checks:
            continue
        out += ["", group or "other"]
        for c in checks:
            lines = _wrap(c.detail, pad, width)
            out.append(f"  {_LABEL[c.status]:<5}  {c.name:<{name_w}}  {lines[0]}")
            out += [" " * pad + ln for ln in lines[1:]]
            if c.fix:
                fix = _wrap(f"fix: {c.fix}", pad, width)
                out += [" " * pad + ln for ln in fix]
    packages = ", ".join(f"{k} {v}" for k, v in (info.get("packages") or {}).items())
    out += ["", "packages", *("  " + ln for ln in _wrap(packages, 2, width))]
    out += ["", "environment"]
    env = info.get("environment") or {}
    out += [f"  {k}={v}" for k, v in env.items()] or ["  (no relevant variables set)"]
    counts = report.counts()
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    if report.ok:
        verdict = "no errors: exit 0"
    else:
        failed = ", ".join(c.name for c in report.checks if c.status == ERROR)
        verdict = f"exit 1: fix the error(s) above ({failed})"
    out += ["", f"summary: {summary}; {verdict}"]
    return "\n".join(out)


def print_report(report: Report, *, as_json: bool = False, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    if as_json:
        stream.write(json.dumps(report.to_dict(), default=str) + "\n")
    else:
        stream.write(render_text(report) + "\n")
    stream.flush()
