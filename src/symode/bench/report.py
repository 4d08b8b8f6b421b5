"""The reports of the bench: a description of the machine and the code, the text table,
CSV, JSON and PNG figures. Every benchmark script writes its records with these."""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import torch

from .. import __version__
from .contestants import REFERENCE
from .harness import MethodResult

__all__ = [
    "Progress",
    "machine",
    "source_state",
    "recorded",
    "json_safe",
    "write_json",
    "table",
    "write_csv",
    "CSV_FIELDS",
    "import_pyplot",
    "write_plots",
    "save_figure",
    "fmt_mib",
]


def machine() -> dict[str, Any]:
    """The machine and software a figure was measured on: CPU count and model, torch, Python,
    the platform, symode's version (and the GPU's name when CUDA is available)."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "symode": __version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def source_state(path: str | None = None) -> str:
    """The git commit of the checkout holding ``path`` (default: this package), with
    ``+dirty`` when it has uncommitted changes; ``"unknown"`` outside a git checkout."""
    where = os.path.dirname(os.path.abspath(path or __file__))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def recorded() -> dict[str, Any]:
    """When, from which code and on which machine a record is made: the date (UTC, ISO
    8601), the commit (:func:`source_state`) and the machine (:func:`machine`), as
    :func:`write_json` adds them under ``"recorded"``."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": source_state(),
        "machine": machine(),
    }


def write_json(path: str, report: dict[str, Any]) -> None:
    """``report`` as strict JSON (non-finite floats as null), with ``recorded``: the date,
    the commit and the machine, added unless present."""
    report = dict(report)
    report.setdefault("recorded", recorded())
    with open(path, "w") as fh:
        json.dump(json_safe(report), fh, indent=2, default=str)
        fh.write("\n")


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by None (strict JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def fmt_mib(x: float) -> str:
    """Three significant digits or more: 1364, 101.5, 2.31, 0.136."""
    return f"{x:.0f}" if x >= 1000 else f"{x:.4g}" if x >= 1 else f"{x:.3g}"


def table(results: Sequence[MethodResult], reference_is_backprop: bool = True) -> str:
    """The results as a text table, one row a contestant."""
    header = ("method", "peak MiB", "x bp", "time s", "x bp", "NFE fwd", "NFE bwd", "steps acc/rej", "grad rel err")
    rows = [header]
    for r in results:
        err = "(reference)" if r.method == REFERENCE and reference_is_backprop else _fmt(r.grad_rel_diff, ".2e")
        rows.append(
            (
                r.method,
                fmt_mib(r.peak_memory_mib),
                _fmt(r.memory_ratio, ".3f"),
                _fmt(r.median_time_s, ".3f"),
                _fmt(r.time_ratio, ".2f"),
                str(r.nfe_forward),
                str(r.nfe_backward),
                "-" if r.peer else f"{r.num_accepted}/{r.num_rejected}",
                err,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


CSV_FIELDS = (
    "problem",
    "solver",
    "dtype",
    "device",
    "batch",
    "method",
    "peak_memory_bytes",
    "peak_memory_mib",
    "memory_ratio",
    "median_time_s",
    "time_ratio",
    "time_ratio_paired",
    "nfe_forward",
    "nfe_backward",
    "nfe_backward_vjp",
    "num_accepted",
    "num_rejected",
    "grad_rel_diff",
    "grad_rel_diff_concat",
    "loss",
    "times_s",
)


def write_csv(path: str, info: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    """The results as CSV, one row a contestant, with the run's problem, solver, dtype, device and batch."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            row = dict(row)
            row["times_s"] = ";".join(f"{t:.6g}" for t in row.get("times_s", []))
            writer.writerow(
                {
                    "problem": info["problem"],
                    "solver": info["solver"],
                    "dtype": info["dtype"],
                    "device": info["device"],
                    "batch": info["y0_shape"][0],
                    **{k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()},
                }
            )


def import_pyplot() -> Any:
    """matplotlib.pyplot with a non-interactive backend, or ``None`` when not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(plt: Any, directory: str, info: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[str]:
    """Two figures: per-method bars (peak memory, time, gradient error) and memory vs time."""
    os.makedirs(directory, exist_ok=True)
    name = info["problem"]
    title = f"{info['summary']}, batch {info['y0_shape'][0]}, {info['solver']}, {info['dtype']}, {info['device']}"
    labels = [r["method"] for r in rows]
    ypos = list(range(len(rows)))[::-1]
    paths = []

    fig, axes = plt.subplots(1, 3, figsize=(15, 0.5 * len(rows) + 2.2), sharey=True)
    panels = (
        (axes[0], [r["peak_memory_mib"] for r in rows], "peak memory (MiB)", "memory_ratio", False),
        (axes[1], [r["median_time_s"] for r in rows], "time per iteration (s, median)", "time_ratio", False),
        (axes[2], [r["grad_rel_diff"] for r in rows], "gradient rel. error", None, True),
    )
    for ax, values, xlabel, ratio_key, log in panels:
        vals = [v if v is not None and isinstance(v, (int, float)) and math.isfinite(v) else 0.0 for v in values]
        base = 0.0
        if log:  # zeros (the reference itself, bit-identical gradients) get no bar, just "0"
            positive = [v for v in vals if v > 0]
            base = min(positive) / 10 if positive else 1e-17
            ax.set_xscale("log")
        ax.barh(ypos, [v - base if v > base else 0.0 for v in vals], left=base, color="tab:blue")
        for y, v, r in zip(ypos, vals, rows):
            text = f"{v:.3g}" if ratio_key is None or not r[ratio_key] else f"{v:.3g} ({r[ratio_key]:.2f}x)"
            ax.text(max(v, base), y, " " + text, va="center", fontsize=8)
        ax.set_xlabel(xlabel)
        ax.margins(x=0.3)
    axes[0].set_yticks(ypos)
    axes[0].set_yticklabels(labels)
    fig.suptitle(title, fontsize=9)
    paths.append(save_figure(plt, fig, directory, f"{name}_methods.png"))

    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        if r["median_time_s"] and r["peak_memory_mib"]:
            ax.scatter(r["median_time_s"], r["peak_memory_mib"])
            ax.annotate(
                r["method"],
                (r["median_time_s"], r["peak_memory_mib"]),
                fontsize=8,
                xytext=(4, 4),
                textcoords="offset points",
            )
    ax.set_xlabel("time per iteration (s, median)")
    ax.set_ylabel("peak memory (MiB)")
    ax.set_yscale("log")
    from matplotlib import ticker

    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    ax.set_title(title, fontsize=8)
    paths.append(save_figure(plt, fig, directory, f"{name}_memory_vs_time.png"))
    return paths


def save_figure(plt: Any, fig: Any, directory: str, filename: str) -> str:
    """Lay out, write as PNG and close ``fig``; returns the path."""
    fig.tight_layout()
    path = os.path.join(directory, filename)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


class Progress:
    """A one-line progress bar on stderr (``\\r``-rewritten); silent when disabled."""

    def __init__(self, total: int, enabled: bool, stream: TextIO | None = None, width: int = 24):
        self.total, self.enabled, self.width = max(total, 1), enabled, width
        self.stream = sys.stderr if stream is None else stream
        self.done = 0
        self.start = time.perf_counter()

    def __call__(self, what: str) -> None:
        """Announce the next unit of work."""
        self.done += 1
        if not self.enabled:
            return
        filled = int(self.width * (self.done - 1) / self.total)
        elapsed = int(time.perf_counter() - self.start)
        line = (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {what}  "
            f"{elapsed // 60}:{elapsed % 60:02d}"
        )
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()

    def skip(self, n: int) -> None:
        """``n`` announced units of work will not be done."""
        self.total = max(self.total - n, self.done, 1)

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
