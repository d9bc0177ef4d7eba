"""Timing that compares fairly: interleaved repetitions after a warm-up, medians, peak GPU memory."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock time covers the work and not only its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes on ``device``."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved_medians(
    fns: Dict[str, Callable[[], object]], device: torch.device, reps: int, warmup: int
) -> Tuple[Dict[str, float], Dict[str, Optional[float]]]:
    """Median seconds of each function, runs interleaved (a, b, a, b, ...) after ``warmup`` rounds.

    Also returns the peak GPU memory (MiB) each one reached during its timed runs (None on CPU).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    peak: Dict[str, Optional[float]] = {k: None for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[k].append(timed(fn, device))
            if device.type == "cuda":
                mib = torch.cuda.max_memory_allocated(device) / 2**20
                peak[k] = max(peak[k] or 0.0, mib)
    return {k: statistics.median(v) for k, v in times.items()}, peak


def result_row(ours: float, theirs: float, peak: Dict[str, Optional[float]], **extra) -> dict:
    """One result row: both times, the speedup and the peak memory of both."""
    row = {"mrcnn_lite_s": ours, "torchvision_s": theirs, "speedup": theirs / ours}
    row["peak_mem_mib"] = {k: (round(v, 1) if v is not None else "n/a") for k, v in peak.items()}
    row.update(extra)
    return row
