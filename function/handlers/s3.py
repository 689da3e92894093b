"""Upload notifications from the queue -> the emotion pipeline -> one JSON result per photo.

The bucket announces every upload to an SQS queue (template.yaml: UploadsQueue); Lambda's
event source mapping hands the messages to ``lambda_handler`` in batches, at most
QueueMaximumConcurrency invocations at a time.  Each message's body is S3's notification
(its ``Records``; events/s3-put.json) or the ``s3:TestEvent`` S3 sends when the
notification is configured, which is ignored.  Powertools' batch processing answers
``batchItemFailures``: only the messages that failed come back to the queue, to be tried
again after the visibility timeout and, after QueueMaxReceiveCount tries, kept in the
dead-letter queue (FailedUploadsQueue).

A photo put at ``s3://<bucket>/<UPLOAD_PREFIX>...`` gets its answer at
``s3://<bucket>/<RESULTS_PREFIX><key>.json`` (see ``result_key``): the API's 200 answer
(emotion, faces, source, image, model, fallback_error when it applies) plus ``status``,
``bucket``, ``key``, ``version_id``, ``etag`` and ``processed_at``.  Same image, same
pipeline and same Rekognition fallback as the API handler.

Every record of every message is handled, and ends in one of four ways:

* ``ok``: analysed; result written with ``"status": "ok"``.
* ``error``: the file itself is bad -- larger than MAX_OBJECT_BYTES (checked from the
  record's size, or HeadObject when the record has none, before anything is
  downloaded), empty, not an image, undecodable, too many pixels.  The result is written
  with ``"status": "error"`` and ``error: {code, message}``.  That is permanent, so it is
  answered, never raised: raising would only make Lambda retry the same bad file.
* ``skipped`` (logged, no result): the object is gone (NoSuchKey, NoSuchVersion, 404:
  deleted before we got to it); a key outside UPLOAD_PREFIX or inside RESULTS_PREFIX (a
  guard against recursion, besides the notification's own prefix filter and results
  being written outside the upload prefix); a folder placeholder (key ending in ``/``);
  a record that is not ObjectCreated or is malformed.
* ``failed``: anything else -- S3 throttling or a 5xx that outlived botocore's retries,
  access denied, a bug of ours.  The message's remaining records are still processed,
  then the message is reported failed (``RecordsFailed``), so the queue hands it out
  again; a message whose body is not an S3 notification fails the same way and ends in
  the dead-letter queue, where it can be inspected.  Swallowing the error would lose
  the photo's result silently.  Re-processing records that had succeeded is harmless
  because processing is idempotent: the same object always gives the same result key,
  and overwriting it gives the same content apart from ``processed_at``.

With ANNOTATE=true, an analysed photo also gets its annotated copy (every face's box,
label and confidence drawn; emotion.annotate) at ``annotated_key``:
``results/<key>.annotated.jpg``, written before the JSON result, which names it in
``annotated_key``.  It is under RESULTS_PREFIX, which the notification's prefix filter
never matches (UPLOAD_PREFIX may not be inside it) and which the handler skips.

Settings (environment, read once per container): UPLOAD_PREFIX (``uploads/``; empty for
the whole bucket), RESULTS_PREFIX (``results/``; never empty, never inside
UPLOAD_PREFIX), MAX_OBJECT_BYTES (default: MAX_IMAGE_BYTES of the pipeline), ANNOTATE
(``false``; ``true`` writes the annotated photos).  The S3
client is boto3's with its standard configuration (AWS_REGION, AWS_ENDPOINT_URL_S3, ...).
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from emotion.annotate import annotate
from emotion.errors import InputError
from handlers.runtime import analysed_fields, count, logger, metrics, pipeline, record, settings

# Error codes meaning "this object (version) does not exist (any more)".
NOT_FOUND = frozenset({"NoSuchKey", "NoSuchVersion", "NotFound", "404"})
OUTCOMES = ("ok", "error", "skipped", "failed")
METRICS = {"ok": "UploadsAnalysed", "error": "UploadsRejected", "skipped": "UploadsSkipped",
           "failed": "UploadsFailed"}


@dataclass(frozen=True)
class Options:
    """Where uploads are, where results go, and the largest object worth downloading."""

    upload_prefix: str = "uploads/"
    results_prefix: str = "results/"
    max_object_bytes: int = 6 * 1024 * 1024
    annotate: bool = False

    @classmethod
    def from_env(cls, max_image_bytes: int) -> "Options":
        upload = os.environ.get("UPLOAD_PREFIX", cls.upload_prefix).strip()
        results = os.environ.get("RESULTS_PREFIX", "").strip() or cls.results_prefix
        limit = int(os.environ.get("MAX_OBJECT_BYTES", "").strip() or max_image_bytes)
        if upload and results.startswith(upload):
            raise ValueError(f"RESULTS_PREFIX {results!r} is inside UPLOAD_PREFIX {upload!r}: "
                             "every result would trigger the function again")
        if upload.startswith(results):
            raise ValueError(f"UPLOAD_PREFIX {upload!r} is inside RESULTS_PREFIX {results!r}: "
                             "every upload would be skipped")
        if limit <= 0:
            raise ValueError(f"MAX_OBJECT_BYTES must be positive, not {limit}")
        annotate = os.environ.get("ANNOTATE", "false").strip().lower()
        if annotate not in ("true", "false"):
            raise ValueError(f"ANNOTATE must be true or false, not {annotate!r}")
        return cls(upload_prefix=upload, results_prefix=results, max_object_bytes=limit,
                   annotate=annotate == "true")


options = Options.from_env(settings.max_image_bytes)


class RecordsFailed(Exception):
    """Raised after every record of a message was handled when some failed for a reason
    worth a retry: the message goes back to the queue."""


@dataclass(frozen=True)
class S3Object:
    """What a record says about the uploaded object; ``key`` is decoded."""

    bucket: str
    key: str
    version_id: str | None
    size: int | None
    etag: str | None

    @classmethod
    def from_record(cls, rec: dict) -> "S3Object":
        s3 = rec["s3"]
        obj = s3["object"]
        size = obj.get("size")
        return cls(bucket=s3["bucket"]["name"], key=unquote_plus(obj["key"]),
                   version_id=obj.get("versionId") or None,
                   size=int(size) if size is not None else None,
                   etag=_etag(obj.get("eTag")))

    def where(self) -> dict:
        """Bucket, Key and VersionId (when the record has one) for GetObject/HeadObject."""
        where = {"Bucket": self.bucket, "Key": self.key}
        if self.version_id:
            where["VersionId"] = self.version_id
        return where


def result_key(key: str) -> str:
    """Where the result of the object ``key`` (decoded) is written:
    ``uploads/a b.jpg`` -> ``results/uploads/a b.jpg.json``."""
    return f"{options.results_prefix}{key}.json"


def annotated_key(key: str) -> str:
    """Where the annotated copy of ``key`` goes (ANNOTATE=true):
    ``uploads/a b.jpg`` -> ``results/uploads/a b.jpg.annotated.jpg``."""
    return f"{options.results_prefix}{key}.annotated.jpg"


_client = None
_client_lock = threading.Lock()


def s3_client():
    """One boto3 S3 client per container, created on first use."""
    global _client
    with _client_lock:
        if _client is None:
            import boto3
            from botocore.config import Config

            _client = boto3.client("s3", config=Config(retries={"mode": "standard"}))
        return _client


def _etag(value) -> str | None:
    return (str(value).strip('"') or None) if value else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _skip_reason(rec: dict, obj: S3Object) -> str | None:
    event_name = rec.get("eventName")
    if event_name and not str(event_name).startswith("ObjectCreated:"):
        return f"not an ObjectCreated event ({event_name})"
    if obj.key.startswith(options.results_prefix):
        return "key is under RESULTS_PREFIX"
    if not obj.key.startswith(options.upload_prefix):
        return "key is not under UPLOAD_PREFIX"
    if obj.key.endswith("/"):
        return "folder placeholder"
    return None


def _too_large(size: int) -> InputError:
    return InputError("object_too_large", f"The object is {size} bytes; the limit is "
                      f"{options.max_object_bytes} bytes.", status=413)


def _read(obj: S3Object) -> tuple[bytes | None, str | None, str | None, InputError | None]:
    """(bytes, etag, version id, None) of the object, or (None, etag, version id, error)
    when it is too large; never downloads an object over the limit.  Raises ClientError."""
    client = s3_client()
    size, etag = obj.size, obj.etag
    if size is None:
        head = client.head_object(**obj.where())
        size, etag = head["ContentLength"], _etag(head.get("ETag"))
    if size > options.max_object_bytes:
        return None, etag, obj.version_id, _too_large(size)
    answer = client.get_object(**obj.where())
    etag, version_id = _etag(answer.get("ETag")) or etag, obj.version_id or answer.get("VersionId")
    body = answer["Body"]
    try:
        # The object may have been replaced by a larger one since the event (unversioned).
        if answer.get("ContentLength", 0) > options.max_object_bytes:
            return None, etag, version_id, _too_large(answer["ContentLength"])
        data = body.read(options.max_object_bytes + 1)
    finally:
        body.close()
    if len(data) > options.max_object_bytes:
        return None, etag, version_id, _too_large(len(data))
    return data, etag, version_id, None


def process(rec: dict) -> str:
    """Handle one record: 'ok', 'error' or 'skipped'.  Raises for what deserves a retry."""
    from botocore.exceptions import ClientError

    try:
        obj = S3Object.from_record(rec)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        logger.warning("skipped: malformed record", extra={"reason": repr(exc)})
        return "skipped"
    logger.append_keys(bucket=obj.bucket, key=obj.key, version_id=obj.version_id)
    reason = _skip_reason(rec, obj)
    if reason:
        logger.warning("skipped", extra={"reason": reason})
        return "skipped"
    try:
        data, etag, version_id, problem = _read(obj)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in NOT_FOUND:
            logger.info("skipped: object no longer exists", extra={"reason": code})
            return "skipped"
        raise
    result = {"status": "ok", "bucket": obj.bucket, "key": obj.key, "version_id": version_id, "etag": etag}
    timings: dict = {}
    try:
        if problem:
            raise problem
        image = pipeline.decode(data, timings)
        result.update(pipeline.analyse_image(image, timings=timings))
    except InputError as exc:
        result.update(status="error", error={"code": exc.code, "message": exc.message},
                      source=None, emotion=None, faces=[], image=None, model=pipeline.model_info)
    if options.annotate and result["status"] == "ok":
        # First, so that whoever waits for the JSON result finds the picture there too.
        result["annotated_key"] = annotated_key(obj.key)
        s3_client().put_object(Bucket=obj.bucket, Key=result["annotated_key"], ContentType="image/jpeg",
                               Body=annotate(image, result["faces"]))
    result["processed_at"] = _now()
    target = result_key(obj.key)
    s3_client().put_object(Bucket=obj.bucket, Key=target, ContentType="application/json",
                           Body=json.dumps(result, ensure_ascii=False).encode("utf-8"))
    if result["status"] == "ok":
        record(result)
        logger.info("analysed", extra={"result_key": target, "bytes": len(data), "annotated": options.annotate,
                                       **analysed_fields(result, timings)})
        return "ok"
    logger.info("rejected", extra={"result_key": target, "code": result["error"]["code"],
                                   "bytes": len(data) if data is not None else None})
    return "error"


def handle_notification(notification: dict, summary: dict) -> None:
    """Every record of one S3 notification; counts outcomes in ``summary``.  Raises
    RecordsFailed, after the others, when a record failed for a reason worth a retry."""
    if notification.get("Event") == "s3:TestEvent":  # sent once, when the notification is configured
        logger.info("skipped: s3:TestEvent", extra={"bucket": notification.get("Bucket")})
        return
    records = notification.get("Records")
    if not isinstance(records, list) or not records:
        raise ValueError("the message is not an S3 notification (no Records)")
    failed = []
    for index, rec in enumerate(records):
        try:
            outcome = process(rec if isinstance(rec, dict) else {})
        except Exception as exc:  # noqa: BLE001 -- one record never stops the others
            logger.exception("record failed", extra={"record": index})
            failed.append(f"{_where(rec)} ({_code(exc)})")
            outcome = "failed"
        finally:
            logger.remove_keys(["bucket", "key", "version_id"])
        summary[outcome] += 1
    if failed:
        raise RecordsFailed(f"{len(failed)} of {len(records)} records failed: {', '.join(failed)[:2000]}")


# Reports the failed messages only (batchItemFailures); when all of them failed it says
# so the same way rather than raising, so Lambda's own error count means a bug of ours.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


@metrics.log_metrics(capture_cold_start_metric=True)
@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event, context):
    summary = dict.fromkeys(OUTCOMES, 0)

    def message(record: SQSRecord) -> None:
        logger.append_keys(message_id=record.message_id,
                           receive_count=record.attributes.approximate_receive_count)
        try:
            handle_notification(json.loads(record.body), summary)
        finally:
            logger.remove_keys(["message_id", "receive_count"])

    answer = process_partial_response(event=event, record_handler=message, processor=processor, context=context)
    for outcome, name in METRICS.items():
        count(name, summary[outcome])
    count("MessagesFailed", len(answer["batchItemFailures"]))
    logger.info("done", extra={"summary": summary, "messages": len(event.get("Records") or []),
                               "messages_failed": len(answer["batchItemFailures"])})
    return answer


def _where(rec) -> str:
    try:
        return f"s3://{rec['s3']['bucket']['name']}/{unquote_plus(rec['s3']['object']['key'])}"
    except (KeyError, TypeError):
        return "record"


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or type(exc).__name__)
    return type(exc).__name__
