"""What a request costs on Lambda at each memory size, from the times `make bench` measured.

Lambda gives a function CPU in proportion to its memory: 1,769 MB is one full vCPU.
The model of the duration, stated so that it can be argued with:
- at or below one vCPU (c = memory / 1769 <= 1) the request's CPU work, its time on one
  thread t1, is spread over a share c of a CPU: t = t1 / c;
- between one and two vCPUs the speed-up grows linearly from 1 to the one measured with
  two threads here (t1 / t2): t = t1 / (1 + (c - 1) (t1 / t2 - 1)).
Billed: the duration rounded up to the millisecond, times the memory in GB, at the
price per GB-second, plus the price per request.  Prices as published for Lambda
(ap-northeast-2 charges the same as us-east-1) and for Amazon Rekognition DetectFaces
(first tier); arm64's speed is not measured here: its rows assume the x86_64 times.
"""
from __future__ import annotations

import math

MEMORY_SIZES = (1024, 1536, 1769, 2048, 3008)
ONE_VCPU_MB = 1769
PRICE_GB_SECOND = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
PRICE_REQUEST = 0.20 / 1_000_000
REKOGNITION_PER_1000 = 1.00  # DetectFaces, first 1M images a month
PRICES_AS_OF = "2026-12"


def duration_ms(t1: float, t2: float, memory_mb: int) -> float:
    """The modelled warm duration at ``memory_mb`` from the one-thread and two-thread times."""
    c = memory_mb / ONE_VCPU_MB
    if c <= 1:
        return t1 / c
    speedup = 1 + (min(c, 2.0) - 1) * (t1 / t2 - 1)
    return t1 / speedup


def cost_per_1000(ms: float, memory_mb: int, arch: str) -> float:
    billed_s = math.ceil(ms) / 1000
    return 1000 * (billed_s * memory_mb / 1024 * PRICE_GB_SECOND[arch] + PRICE_REQUEST)


def table(times: dict[str, tuple[float, float]]) -> list[dict]:
    """``times``: request kind -> (t1, t2) in ms.  One row per memory size."""
    rows = []
    for memory in MEMORY_SIZES:
        row = {"memory_mb": memory, "vcpu": round(memory / ONE_VCPU_MB, 2)}
        for kind, (t1, t2) in times.items():
            ms = duration_ms(t1, t2, memory)
            row[kind] = {"ms": round(ms, 1), **{arch: round(cost_per_1000(ms, memory, arch), 5)
                                                for arch in PRICE_GB_SECOND}}
        rows.append(row)
    return rows


def cheapest(rows: list[dict], kind: str, arch: str = "x86_64") -> dict:
    return min(rows, key=lambda r: (r[kind][arch], r[kind]["ms"]))


def section(warm: dict, chosen_mb: int) -> list[str]:
    """BENCHMARKS.md's cost table: one-face (640x480) and ten-face (the crowd photo)
    requests, from this run's warm times with every CPU and with one thread."""
    two, one = warm["end_to_end"], warm.get("end_to_end_one_thread")
    if not one:
        return []
    kinds = {"one face (640x480)": "640x480", "ten faces (the crowd photo)": "crowd"}
    kinds = {k: v for k, v in kinds.items() if v in one}
    times = {k: (one[v]["p50"], two[v]["p50"]) for k, v in kinds.items()}
    rows = table(times)
    lines = ["", "### What a request costs on Lambda, by memory size", "",
             "Warm duration modelled from this run's one-thread and two-thread times (" +
             ", ".join(f"{k}: {t1:.0f} and {t2:.0f} ms" for k, (t1, t2) in times.items()) +
             "): below 1,769 MB a request gets that share of one vCPU; between one and two vCPUs the "
             "speed-up grows linearly to the one measured with two threads. Cost per 1,000 warm requests in USD "
             f"(billed per ms; ${PRICE_GB_SECOND['x86_64']:.10f} per GB-s on x86_64, "
             f"${PRICE_GB_SECOND['arm64']:.10f} on arm64, $0.20 per million requests; prices of {PRICES_AS_OF}). "
             "arm64's speed is not measured here: its columns assume the x86_64 times.", "",
             "| memory MB | vCPU | " + " | ".join(f"{k}: ms | x86_64 $ | arm64 $" for k in times) + " |",
             "|---|---|" + "---|---|---|" * len(times)]
    for r in rows:
        mark = " (chosen)" if r["memory_mb"] == chosen_mb else ""
        lines.append(f"| {r['memory_mb']}{mark} | {r['vcpu']:.2f} | " + " | ".join(
            f"{r[k]['ms']:.0f} | {r[k]['x86_64']:.4f} | {r[k]['arm64']:.4f}" for k in times) + " |")
    lines += ["", f"Amazon Rekognition DetectFaces alone: ${REKOGNITION_PER_1000:.2f} per 1,000 images (first tier), "
              "whatever the number of faces, before any Lambda time spent calling it."]
    return lines


# ---- the upload queue: what 1,000 photos cost (issue 23) ----------------------------------
# Request prices of S3 and SQS as listed for ap-northeast-2 (2026-12; not checked from this
# machine, which reaches no AWS page): S3 Standard GET $0.00035 and PUT $0.0045 per
# 1,000, SQS standard $0.40 per million requests (after the free tier).
S3_GET_PER_1000 = 0.00035
S3_PUT_PER_1000 = 0.0045
SQS_PER_MILLION = 0.40
# Not measured here (moto is not S3): a GET and a PUT of a photo-sized object inside the
# region, added to each photo's billed duration.
S3_IO_MS = 30.0


def per_1000_photos(photo_ms: float, memory_mb: int, arch: str, batch: int, annotate: bool = False) -> dict:
    """USD for 1,000 photos through S3 -> SQS -> Lambda, each taking ``photo_ms`` of the
    handler's time (plus S3_IO_MS), ``batch`` messages per invocation."""
    invocations = math.ceil(1000 / batch)
    lambda_s = 1000 * (photo_ms + S3_IO_MS) / 1000
    parts = {
        "lambda_duration": lambda_s * memory_mb / 1024 * PRICE_GB_SECOND[arch],
        "lambda_requests": invocations * PRICE_REQUEST,
        # S3's SendMessage per upload; the mapping's ReceiveMessage and DeleteMessageBatch per batch
        "sqs": (1000 + 2 * invocations) * SQS_PER_MILLION / 1_000_000,
        "s3": S3_GET_PER_1000 + S3_PUT_PER_1000 * (2 if annotate else 1),
    }
    parts["total"] = sum(parts.values())
    return {k: round(v, 5) for k, v in parts.items()}


def bulk_section(warm: dict, memory_mb: int, batch: int, share: dict | None) -> list[str]:
    """BENCHMARKS.md: 1,000 photos through the queue, beside Rekognition alone."""
    one = warm.get("end_to_end_one_thread")
    if not one:
        return []
    kinds = {"one face (640x480)": "640x480", "ten faces (the crowd photo)": "crowd"}
    lines = ["", "### 1,000 photos through S3 -> SQS -> Lambda (USD)", "",
             f"Each photo takes the one-thread warm time measured above (a {memory_mb:,} MB function has one "
             f"vCPU) plus {S3_IO_MS:.0f} ms assumed for its S3 GET and PUT (not measured: moto is not S3), "
             f"{batch} photos per invocation; S3 GET ${S3_GET_PER_1000} and PUT ${S3_PUT_PER_1000} per 1,000, SQS "
             f"${SQS_PER_MILLION:.2f} per million requests (S3's SendMessage, then a receive and a delete per batch), "
             "prices as listed for ap-northeast-2 and not checked from this machine. arm64's speed is not measured "
             "here: its rows assume the x86_64 times, so they are only the price difference.", "",
             "| photos | architecture | ms per photo | Lambda duration | Lambda requests | SQS | S3 | total "
             "| Rekognition DetectFaces alone |", "|---|---|---|---|---|---|---|---|---|"]
    for label, name in kinds.items():
        if name not in one:
            continue
        for arch in PRICE_GB_SECOND:
            c = per_1000_photos(one[name]["p50"], memory_mb, arch, batch)
            lines.append(f"| {label} | {arch} | {one[name]['p50']:.0f} + {S3_IO_MS:.0f} | {c['lambda_duration']:.5f} "
                         f"| {c['lambda_requests']:.5f} | {c['sqs']:.5f} | {c['s3']:.5f} | **{c['total']:.4f}** "
                         f"| {REKOGNITION_PER_1000:.2f} |")
    if share:
        n = share["photos"]
        lines += ["", f"Photos that would also reach Rekognition (${REKOGNITION_PER_1000:.2f} per 1,000), measured on "
                  f"the {n} development photos with the shipped model: FALLBACK_MODE=no-face {share['no_face']} "
                  f"({share['no_face'] / n:.0%}: +${REKOGNITION_PER_1000 * share['no_face'] / n:.2f} per 1,000 photos), "
                  f"low-confidence (under {share['confidence_threshold']}) {share['low_confidence']} "
                  f"({share['low_confidence'] / n:.0%}: +${REKOGNITION_PER_1000 * share['low_confidence'] / n:.2f}), "
                  "off 0."]
    return lines
