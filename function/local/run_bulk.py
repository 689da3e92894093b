"""``make run-bulk N=500 WORKERS=2``: a bulk upload through the queue, on this machine.

moto's S3 and SQS server on 127.0.0.1 (local.run_s3.start_moto), the bucket and its
queues as template.yaml builds them (local.queue), N uploads of real photos (the sample
photos and, when ../shared is there, the development photos; every 25th upload a bad
file, every 10th a duplicate: the same photo again under its key or under a new one),
and WORKERS processes, each polling the queue and running handlers.s3.lambda_handler the
way a Lambda instance behind the event source mapping does (batches, batchItemFailures
answered, messages deleted only when done).  A progress bar, then a report: results,
lost photos, results written twice with different content, bad files and their errors,
photos per second per worker and in all, against the handler's own time per photo.

    python -m local.run_bulk --n 500 --workers 2 [--inject-failures 0.05]

--inject-failures RATE makes that share of the messages fail on their first delivery
(a transient S3 error): they come back after the visibility timeout (--visibility,
5 s here; the template's is 360 s) and must still end in exactly one result each.
Exits 1 when a photo was lost or a result was written twice with different content.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FACES = ROOT.parent / "shared" / "data" / "faces"


def photos(limit: int = 60) -> list[tuple[str, bytes]]:
    """Real photos: the samples, and up to ``limit`` development photos when present."""
    found = [(p.name, p.read_bytes()) for p in sorted((ROOT / "events" / "images").glob("*.jpg"))]
    if FACES.is_dir():
        found += [(p.name, p.read_bytes()) for p in sorted(FACES.rglob("*.jpg"))[:limit]]
    return found


def uploads(n: int, prefix: str, seed: int = 0) -> list[tuple[str, bytes]]:
    """N (key, bytes): photos, every 25th a bad file, every 10th a duplicate."""
    rng = random.Random(seed)
    pool = photos()
    bad = [("truncated.jpg", pool[0][1][:500]), ("text.jpg", b"not a photo\n"), ("empty.png", b"")]
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        if i and i % 25 == 0:
            name, data = bad[(i // 25) % len(bad)]
            out.append((f"{prefix}bulk/{i:05d}-{name}", data))
        elif i and i % 10 == 0:
            key, data = out[rng.randrange(len(out))]
            same_key = i % 20 == 0
            out.append((key if same_key else f"{prefix}bulk/{i:05d}-copy.jpg", data))
        else:
            name, data = pool[i % len(pool)]
            out.append((f"{prefix}bulk/{i:05d}-{name}", data))
    return out


def worker(index: int, queue_url: str, batch_size: int, inject: float, stop, stats, log: str) -> None:
    """One 'Lambda instance': poll until told to stop, then report what it did.  Its
    log lines and metrics go to ``log``, not over the progress bar."""
    sys.stdout = open(log, "a", buffering=1)  # before Powertools' logger is made
    from handlers import s3 as handler
    from local import queue

    import boto3
    sqs = boto3.client("sqs")
    if inject:
        rng, failed_once, process = random.Random(index), set(), handler.process

        def flaky(rec):
            key = rec["s3"]["object"]["key"]
            if key not in failed_once and rng.random() < inject:
                failed_once.add(key)
                raise ConnectionError("injected: a transient S3 error")
            return process(rec)
        handler.process = flaky
    done = {"worker": index, "messages": 0, "failed": 0, "handler_s": 0.0, "busy_s": 0.0}
    while not stop.is_set():
        start = time.perf_counter()
        batch = queue.poll(sqs, queue_url, handler.lambda_handler, batch_size, wait_seconds=1)
        if batch["messages"]:
            done["busy_s"] += time.perf_counter() - start
            for k in ("messages", "failed", "handler_s"):
                done[k] += batch[k]
    stats.put(done)


def report(s3, sqs, bucket, keys, queue_url, dlq_url, stats, wall, handler_mod) -> dict:
    from local import queue

    expected = sorted(set(keys))
    results, differing, errors = {}, [], {}
    written = queue.result_versions(s3, bucket)
    for key in expected:
        versions = written.get(handler_mod.result_key(key))
        if not versions:
            continue
        results[key] = versions[0]
        if not queue.same_answer(versions) and len({r.get("etag") for r in versions}) == 1:
            differing.append(key)  # the same bytes answered two ways
        if versions[0]["status"] == "error":
            errors[key] = versions[0]["error"]["code"]
    dead = queue.depth(sqs, dlq_url)
    lost = [k for k in expected if k not in results]
    messages = sum(s["messages"] for s in stats)
    out = {
        "uploads": len(keys), "keys": len(expected), "results": len(results), "lost": len(lost),
        "dead_lettered": dead, "left_in_queue": queue.depth(sqs, queue_url),
        "written_twice_differently": len(differing), "bad_files": len(errors),
        "bad_file_errors": sorted(set(errors.values())),
        "messages_handled": messages, "messages_failed": sum(s["failed"] for s in stats),
        "wall_s": round(wall, 2), "photos_per_s": round(len(keys) / wall, 2),
        "workers": [{"worker": s["worker"], "messages": s["messages"],
                     "photos_per_s_busy": round(s["messages"] / s["busy_s"], 2) if s["busy_s"] else 0.0,
                     "handler_ms_per_photo": round(1000 * s["handler_s"] / s["messages"], 1) if s["messages"] else 0.0,
                     "queue_ms_per_photo": round(1000 * (s["busy_s"] - s["handler_s"]) / s["messages"], 1)
                     if s["messages"] else 0.0} for s in sorted(stats, key=lambda s: s["worker"])],
    }
    handler_s, busy_s = sum(s["handler_s"] for s in stats), sum(s["busy_s"] for s in stats)
    out["queue_overhead_pct"] = round(100 * (busy_s - handler_s) / handler_s, 1) if handler_s else 0.0
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="uploads")
    p.add_argument("--workers", type=int, default=2, help="processes working the queue")
    p.add_argument("--batch-size", type=int, help="messages per invocation (default: the template's)")
    p.add_argument("--visibility", type=int, default=5, help="the queue's visibility timeout here, s")
    p.add_argument("--inject-failures", type=float, default=0.0, metavar="RATE")
    p.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)

    import tempfile

    from tqdm import tqdm

    from local import queue
    from local.run_s3 import BUCKET, start_moto

    logs = Path(tempfile.mkdtemp(prefix="run-bulk-"))  # the workers' logs and metrics, as CloudWatch would get them

    server, endpoint = start_moto()
    try:
        import boto3

        import handlers.s3 as handler_mod
        s3, sqs = boto3.client("s3"), boto3.client("sqs")
        settings = queue.queue_settings()
        batch = args.batch_size or settings["batch_size"]
        queue_url, dlq_url = queue.create(s3, sqs, BUCKET, handler_mod.options.upload_prefix,
                                          settings["max_receive_count"], args.visibility)
        sqs.purge_queue(QueueUrl=queue_url)  # S3's s3:TestEvent: not part of the bulk
        spawn = multiprocessing.get_context("spawn")
        stop, stats = spawn.Event(), spawn.Queue()
        procs = [spawn.Process(target=worker, args=(i, queue_url, batch, args.inject_failures, stop, stats,
                                                    str(logs / f"worker-{i}.log")))
                 for i in range(args.workers)]
        for proc in procs:
            proc.start()
        work = uploads(args.n, handler_mod.options.upload_prefix)
        keys = [key for key, _ in work]
        start = time.perf_counter()
        for key, data in tqdm(work, desc="uploading", unit="photo", file=sys.stderr):
            s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        wanted = len(set(keys))
        with tqdm(total=wanted, desc="results", unit="photo", file=sys.stderr) as bar:
            while time.perf_counter() - start < args.timeout:
                pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="results/")
                done = sum(len(page.get("Contents", [])) for page in pages)
                bar.update(done - bar.n)
                if done >= wanted and queue.depth(sqs, queue_url) == 0:
                    break
                if queue.depth(sqs, queue_url) == 0 and queue.depth(sqs, dlq_url):
                    break  # what is left is dead-lettered
                time.sleep(0.5)
        wall = time.perf_counter() - start
        stop.set()
        collected = [stats.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
        out = report(s3, sqs, BUCKET, keys, queue_url, dlq_url, collected, wall, handler_mod)
        out["logs"] = str(logs)
    finally:
        server.stop()
    if args.json:
        print(json.dumps(out))
    else:
        for name, value in out.items():
            print(f"{name:>26}: {value}")
    return 1 if out["lost"] or out["written_twice_differently"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
