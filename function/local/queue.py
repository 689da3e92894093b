"""The upload path on this machine, as template.yaml builds it in AWS: a bucket whose
uploads are announced to a queue (the template's own notification filters), a
dead-letter queue behind it, and ``poll``, which does what Lambda's event source mapping
does: receive a batch, hand it to handlers.s3.lambda_handler as one SQS event, delete
the messages the answer does not report failed, and leave the failed ones to come back
after the visibility timeout (and into the dead-letter queue after maxReceiveCount).

Works against moto in process (tests) or moto's server on 127.0.0.1 (make run-s3,
make run-bulk); never against AWS."""
from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from local.events import LambdaContext, sqs_event, sqs_message

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus CloudFormation's short tags (!Ref, !Sub, !GetAtt, ...)."""


def _cfn_tag(loader: _CfnLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path: Path = TEMPLATE) -> dict:
    return yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 -- a safe loader


def notification_configuration(arn: str, upload_prefix: str, template: dict | None = None) -> dict:
    """The bucket's NotificationConfiguration as the template writes it, for this queue and prefix."""
    template = template or load_template()
    bucket = template["Resources"]["UploadBucket"]["Properties"]
    configs = []
    for config in bucket["NotificationConfiguration"]["QueueConfigurations"]:
        rules = [{"Name": r["Name"], "Value": upload_prefix if r["Value"] == {"Ref": "UploadPrefix"} else r["Value"]}
                 for r in config["Filter"]["S3Key"]["Rules"]]
        configs.append({"Events": [config["Event"]], "QueueArn": arn, "Filter": {"Key": {"FilterRules": rules}}})
    return {"QueueConfigurations": configs}


def queue_settings(template: dict | None = None) -> dict:
    """The upload queue's settings as the template's defaults make them."""
    template = template or load_template()
    params = {name: p.get("Default") for name, p in template["Parameters"].items()}
    queue = template["Resources"]["UploadsQueue"]["Properties"]
    return {"visibility_timeout": int(queue["VisibilityTimeout"]),
            "max_receive_count": int(params["QueueMaxReceiveCount"]),
            "batch_size": int(params["QueueBatchSize"]),
            "upload_prefix": params["UploadPrefix"]}


_ARNS: dict[str, str] = {}


def queue_arn(sqs, queue_url: str) -> str:
    """The queue's ARN (asked once per URL: it never changes)."""
    if queue_url not in _ARNS:
        _ARNS[queue_url] = sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return _ARNS[queue_url]


def create(s3, sqs, bucket: str, upload_prefix: str = "uploads/", max_receive_count: int = 5,
           visibility_timeout: int = 360, versioned: bool = True) -> tuple[str, str]:
    """The bucket, its upload queue and the dead-letter queue: (queue URL, DLQ URL)."""
    dlq_url = sqs.create_queue(QueueName=f"{bucket}-failed-uploads")["QueueUrl"]
    dlq_arn = queue_arn(sqs, dlq_url)
    queue_url = sqs.create_queue(QueueName=f"{bucket}-uploads", Attributes={
        "VisibilityTimeout": str(visibility_timeout),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}),
    })["QueueUrl"]
    region = s3.meta.region_name
    s3.create_bucket(Bucket=bucket, **({} if region == "us-east-1" else
                                        {"CreateBucketConfiguration": {"LocationConstraint": region}}))
    if versioned:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration=notification_configuration(queue_arn(sqs, queue_url), upload_prefix))
    return queue_url, dlq_url


def context() -> LambdaContext:
    """The upload function's context (its timeout is 60 s)."""
    return LambdaContext(timeout_s=60.0, function_name="EmotionS3Function")


# What differs between two writes of the same answer (handlers.s3 writes them again on a retry).
VOLATILE = ("processed_at", "version_id")


def result_versions(s3, bucket: str, prefix: str = "results/") -> dict[str, list[dict]]:
    """Every version of every result: key -> [result, ...], newest first.  One listing
    for all (moto's listing costs time and memory with every object in the bucket)."""
    found: dict[str, list[dict]] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            body = s3.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
            found.setdefault(v["Key"], []).append(json.loads(body))
    return found


def same_answer(versions: list[dict]) -> bool:
    """Whether every write of a result says the same, apart from VOLATILE."""
    return len({json.dumps({k: v for k, v in r.items() if k not in VOLATILE}, sort_keys=True)
                for r in versions}) == 1


def depth(sqs, queue_url: str) -> int:
    """Messages in the queue, visible or in flight."""
    a = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


def poll(sqs, queue_url: str, handler, batch_size: int = 10, wait_seconds: int = 1) -> dict:
    """One batch through ``handler``, as the event source mapping runs it:
    ``{"messages", "failed", "handler_s"}`` (0 messages when the queue had none)."""
    received: list[dict] = []
    while len(received) < batch_size:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=min(10, batch_size - len(received)),
                                  WaitTimeSeconds=0 if received else wait_seconds,
                                  MessageSystemAttributeNames=["All"]).get("Messages", [])
        if not got:
            break
        received += got
    if not received:
        return {"messages": 0, "failed": 0, "handler_s": 0.0}
    arn = queue_arn(sqs, queue_url)
    event = sqs_event(*(sqs_message(m["Body"], message_id=m["MessageId"], receipt_handle=m["ReceiptHandle"],
                                    receive_count=int(m["Attributes"]["ApproximateReceiveCount"]),
                                    sent_ms=int(m["Attributes"]["SentTimestamp"]), queue_arn=arn)
                        for m in received))
    start = time.perf_counter()
    try:
        answer = handler(event, context())
        failed = {f["itemIdentifier"] for f in answer["batchItemFailures"]}
    except Exception:  # noqa: BLE001 -- an invocation error: Lambda retries the whole batch
        failed = {m["MessageId"] for m in received}
    handler_s = time.perf_counter() - start
    done = [m for m in received if m["MessageId"] not in failed]
    for i in range(0, len(done), 10):
        sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(done[i:i + 10])])
    return {"messages": len(received), "failed": len(failed), "handler_s": handler_s}
