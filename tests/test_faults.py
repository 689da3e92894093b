"""Faults in S3 on the upload path (issue 22, section 2): moto's S3 and SQS with errors
injected into the handler's own S3 client (throttling, 500s, read and connect timeouts,
access denied, on GetObject and PutObject; one record of a multi-record notification
failing).  Every photo must end with a result, or with its message in the dead-letter
queue to be redriven; none missing, none written twice with different content."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError, ReadTimeoutError
from test_queue import BUCKET, drain, results, same_answer, stack  # noqa: F401  (fixture)
from test_s3 import FACE, NO_FACE, fallback, rekognition_stub  # noqa: F401  (fixtures)

from handlers import s3 as handler
from local import queue


@pytest.fixture(autouse=True)
def local_only(fallback, rekognition_stub):  # noqa: F811
    fallback("off")


def client_error(code: str, status: int, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


# What S3 or the network can do to a call once botocore's own retries are spent.
FAULTS = {
    "throttled": lambda op: client_error("SlowDown", 503, op),
    "internal error": lambda op: client_error("InternalError", 500, op),
    "read timeout": lambda op: ReadTimeoutError(endpoint_url="https://s3.ap-northeast-2.amazonaws.com"),
    "connect timeout": lambda op: ConnectTimeoutError(endpoint_url="https://s3.ap-northeast-2.amazonaws.com"),
    "access denied": lambda op: client_error("AccessDenied", 403, op),
}


def inject(client, operation: str, fault, keys: set[str], times: int) -> Counter:
    """``fault`` on ``operation`` for the given object keys, ``times`` times each
    (a large ``times``: every time).  Returns the count of faults raised per key."""
    raised: Counter = Counter()

    def before(params, **_):
        key = params.get("Key", "")
        if key in keys and raised[key] < times:
            raised[key] += 1
            raise fault(operation)
    client.meta.events.register(f"before-parameter-build.s3.{operation}", before)
    return raised


@pytest.mark.parametrize("operation", ["GetObject", "PutObject"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_transient_faults_lose_nothing(stack, operation, fault):
    """Faults on the first two tries of some photos: they come back and get their result."""
    s3, sqs, queue_url, dlq_url = stack
    keys = [f"uploads/f/{i:02d}.jpg" for i in range(24)]
    targets = {k if operation == "GetObject" else handler.result_key(k) for k in keys[::3]}
    raised = inject(handler.s3_client(), operation, FAULTS[fault], targets, times=2)
    for i, key in enumerate(keys):
        s3.put_object(Bucket=BUCKET, Key=key, Body=FACE if i % 2 else NO_FACE)
    drain(sqs, queue_url)
    found = results(s3)
    assert sorted(found) == sorted(handler.result_key(k) for k in keys)      # none missing
    assert all(same_answer(v) for v in found.values())                       # none answered two ways
    assert all(v[0]["status"] == "ok" for v in found.values())
    assert set(raised) == targets and set(raised.values()) == {2}            # the faults did happen
    assert queue.depth(sqs, dlq_url) == 0


@pytest.mark.parametrize("operation", ["GetObject", "PutObject"])
def test_a_lasting_fault_ends_in_the_dead_letter_queue_whole(stack, operation):
    """Access denied every time (a broken policy): no result, the message is kept."""
    s3, sqs, queue_url, dlq_url = stack
    keys = [f"uploads/d/{i:02d}.jpg" for i in range(6)]
    denied = keys[1]
    inject(handler.s3_client(), operation, FAULTS["access denied"],
           {denied if operation == "GetObject" else handler.result_key(denied)}, times=10**6)
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=FACE)
    drain(sqs, queue_url)
    assert sorted(results(s3)) == sorted(handler.result_key(k) for k in keys if k != denied)
    dead = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10)["Messages"]
    assert [handler.S3Object.from_record(r).key for m in dead for r in json.loads(m["Body"])["Records"]] == [denied]


def test_one_failing_record_of_a_multi_record_notification(stack):
    """S3 may put several records in one notification: the failing one sends the message
    back, the others are written (once more on the retry, the same answer)."""
    s3, sqs, queue_url, dlq_url = stack
    keys = ["uploads/m/a.jpg", "uploads/m/b.jpg", "uploads/m/c.jpg"]
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=FACE)
    drain(sqs, queue_url)                                                    # one result each
    raised = inject(handler.s3_client(), "GetObject", FAULTS["throttled"], {keys[1]}, times=1)
    records = [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": BUCKET}, "object": {"key": k}}}
               for k in keys]
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"Records": records}))
    batches = drain(sqs, queue_url)
    assert [b["failed"] for b in batches] == [1, 0] and raised[keys[1]] == 1
    found = results(s3)
    assert sorted(found) == sorted(handler.result_key(k) for k in keys)
    assert all(same_answer(v) for v in found.values())
    assert [len(found[handler.result_key(k)]) for k in keys] == [3, 2, 3]  # a and c: upload, try, retry
    assert queue.depth(sqs, dlq_url) == 0
