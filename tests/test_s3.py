"""The S3 upload path's handling of a notification (handlers.s3; the queue around it is
tests/test_queue.py): moto's in-process S3, Rekognition behind a
botocore Stubber, the real images and the real model.  Nothing reaches the network.

Predictions are never hard-coded (the weights in layers/model/ may be retrained): results
are compared with what the pipeline itself answers for the same bytes."""
from __future__ import annotations

import io
import json
import os
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote_plus

# Before anything creates a boto3 client or loads the pipeline: fake credentials, the
# service's region, and no endpoint that would lead past moto.
os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "ap-northeast-2"})
for _name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_REKOGNITION"):
    os.environ.pop(_name, None)

import boto3  # noqa: E402
import pytest  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402
from botocore.stub import Stubber  # noqa: E402
from moto import mock_aws  # noqa: E402  (imported before any client is created)
from PIL import Image  # noqa: E402

from emotion import rekognition  # noqa: E402
from handlers import runtime  # noqa: E402
from handlers import s3 as handler  # noqa: E402
from local import queue  # noqa: E402
from local.events import sqs_event, sqs_message  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "events" / "images"
SAMPLE_EVENT = json.loads((ROOT / "events" / "s3-put.json").read_text())
BUCKET = SAMPLE_EVENT["Records"][0]["s3"]["bucket"]["name"]
REGION = "ap-northeast-2"
ASTRONAUT = (IMAGES / "astronaut.jpg").read_bytes()
API_FIELDS = {"emotion", "faces", "source", "image", "model"}
S3_FIELDS = {"status", "bucket", "key", "version_id", "etag", "processed_at"}


def jpeg(name: str, box: tuple[int, int, int, int], size: tuple[int, int]) -> bytes:
    """A small JPEG cut out of one of the sample photos."""
    buffer = io.BytesIO()
    Image.open(IMAGES / name).convert("RGB").crop(box).resize(size).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "GIF")
    return buffer.getvalue()


FACE = jpeg("astronaut.jpg", (150, 40, 300, 190), (96, 96))      # the astronaut's face, small
FACE_64 = jpeg("astronaut.jpg", (150, 40, 300, 190), (64, 64))
# 3:2, so never taken to be a face crop (a small square picture with no face would be).
NO_FACE = jpeg("coffee.jpg", (0, 0, 300, 200), (96, 64))


context = queue.context  # the upload function's


def invoke(*records: dict) -> dict:
    """Handle one S3 notification of ``records``, as one queue message does; its outcomes.
    Raises RecordsFailed as the message's handling does (tests/test_queue.py: the queue)."""
    summary = dict.fromkeys(handler.OUTCOMES, 0)
    handler.handle_notification({"Records": list(records)}, summary)
    return {"records": len(records), **summary}


def s3_record(client, key: str, *, encode=lambda k: quote_plus(k, safe="/"), version_id: str | None = None,
              size: bool = True) -> dict:
    """The record S3 sends for ``key``: the sample event's, with the object's real size,
    ETag (and version id), the key URL-encoded the way S3 does."""
    head = client.head_object(Bucket=BUCKET, Key=key, **({"VersionId": version_id} if version_id else {}))
    rec = json.loads(json.dumps(SAMPLE_EVENT["Records"][0]))
    obj = {"key": encode(key), "eTag": head["ETag"].strip('"'), "sequencer": "0A1B2C3D4E5F678901"}
    if size:
        obj["size"] = head["ContentLength"]
    if version_id:
        obj["versionId"] = version_id
    rec["s3"]["object"] = obj
    return rec


def upload(client, key: str, data: bytes) -> dict:
    return client.put_object(Bucket=BUCKET, Key=key, Body=data)


def result_of(client, key: str) -> dict:
    answer = client.get_object(Bucket=BUCKET, Key=handler.result_key(key))
    assert answer["ContentType"] == "application/json"
    return json.loads(answer["Body"].read())


def keys_under(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def without_s3_fields(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in S3_FIELDS}


@pytest.fixture
def s3(monkeypatch):
    """moto's S3 with the service's bucket; the handler gets a fresh client inside the mock."""
    with mock_aws():
        monkeypatch.setattr(handler, "_client", None)
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield client


@pytest.fixture(autouse=True)
def rekognition_stub():
    """The pipeline's own Rekognition client behind a Stubber: a call nobody queued an
    answer for fails at once (-> fallback_error), it never reaches the network."""
    s = runtime.pipeline.settings
    client = rekognition.client(s.rekognition_region, s.rekognition_connect_timeout,
                                s.rekognition_read_timeout, s.rekognition_max_attempts)
    with Stubber(client) as stub:
        yield stub


@pytest.fixture
def fallback(monkeypatch):
    """Set the pipeline's FALLBACK_MODE for one test, whatever the environment said."""
    def set_mode(mode: str) -> None:
        monkeypatch.setattr(runtime.pipeline, "settings", replace(runtime.pipeline.settings, fallback_mode=mode))
    return set_mode


def calls(client, operation: str) -> list[dict]:
    """Parameters of every ``operation`` the handler's client makes from now on."""
    seen: list[dict] = []
    client.meta.events.register(f"before-parameter-build.s3.{operation}",
                                lambda params, **_: seen.append(dict(params)))
    return seen


def test_one_photo_gets_the_api_answer_plus_where_it_came_from(s3, fallback):
    fallback("off")
    key = SAMPLE_EVENT["Records"][0]["s3"]["object"]["key"]
    put = upload(s3, key, ASTRONAUT)
    # The sample event describes the real sample photo.
    sample = SAMPLE_EVENT["Records"][0]
    assert (sample["eventVersion"], sample["eventSource"], sample["awsRegion"], sample["eventName"]) == \
        ("2.1", "aws:s3", "ap-northeast-2", "ObjectCreated:Put")
    assert sample["s3"]["object"]["size"] == len(ASTRONAUT)
    assert sample["s3"]["object"]["eTag"] == put["ETag"].strip('"')

    started = datetime.now(timezone.utc)
    assert invoke(SAMPLE_EVENT["Records"][0]) == {"records": 1, "ok": 1, "error": 0, "skipped": 0, "failed": 0}
    result = result_of(s3, key)
    assert set(result) == API_FIELDS | S3_FIELDS
    assert result["status"] == "ok"
    assert (result["bucket"], result["key"], result["version_id"]) == (BUCKET, key, None)
    assert result["etag"] == put["ETag"].strip('"')
    assert result["faces"], "the astronaut's face is found"
    box = result["faces"][0]["box"]
    assert box["width"] > 0 and box["height"] > 0
    assert 0 <= box["x"] < result["image"]["width"] and 0 <= box["y"] < result["image"]["height"]
    assert result["emotion"] in runtime.pipeline.model.classes
    assert result["model"]["sha256"] == runtime.pipeline.model.sha256
    processed = datetime.fromisoformat(result["processed_at"].replace("Z", "+00:00"))
    assert processed.tzinfo is not None and processed.utcoffset().total_seconds() == 0
    assert (processed - started).total_seconds() > -1
    # exactly the API's answer for these bytes
    assert without_s3_fields(result) == runtime.pipeline.analyse(ASTRONAUT)


def test_several_records_in_one_event(s3, fallback):
    fallback("off")
    photos = {"uploads/a.jpg": FACE, "uploads/b/c.jpg": FACE_64, "uploads/d.jpg": NO_FACE}
    for key, data in photos.items():
        upload(s3, key, data)
    summary = invoke(*(s3_record(s3, key) for key in photos))
    assert summary == {"records": 3, "ok": 3, "error": 0, "skipped": 0, "failed": 0}
    assert keys_under(s3, "results/") == sorted(handler.result_key(k) for k in photos)
    for key, data in photos.items():
        result = result_of(s3, key)
        assert result["key"] == key and result["status"] == "ok"
        assert without_s3_fields(result) == runtime.pipeline.analyse(data)


def test_keys_are_url_decoded_as_s3_sends_them(s3, fallback):
    fallback("off")
    keys = ["uploads/내 사진 (1)+copy.jpg", "uploads/my photo.jpg", "uploads/100% real & ok?=yes.jpg",
            "uploads/a+b.jpg", "uploads/já vu/ünï.jpg"]
    for key in keys:
        upload(s3, key, NO_FACE)
    records = [s3_record(s3, key) for key in keys]
    assert records[0]["s3"]["object"]["key"] == \
        "uploads/%EB%82%B4+%EC%82%AC%EC%A7%84+%281%29%2Bcopy.jpg"
    # sam local generate-event encodes the slash too
    records.append(s3_record(s3, keys[1], encode=lambda k: quote_plus(k, safe="")))
    summary = invoke(*records)
    assert summary["ok"] == len(records) and summary["failed"] == summary["skipped"] == 0
    assert keys_under(s3, "results/") == sorted(handler.result_key(k) for k in keys)
    for key in keys:
        assert result_of(s3, key)["key"] == key
    assert handler.result_key(keys[0]) == "results/uploads/내 사진 (1)+copy.jpg.json"


@pytest.mark.parametrize("data, code", [
    (b"hello, I am a text file, not a photo\n", "invalid_image"),
    (b"", "empty_image"),
    (ASTRONAUT[: len(ASTRONAUT) // 3][:200], "invalid_image"),   # a truncated JPEG header
    (gif(), "unsupported_image_format"),
])
def test_a_bad_file_gets_an_error_result_not_a_retry(s3, data, code):
    key = "uploads/not really.jpg"
    put = upload(s3, key, data)
    assert invoke(s3_record(s3, key)) == {"records": 1, "ok": 0, "error": 1, "skipped": 0, "failed": 0}
    result = result_of(s3, key)
    assert set(result) == API_FIELDS | S3_FIELDS | {"error"}
    assert result["status"] == "error"
    assert result["error"]["code"] == code and result["error"]["message"]
    assert (result["bucket"], result["key"], result["etag"]) == (BUCKET, key, put["ETag"].strip('"'))
    assert result["faces"] == [] and result["emotion"] is None


@pytest.mark.parametrize("size_in_record", [True, False], ids=["record-size", "head-object"])
def test_an_oversized_object_is_refused_without_downloading_it(s3, monkeypatch, size_in_record):
    monkeypatch.setenv("MAX_OBJECT_BYTES", "10000")
    monkeypatch.setattr(handler, "options", handler.Options.from_env(runtime.settings.max_image_bytes))
    key = "uploads/big.jpg"
    put = upload(s3, key, ASTRONAUT)
    rec = s3_record(s3, key, size=size_in_record)
    gets, heads = calls(handler.s3_client(), "GetObject"), calls(handler.s3_client(), "HeadObject")
    assert invoke(rec)["error"] == 1
    assert gets == [], "the object was not downloaded"
    assert len(heads) == (0 if size_in_record else 1)
    result = result_of(s3, key)
    assert result["status"] == "error" and result["error"]["code"] == "object_too_large"
    assert str(len(ASTRONAUT)) in result["error"]["message"] and "10000" in result["error"]["message"]
    assert result["etag"] == put["ETag"].strip('"')


def test_an_object_deleted_before_processing_is_skipped_and_the_others_processed(s3, fallback):
    fallback("off")
    for key in ("uploads/gone.jpg", "uploads/kept.jpg"):
        upload(s3, key, FACE_64)
    records = [s3_record(s3, "uploads/gone.jpg"), s3_record(s3, "uploads/kept.jpg")]
    s3.delete_object(Bucket=BUCKET, Key="uploads/gone.jpg")
    assert invoke(*records) == {"records": 2, "ok": 1, "error": 0, "skipped": 1, "failed": 0}
    assert keys_under(s3, "results/") == [handler.result_key("uploads/kept.jpg")]


def test_versioned_objects_are_read_at_the_version_of_the_record(s3, fallback):
    fallback("off")
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    key = "uploads/versioned.jpg"
    first = upload(s3, key, FACE_64)
    second = upload(s3, key, b"a text file replaced the photo")
    gone = upload(s3, "uploads/deleted-version.jpg", FACE_64)
    rec_first, rec_second = (s3_record(s3, key, version_id=v["VersionId"]) for v in (first, second))
    rec_gone = s3_record(s3, "uploads/deleted-version.jpg", version_id=gone["VersionId"])
    s3.delete_object(Bucket=BUCKET, Key="uploads/deleted-version.jpg", VersionId=gone["VersionId"])
    gets = calls(handler.s3_client(), "GetObject")

    assert invoke(rec_first, rec_gone)["ok"] == 1
    assert {g["Key"]: g.get("VersionId") for g in gets} == {key: first["VersionId"],
                                                             "uploads/deleted-version.jpg": gone["VersionId"]}
    result = result_of(s3, key)
    assert (result["status"], result["version_id"]) == ("ok", first["VersionId"])
    assert result["etag"] == first["ETag"].strip('"')
    assert keys_under(s3, "results/") == [handler.result_key(key)]
    # the newer version's own event overwrites the result with its answer
    assert invoke(rec_second)["error"] == 1
    assert result_of(s3, key)["version_id"] == second["VersionId"]


def test_a_burst_of_100_uploads_gets_exactly_100_results(s3, fallback):
    fallback("off")
    keys = [f"uploads/burst/photo {i:03d}.jpg" for i in range(100)]
    records = []
    for key in keys:
        upload(s3, key, FACE_64 if int(key[-7:-4]) % 10 == 0 else NO_FACE)
        records.append(s3_record(s3, key))
    started = time.perf_counter()
    for rec in records:   # one invocation per upload, as S3 sends them, in one warm process
        assert invoke(rec)["ok"] == 1
    elapsed = time.perf_counter() - started
    assert keys_under(s3, "results/") == sorted(handler.result_key(k) for k in keys)
    assert keys_under(s3, "uploads/") == sorted(keys), "nothing written under the upload prefix"
    assert all(result_of(s3, k)["status"] == "ok" for k in keys)
    print(f"100 uploads in {elapsed:.1f} s")


def test_processing_is_idempotent(s3, fallback):
    fallback("off")
    key = "uploads/again.jpg"
    upload(s3, key, FACE)
    rec = s3_record(s3, key)
    assert invoke(rec)["ok"] == 1
    first = result_of(s3, key)
    time.sleep(0.01)
    assert invoke(rec)["ok"] == 1
    second = result_of(s3, key)
    assert keys_under(s3, "results/") == [handler.result_key(key)]
    assert first["faces"], "a face, so the model's answer is compared too"
    assert {k: v for k, v in first.items() if k != "processed_at"} == \
        {k: v for k, v in second.items() if k != "processed_at"}
    assert first["processed_at"] <= second["processed_at"]


@pytest.mark.parametrize("key", ["results/uploads/a.jpg.json", "results/uploads/b.jpg",
                                 "elsewhere/a.jpg", "uploads/folder/"])
def test_keys_outside_the_upload_prefix_or_inside_results_are_skipped(s3, key):
    upload(s3, key, FACE_64)
    before = keys_under(s3, "")
    gets = calls(handler.s3_client(), "GetObject")
    assert invoke(s3_record(s3, key)) == {"records": 1, "ok": 0, "error": 0, "skipped": 1, "failed": 0}
    assert gets == [] and keys_under(s3, "") == before


def test_other_events_and_an_empty_event_are_skipped(s3):
    upload(s3, "uploads/a.jpg", FACE_64)
    rec = s3_record(s3, "uploads/a.jpg")
    rec["eventName"] = "ObjectRemoved:Delete"
    assert invoke(rec)["skipped"] == 1
    assert invoke({"s3": {"object": {}}})["skipped"] == 1      # malformed
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": BUCKET}
    answer = handler.lambda_handler(sqs_event(sqs_message(json.dumps(test_event))), context())
    assert answer == {"batchItemFailures": []}   # ignored, and not retried
    assert keys_under(s3, "results/") == []


def test_a_transient_failure_still_processes_the_others_then_raises(s3, fallback):
    fallback("off")
    keys = ["uploads/1.jpg", "uploads/2.jpg", "uploads/3.jpg"]
    for key in keys:
        upload(s3, key, NO_FACE)
    records = [s3_record(s3, key) for key in keys]
    client = handler.s3_client()

    def slow_down(params, **_):
        if params["Key"] == handler.result_key("uploads/2.jpg"):
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                               "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")

    client.meta.events.register("before-parameter-build.s3.PutObject", slow_down, unique_id="slow-down")
    with pytest.raises(handler.RecordsFailed, match=r"1 of 3 .*uploads/2\.jpg \(SlowDown\)"):
        invoke(*records)
    assert keys_under(s3, "results/") == [handler.result_key("uploads/1.jpg"), handler.result_key("uploads/3.jpg")]
    # Lambda's retry of the same event, once S3 recovered: everything there, nothing twice.
    client.meta.events.unregister("before-parameter-build.s3.PutObject", unique_id="slow-down")
    assert invoke(*records) == {"records": 3, "ok": 3, "error": 0, "skipped": 0, "failed": 0}
    assert keys_under(s3, "results/") == sorted(handler.result_key(k) for k in keys)


def test_no_face_falls_back_to_rekognition_as_the_api_does(s3, fallback, rekognition_stub):
    fallback("no-face")
    key = "uploads/coffee.jpg"
    upload(s3, key, NO_FACE)
    rekognition_stub.add_response("detect_faces", {"FaceDetails": [{
        "BoundingBox": {"Left": 0.25, "Top": 0.25, "Width": 0.5, "Height": 0.5},
        "Emotions": [{"Type": "CALM", "Confidence": 90.0}, {"Type": "HAPPY", "Confidence": 10.0}]}]})
    assert invoke(s3_record(s3, key))["ok"] == 1
    rekognition_stub.assert_no_pending_responses()
    result = result_of(s3, key)
    assert (result["status"], result["source"], result["emotion"]) == ("ok", "rekognition", "NEUTRAL")
    assert result["faces"][0]["box"] == {"x": 24, "y": 16, "width": 48, "height": 32}
    # Rekognition failing is not the file's fault and not worth a retry: ok, with fallback_error.
    rekognition_stub.add_client_error("detect_faces", "ThrottlingException", http_status_code=400)
    assert invoke(s3_record(s3, key))["ok"] == 1
    result = result_of(s3, key)
    assert result["status"] == "ok" and result["fallback_error"]["code"] == "ThrottlingException"


def test_result_key_and_prefix_settings(monkeypatch):
    assert handler.result_key("uploads/a b.jpg") == "results/uploads/a b.jpg.json"
    for upload_prefix, results_prefix in [("uploads/", "uploads/results/"), ("", ""), ("results/in/", "results/")]:
        monkeypatch.setenv("UPLOAD_PREFIX", upload_prefix)
        monkeypatch.setenv("RESULTS_PREFIX", results_prefix)
        if results_prefix == "":
            options = handler.Options.from_env(1000)     # empty RESULTS_PREFIX means the default
            assert options.results_prefix == "results/" and options.upload_prefix == ""
            continue
        with pytest.raises(ValueError):
            handler.Options.from_env(1000)
    monkeypatch.delenv("UPLOAD_PREFIX")
    monkeypatch.delenv("RESULTS_PREFIX")
    monkeypatch.delenv("MAX_OBJECT_BYTES", raising=False)
    assert handler.Options.from_env(1234) == handler.Options("uploads/", "results/", 1234)
