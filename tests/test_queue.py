"""The upload queue (issue 23): S3 announces uploads to SQS, handlers.s3 takes them in
batches and reports only the failed messages; they come back, and after
maxReceiveCount tries wait in the dead-letter queue.  moto's S3 and SQS in process, set
up as template.yaml sets them up (local.queue), worked the way Lambda's event source
mapping works them (local.queue.poll); the real model; nothing reaches the network."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from test_s3 import FACE, NO_FACE, REGION, context, fallback, rekognition_stub  # noqa: F401  (fixtures)

from handlers import s3 as handler
from local import queue
from local.events import sqs_event, sqs_message

BUCKET = "emotion-uploads-123456789012-ap-northeast-2-queue"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD = b"\xff\xd8\xff\xe0 not really a JPEG"


@pytest.fixture(autouse=True)
def local_only(fallback, rekognition_stub):  # noqa: F811
    fallback("off")


@pytest.fixture
def stack(monkeypatch):
    """Bucket, upload queue (visibility timeout 1 s: a failed message comes back soon)
    and dead-letter queue after 3 receives; the handler's S3 client inside the mock."""
    with mock_aws():
        monkeypatch.setattr(handler, "_client", None)
        s3, sqs = boto3.client("s3", region_name=REGION), boto3.client("sqs", region_name=REGION)
        queue_url, dlq_url = queue.create(s3, sqs, BUCKET, handler.options.upload_prefix,
                                          max_receive_count=3, visibility_timeout=1)
        yield s3, sqs, queue_url, dlq_url


def drain(sqs, queue_url: str, limit_s: float = 120) -> list[dict]:
    """Work the queue until it is empty (failed messages come back after 1 s)."""
    batches, deadline = [], time.monotonic() + limit_s
    while time.monotonic() < deadline:
        batch = queue.poll(sqs, queue_url, handler.lambda_handler, batch_size=10, wait_seconds=0)
        if batch["messages"]:
            batches.append(batch)
        elif queue.depth(sqs, queue_url):
            time.sleep(0.2)  # in flight: wait for the visibility timeout
        else:
            return batches
    raise AssertionError("the queue never drained")


def results(s3) -> dict[str, list[dict]]:
    """Every version of every result: key -> [result, ...]."""
    return queue.result_versions(s3, BUCKET)


same_answer = queue.same_answer


def test_an_upload_goes_through_the_queue_and_the_test_event_is_ignored(stack):
    s3, sqs, queue_url, dlq_url = stack
    s3.put_object(Bucket=BUCKET, Key="uploads/me.jpg", Body=FACE)
    s3.put_object(Bucket=BUCKET, Key="uploads/notes.txt", Body=b"no notification for this")
    batches = drain(sqs, queue_url)
    assert sum(b["messages"] for b in batches) == 2   # s3:TestEvent + the photo
    assert sum(b["failed"] for b in batches) == 0
    found = results(s3)
    assert list(found) == ["results/uploads/me.jpg.json"] and found["results/uploads/me.jpg.json"][0]["status"] == "ok"
    assert queue.depth(sqs, dlq_url) == 0


def test_only_the_failed_messages_come_back(stack, monkeypatch):
    s3, sqs, queue_url, _ = stack
    for key in ("uploads/good.jpg", "uploads/unlucky.jpg"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=FACE)
    put = handler.s3_client().put_object

    def throttled(**kwargs):
        if kwargs["Key"] == "results/uploads/unlucky.jpg.json":
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "Reduce your request rate"}}, "PutObject")
        return put(**kwargs)
    monkeypatch.setattr(handler.s3_client(), "put_object", throttled)
    notification = lambda key: json.dumps({"Records": [{  # noqa: E731
        "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": BUCKET}, "object": {"key": key}}}]})
    event = sqs_event(sqs_message(notification("uploads/good.jpg"), message_id="good"),
                      sqs_message("not json at all", message_id="garbled"),
                      sqs_message(notification("uploads/unlucky.jpg"), message_id="unlucky"),
                      sqs_message(json.dumps({"Event": "s3:TestEvent", "Bucket": BUCKET}), message_id="test-event"))
    answer = handler.lambda_handler(event, context())
    assert sorted(f["itemIdentifier"] for f in answer["batchItemFailures"]) == ["garbled", "unlucky"]
    assert list(results(s3)) == ["results/uploads/good.jpg.json"]


def test_the_sample_queue_event(monkeypatch):
    """events/sqs-s3-put.json (what `sam local invoke EmotionS3Function` sends) on the
    astronaut uploaded under its key."""
    event = json.loads(open(os.path.join(ROOT, "events", "sqs-s3-put.json")).read())
    [rec] = json.loads(event["Records"][0]["body"])["Records"]
    with mock_aws():
        monkeypatch.setattr(handler, "_client", None)
        s3 = boto3.client("s3", region_name=REGION)
        bucket = rec["s3"]["bucket"]["name"]
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        key = handler.S3Object.from_record(rec).key
        s3.put_object(Bucket=bucket, Key=key, Body=open(os.path.join(ROOT, "events", "images", "astronaut.jpg"), "rb").read())
        assert handler.lambda_handler(event, context()) == {"batchItemFailures": []}
        result = json.loads(s3.get_object(Bucket=bucket, Key=handler.result_key(key))["Body"].read())
    assert result["status"] == "ok" and len(result["faces"]) == 1


def test_a_burst_of_300_uploads_with_injected_failures_gives_exactly_300_results(stack, monkeypatch):
    s3, sqs, queue_url, dlq_url = stack
    rng = random.Random(23)
    keys = [f"uploads/burst/{i:03d}.jpg" for i in range(300)]
    bodies = {key: (BAD if i % 30 == 7 else NO_FACE if i % 3 else FACE) for i, key in enumerate(keys)}
    unlucky = set(rng.sample(keys, 60))  # fail on their first delivery: throttled, a crash...
    process, failed_once = handler.process, set()

    def flaky(rec):
        key = handler.S3Object.from_record(rec).key
        if key in unlucky and key not in failed_once:
            failed_once.add(key)
            raise ConnectionError("injected transient failure")
        return process(rec)
    monkeypatch.setattr(handler, "process", flaky)
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=bodies[key])
    for key in rng.sample(keys, 20):  # SQS delivers at least once: some twice
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"Records": [{
            "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": BUCKET}, "object": {"key": key}}}]}))
    batches = drain(sqs, queue_url)
    assert sum(b["failed"] for b in batches) == len(unlucky)
    found = results(s3)
    assert sorted(found) == sorted(handler.result_key(k) for k in keys)          # exactly 300, none lost
    assert all(same_answer(v) for v in found.values())                           # never two different answers
    assert sum(len(v) > 1 for v in found.values()) >= 20                          # the redeliveries were written again
    assert {k for k in keys if found[handler.result_key(k)][0]["status"] == "error"} == \
        {k for k in keys if bodies[k] == BAD}
    assert queue.depth(sqs, dlq_url) == 0


def test_a_message_that_keeps_failing_is_dead_lettered_after_max_receives(stack, monkeypatch):
    s3, sqs, queue_url, dlq_url = stack
    tries = []
    process = handler.process

    def broken_for_one(rec):
        if handler.S3Object.from_record(rec).key == "uploads/cursed.jpg":
            tries.append(1)
            raise RuntimeError("a bug of ours, every time")
        return process(rec)
    monkeypatch.setattr(handler, "process", broken_for_one)
    for key in ("uploads/cursed.jpg", "uploads/fine.jpg"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=FACE)
    drain(sqs, queue_url)
    assert len(tries) == 3                                          # maxReceiveCount deliveries, then no more
    assert list(results(s3)) == ["results/uploads/fine.jpg.json"]
    [dead] = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10)["Messages"]
    [rec] = json.loads(dead["Body"])["Records"]                     # kept whole, to be redriven
    assert handler.S3Object.from_record(rec).key == "uploads/cursed.jpg"


def test_run_bulk_reports_every_photo_and_nothing_lost():
    """make run-bulk, small: moto's server, 2 worker processes, injected failures."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "function"), ROOT]),
           "FALLBACK_MODE": "off"}
    done = subprocess.run([sys.executable, "-m", "local.run_bulk", "--n", "60", "--workers", "2",
                           "--inject-failures", "0.1", "--visibility", "1", "--json"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["uploads"] == 60 and report["results"] == report["keys"] and report["lost"] == 0
    assert report["written_twice_differently"] == 0 and report["dead_lettered"] == 0
    assert report["bad_files"] >= 2 and "invalid_image" in report["bad_file_errors"]
    assert report["messages_failed"] >= 1 and len(report["workers"]) == 2
    assert sum(w["messages"] for w in report["workers"]) == report["messages_handled"] >= 60
