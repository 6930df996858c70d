"""What the benchmark scripts share: the machine they ran on, progress lines, git, and repeated timings.

Not a benchmark. The scripts import it as a sibling module (`from common import ...`), as they import
`synthetic_repo`, so each still runs as `.venv/bin/python benchmarks/<script>.py`.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def progress(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the report (and the JSON with --json)."""
    print(message, file=sys.stderr, flush=True)


def git(path: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=path, check=True, capture_output=True, text=True, input=stdin
    ).stdout.strip()


def machine(**versions: str) -> dict[str, Any]:
    """The machine the figures were measured on; `versions` (e.g. dagster="1.13") are listed after Python's."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "git": git(Path.cwd(), "--version"),
        "python": platform.python_version(),
        **versions,
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


@dataclass
class Timing:
    """Wall-clock seconds of each repetition, plus CPU seconds of this process and of its git children."""

    runs: list[float] = field(default_factory=list)
    python_cpu: list[float] = field(default_factory=list)
    git_cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def cpu(self) -> list[float]:
        """CPU seconds of each repetition, this process and its git children together."""
        return [own + children for own, children in zip(self.python_cpu, self.git_cpu, strict=True)]

    def to_json(self, total_cpu: bool = False) -> dict[str, Any]:
        """Medians and runs; CPU split into this process and git, or with `total_cpu` as one figure."""
        data: dict[str, Any] = {"median_s": round(self.median, 6), "runs_s": [round(r, 6) for r in self.runs]}
        if total_cpu:
            data["cpu_median_s"] = round(statistics.median(self.cpu), 6)
        elif self.python_cpu:
            data["python_cpu_s"] = round(statistics.median(self.python_cpu), 6)
            data["git_cpu_s"] = round(statistics.median(self.git_cpu), 6)
        return data


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(repeat: int, action: Callable[[], Any], setup: Callable[[], Any] | None = None) -> tuple[Timing, Any]:
    """Runs `setup` (untimed) then `action` (timed) `repeat` times; returns the timing and the last result.

    git children must be waited for before `action` returns (GitPython waits, ImageTagIndex kills and waits,
    subprocess.run waits), so that their CPU time is already in RUSAGE_CHILDREN when it is read.
    """
    timing, result = Timing(), None
    for _ in range(repeat):
        if setup is not None:
            setup()
        cpu, children = time.process_time(), _children_cpu()
        started = time.perf_counter()
        result = action()
        timing.runs.append(time.perf_counter() - started)
        timing.python_cpu.append(time.process_time() - cpu)
        timing.git_cpu.append(_children_cpu() - children)
    return timing, result
