"""Timing helpers shared by the benchmark's children (standard library only, so that
bench/fer_peer.py can use them from an interpreter that has `fer` but not torch)."""
from __future__ import annotations

import statistics
import time


def timings(fn, reps: int, warmup: int = 3) -> list[float]:
    """Milliseconds of ``reps`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def summary(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"p50": round(statistics.median(ms), 2),
            "p95": round(ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))], 2),
            "n": len(ms)}


def median(fn, reps: int) -> float:
    return summary(timings(fn, reps))["p50"]
