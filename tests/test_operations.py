"""Operating the service (issue 22): the guard on the paid fallback (FALLBACK_MAX_PER_MINUTE,
emotion.pipeline.FallbackBudget) and the one structured log line per request.

Rekognition is behind botocore's Stubber (nothing reaches the network), S3 is moto's;
the model is the real one.  The budget's clock is injected: no test sleeps."""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import sys
import threading

import pytest
from botocore.stub import Stubber
from conftest import EVENTS, IMAGES
from PIL import Image

from emotion import rekognition
from emotion.config import Settings
from emotion.pipeline import BUDGET_EXCEEDED, FallbackBudget, Pipeline
from handlers import api, runtime
from handlers.http import extract_image, parse_event
from local.events import LambdaContext, http_api_event

REKOGNITION_FACE = {
    "BoundingBox": {"Width": 0.25, "Height": 0.5, "Left": 0.5, "Top": 0.25},
    "Confidence": 99.9,
    "Emotions": [{"Type": "SURPRISED", "Confidence": 80.0}, {"Type": "CALM", "Confidence": 20.0}],
}
TIMINGS = ("decode_ms", "detect_ms", "classify_ms", "fallback_ms")


class Clock:
    """time.monotonic as the test wants it."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def invoke(event: dict) -> tuple[int, dict]:
    answer = api.lambda_handler(event, LambdaContext())
    return answer["statusCode"], json.loads(answer["body"])


def post(body: bytes, content_type: str = "image/jpeg") -> tuple[int, dict]:
    return invoke(http_api_event("POST", "/emotion", {"Content-Type": content_type}, body))


@pytest.fixture
def budgeted(monkeypatch):
    """The API handler's pipeline with a budget of ``per_minute`` calls, on a clock the
    test moves (the loaded model is reused); returns (pipeline, clock)."""
    def use(per_minute: int, **changes) -> tuple[Pipeline, Clock]:
        clock = Clock()
        settings = dataclasses.replace(runtime.settings, fallback_max_per_minute=per_minute, **changes)
        pipe = Pipeline(settings, model=runtime.pipeline.model, clock=clock)
        monkeypatch.setattr(api, "pipeline", pipe)
        return pipe, clock
    return use


@pytest.fixture
def rekognition_calls():
    """The pipeline's Rekognition client under a Stubber, and the list of DetectFaces
    calls it was asked to make (an unqueued one would fail the test's expectations)."""
    s = runtime.settings
    client = rekognition.client(s.rekognition_region, s.rekognition_connect_timeout,
                                s.rekognition_read_timeout, s.rekognition_max_attempts)
    calls: list[int] = []

    def seen(**_):
        calls.append(1)
    client.meta.events.register("before-parameter-build.rekognition.DetectFaces", seen)
    try:
        with Stubber(client) as stubber:
            yield stubber, calls
            stubber.assert_no_pending_responses()
    finally:
        client.meta.events.unregister("before-parameter-build.rekognition.DetectFaces", seen)


def emf_metrics(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if '"_aws"' in line]


# ---- the setting ---------------------------------------------------------------------

def test_fallback_max_per_minute_setting(monkeypatch):
    monkeypatch.delenv("FALLBACK_MAX_PER_MINUTE", raising=False)
    assert Settings.from_env().fallback_max_per_minute == 60 == Settings().fallback_max_per_minute
    for text, value in (("3", 3), (" 0 ", 0), ("600", 600), ("", 60)):
        monkeypatch.setenv("FALLBACK_MAX_PER_MINUTE", text)
        assert Settings.from_env().fallback_max_per_minute == value, text
    for bad in ("-1", "1.5", "ten", "1e3"):
        monkeypatch.setenv("FALLBACK_MAX_PER_MINUTE", bad)
        with pytest.raises(ValueError, match="FALLBACK_MAX_PER_MINUTE must be a whole number >= 0"):
            Settings.from_env()


# ---- the budget itself -----------------------------------------------------------------

def test_the_budget_is_a_sliding_minute():
    clock = Clock()
    budget = FallbackBudget(3, clock)
    assert [budget.try_acquire() for _ in range(2)] == [None, None]
    clock.advance(20)
    assert budget.try_acquire() is None
    assert budget.try_acquire() == 40.0 and budget.used() == 3  # the first two calls are 20 s old
    clock.advance(39.9)
    assert budget.try_acquire() == pytest.approx(0.1)            # refusals are not counted
    clock.advance(0.1)
    assert budget.try_acquire() is None and budget.used() == 2   # 60 s after the first two: both gone
    assert budget.try_acquire() is None and budget.try_acquire() > 0
    clock.advance(60)
    assert budget.used() == 0


def test_the_budget_holds_across_threads():
    budget = FallbackBudget(50, Clock())
    granted = []
    start = threading.Barrier(8)

    def work():
        start.wait()
        granted.extend(1 for _ in range(100) if budget.try_acquire() is None)
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 50 == budget.used()


def test_a_zero_budget_never_grants():
    budget = FallbackBudget(0, Clock())
    assert budget.try_acquire() == float("inf")
    assert "0 calls per minute" in budget.exceeded(float("inf"))["message"]
    with pytest.raises(ValueError):
        FallbackBudget(-1)


# ---- the budget in the API -------------------------------------------------------------

def test_a_budget_of_3_lets_3_of_5_no_face_requests_ask_rekognition(budgeted, rekognition_calls, coffee_jpeg,
                                                                     capsys):
    stubber, calls = rekognition_calls
    _, clock = budgeted(3)
    for _ in range(3):
        stubber.add_response("detect_faces", {"FaceDetails": [REKOGNITION_FACE]},
                             {"Image": {"Bytes": coffee_jpeg}, "Attributes": ["EMOTIONS"]})
    answers = []
    for _ in range(5):
        status, body = post(coffee_jpeg)
        assert status == 200
        answers.append(body)
        clock.advance(1)
    assert len(calls) == 3
    assert [a["source"] for a in answers] == ["rekognition"] * 3 + ["none"] * 2
    assert [a.get("fallback_error", {}).get("code") for a in answers] == [None] * 3 + [BUDGET_EXCEEDED] * 2
    for refused in answers[3:]:
        assert refused["faces"] == [] and refused["emotion"] is None   # the local answer
        assert set(refused["fallback_error"]) == {"code", "message"}   # the contract's shape
        message = refused["fallback_error"]["message"]
        assert "3 calls per minute" in message
    # The first call was at t=0, the refusals at t=3 and t=4: it resets in 57 and 56 s.
    assert "resets in 57 s" in answers[3]["fallback_error"]["message"]
    assert "resets in 56 s" in answers[4]["fallback_error"]["message"]
    emf = emf_metrics(capsys.readouterr().out)
    assert sum(m.get("FallbackBudgetExceeded", [0])[0] for m in emf) == 2
    assert not any("FallbackErrors" in m for m in emf)  # Rekognition did not fail: it was not asked

    # A minute after the first call, calls resume.
    clock.advance(60 - 5)
    stubber.add_response("detect_faces", {"FaceDetails": [REKOGNITION_FACE]})
    status, body = post(coffee_jpeg)
    assert (status, body["source"], len(calls)) == (200, "rekognition", 4)
    assert "fallback_error" not in body


def test_a_budget_of_0_never_calls_rekognition(budgeted, rekognition_calls, coffee_jpeg):
    _, calls = rekognition_calls  # nothing queued
    _, clock = budgeted(0)
    for _ in range(3):
        status, body = post(coffee_jpeg)
        assert status == 200 and body["source"] == "none"
        assert body["fallback_error"]["code"] == BUDGET_EXCEEDED
        clock.advance(3600)
    assert calls == []


def test_failed_calls_count_in_the_budget(budgeted, rekognition_calls, coffee_jpeg):
    stubber, calls = rekognition_calls
    budgeted(2)
    stubber.add_client_error("detect_faces", "ThrottlingException", "Rate exceeded", 400)
    stubber.add_client_error("detect_faces", "InternalServerError", "oops", 500)
    codes = [post(coffee_jpeg)[1]["fallback_error"]["code"] for _ in range(3)]
    assert codes == ["ThrottlingException", "InternalServerError", BUDGET_EXCEEDED]
    assert len(calls) == 2


def test_low_confidence_mode_counts_the_same(budgeted, rekognition_calls, astronaut_jpeg):
    stubber, calls = rekognition_calls
    _, clock = budgeted(2, fallback_mode="low-confidence", confidence_threshold=1.01)  # never sure
    for _ in range(2):
        stubber.add_response("detect_faces", {"FaceDetails": [REKOGNITION_FACE]})
    answers = [post(astronaut_jpeg)[1] for _ in range(3)]
    assert len(calls) == 2
    assert [a["source"] for a in answers] == ["rekognition", "rekognition", "local"]
    assert answers[2]["fallback_error"]["code"] == BUDGET_EXCEEDED
    assert len(answers[2]["faces"]) == 1 and answers[2]["emotion"] == "HAPPY"  # her local answer
    clock.advance(60)
    stubber.add_response("detect_faces", {"FaceDetails": [REKOGNITION_FACE]})
    assert post(astronaut_jpeg)[1]["source"] == "rekognition" and len(calls) == 3


def test_a_confident_answer_spends_nothing(budgeted, rekognition_calls, astronaut_jpeg):
    _, calls = rekognition_calls
    pipe, _ = budgeted(1)
    for _ in range(3):
        assert post(astronaut_jpeg)[1]["source"] == "local"
    assert calls == [] and pipe.fallback_budget.used() == 0


# ---- one log line per request, never the image ------------------------------------------

@pytest.fixture
def log_lines(capsys, monkeypatch):
    """The JSON lines the handlers print from now on (Powertools' handler keeps the
    stdout it found at import, so it is pointed at whatever sys.stdout is when it
    writes: capsys's during the test); call to read them."""
    class CurrentStdout:
        def write(self, text: str) -> int:
            return sys.stdout.write(text)

        def flush(self) -> None:
            sys.stdout.flush()
    monkeypatch.setattr(runtime.logger.registered_handler, "stream", CurrentStdout())

    def read() -> tuple[str, list[dict]]:
        out = capsys.readouterr().out
        return out, [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return read


API_EVENTS = (sorted(p.name for p in EVENTS.glob("http-api-*.json"))
              + sorted(p.name for p in EVENTS.glob("rest-api-*.json")))
BAD_EVENTS = sorted(p.name for p in EVENTS.glob("bad-*.json"))


def assert_numbers(line: dict, *names: str) -> None:
    for name in names:
        assert isinstance(line.get(name), (int, float)) and not isinstance(line[name], bool), (name, line)


class Secrets:
    """Every 64-character window of some base64 (and hex, and repr) texts, and every
    32-byte run of some raw bytes: found in a log in one pass, through aligned blocks
    (any 64-character match contains one aligned 32-character block of the source)."""

    def __init__(self):
        self.texts: list[str] = []
        self.blocks: dict[str, int] = {}
        self.raw: list[bytes] = []
        self.raw_blocks: dict[bytes, int] = {}

    def add_bytes(self, data: bytes) -> None:
        for shift in range(3):  # base64 of the bytes from any offset
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                self.add_text(encode(data[shift:]).decode("ascii"))
        self.add_text(data.hex())
        self.add_text(repr(data)[2:-1])
        self.raw.append(data)
        for k in range(0, len(data) - 15, 16):
            self.raw_blocks.setdefault(data[k:k + 16], len(self.raw) - 1)

    def add_text(self, text: str) -> None:
        self.texts.append(text)
        for k in range(0, len(text) - 31, 32):
            self.blocks.setdefault(text[k:k + 32], len(self.texts) - 1)

    def found_in(self, log: str) -> str | None:
        for i in range(len(log) - 31):
            source = self.blocks.get(log[i:i + 32])
            if source is not None:
                for j in range(max(0, i - 31), i + 1):
                    if log[j:j + 64] in self.texts[source]:
                        return log[j:j + 64]
        # raw bytes, written as they are or decoded as latin-1 (text that is not: '?')
        for raw in (log.encode("utf-8", "surrogateescape"), log.encode("latin-1", "replace")):
            for i in range(len(raw) - 15):
                source = self.raw_blocks.get(raw[i:i + 16])
                if source is not None:
                    for j in range(max(0, i - 15), i + 1):
                        if raw[j:j + 32] in self.raw[source]:
                            return repr(raw[j:j + 32])
        return None


def test_the_leak_finder_finds_leaks(astronaut_jpeg):
    secrets = Secrets()
    secrets.add_bytes(astronaut_jpeg)
    b64 = base64.b64encode(astronaut_jpeg).decode()
    assert secrets.found_in('{"message": "x", "image": "' + b64[1000:1064] + '"}')
    assert secrets.found_in("junk " + base64.b64encode(astronaut_jpeg[5001:5100]).decode())
    assert secrets.found_in(str(astronaut_jpeg[3000:3040]))
    assert secrets.found_in(astronaut_jpeg[7000:7040].decode("latin-1"))
    assert secrets.found_in(astronaut_jpeg[100:140].hex())
    assert not secrets.found_in('{"message": "x", "image": "' + b64[1000:1063] + '"}')


def test_one_log_line_per_api_request_with_its_numbers_and_never_the_image(log_lines, rekognition_calls,
                                                                          astronaut_jpeg):
    stubber, calls = rekognition_calls
    stubber.add_client_error("detect_faces", "ThrottlingException", "Rate exceeded", 400)  # the no-face event
    secrets = Secrets()
    secrets.add_bytes(astronaut_jpeg)
    expected = []
    for name in API_EVENTS + BAD_EVENTS:
        event = json.loads((EVENTS / name).read_text())
        body = event.get("body") or ""
        if len(body) >= 64:
            secrets.add_text(body)
        try:  # the image inside the request, however it came
            secrets.add_bytes(extract_image(parse_event(event)))
        except Exception:  # noqa: BLE001 -- the bad events have none
            pass
        answer = api.lambda_handler(event, LambdaContext())
        expected.append((name, answer["statusCode"], json.loads(answer["body"])))
    # an annotated answer: its picture is not logged either
    event = http_api_event("POST", "/emotion", {"Content-Type": "image/jpeg"}, astronaut_jpeg, query="annotate=1")
    event["queryStringParameters"] = {"annotate": "1"}
    drawn = api.lambda_handler(event, LambdaContext())
    assert drawn["headers"]["Content-Type"] == "image/jpeg"
    secrets.add_bytes(base64.b64decode(drawn["body"]))
    out, lines = log_lines()
    assert len(calls) == 1

    requests = [line for line in lines if line.get("message") in ("analysed", "rejected")]
    assert len(requests) == len(expected) + 1, [line.get("message") for line in lines]
    ids = [line.get("function_request_id") for line in requests]
    assert all(ids) and len(set(ids)) == len(ids), "one line per request, each with its request id"
    for line, (name, status, body) in zip(requests, expected):
        assert line["status"] == status, name
        assert_numbers(line, "bytes", "total_ms")
        if status == 200:
            assert line["message"] == "analysed", name
            assert_numbers(line, "image_bytes", "width", "height", "faces", *TIMINGS, "annotate_ms")
            assert (line["width"], line["height"]) == (body["image"]["width"], body["image"]["height"])
            assert line["faces"] == len(body["faces"]) and line["source"] == body["source"]
            assert line["annotated"] is False and line["annotate_ms"] == 0
            assert line.get("fallback_error") == body.get("fallback_error", {}).get("code"), name
            assert line["detect_ms"] > 0 and line["decode_ms"] > 0
            assert line["bytes"] >= line["image_bytes"] > 0
            assert line["total_ms"] >= line["decode_ms"] + line["detect_ms"] + line["classify_ms"]
        else:
            assert line["message"] == "rejected", name
            assert line["code"] == body["error"]["code"], name
        assert line["path"] and line["method"]
    no_face = requests[API_EVENTS.index("http-api-no-face.json")]
    assert no_face["fallback_error"] == "ThrottlingException" and no_face["fallback_ms"] > 0
    assert requests[API_EVENTS.index("http-api-jpeg.json")]["fallback_ms"] == 0
    annotated = requests[-1]
    assert annotated["annotated"] is True and annotated["annotate_ms"] > 0
    assert annotated["faces"] == 1

    leak = secrets.found_in(out)
    assert leak is None, f"the log holds part of an image: {leak!r}"


def test_the_s3_handler_logs_the_same_fields(log_lines, rekognition_calls, monkeypatch):
    import boto3
    from moto import mock_aws

    from handlers import s3 as handler
    from local.events import sqs_event, sqs_message

    stubber, calls = rekognition_calls
    stubber.add_response("detect_faces", {"FaceDetails": []})
    bucket = "emotion-uploads-test"
    photos = {"uploads/astronaut.jpg": (IMAGES / "astronaut.jpg").read_bytes(),
              "uploads/group.jpg": (IMAGES / "group.jpg").read_bytes()}
    buffer = io.BytesIO()
    Image.open(IMAGES / "coffee.jpg").convert("RGB").crop((0, 0, 300, 200)).save(buffer, "JPEG", quality=90)
    photos["uploads/coffee.jpg"] = buffer.getvalue()   # no face: Rekognition is asked
    photos["uploads/notes.jpg"] = b"not an image at all, only some text"  # rejected
    secrets = Secrets()
    for data in photos.values():
        secrets.add_bytes(data)
    with mock_aws():
        monkeypatch.setattr(handler, "_client", None)
        s3 = boto3.client("s3", region_name="ap-northeast-2")
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "ap-northeast-2"})
        records = []
        for key, data in photos.items():
            s3.put_object(Bucket=bucket, Key=key, Body=data)
            records.append({"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket},
                                                                     "object": {"key": key, "size": len(data)}}})
        event = sqs_event(*(sqs_message(json.dumps({"Records": [rec]})) for rec in records))
        assert handler.lambda_handler(event, LambdaContext()) == {"batchItemFailures": []}
    out, lines = log_lines()
    assert len(calls) == 1
    by_key = {}
    for line in lines:
        if line.get("message") in ("analysed", "rejected"):
            assert line["key"] not in by_key, "one line per photo"
            by_key[line["key"]] = line
    assert set(by_key) == set(photos)
    for key, line in by_key.items():
        assert line["function_request_id"]
        assert line["bytes"] == len(photos[key])
        if key == "uploads/notes.jpg":
            assert line["message"] == "rejected" and line["code"] == "invalid_image"
            continue
        assert line["message"] == "analysed"
        assert_numbers(line, "width", "height", "faces", *TIMINGS)
        assert line["detect_ms"] > 0 and line["decode_ms"] > 0
    assert by_key["uploads/group.jpg"]["faces"] == 3 and by_key["uploads/group.jpg"]["width"] == 1280
    assert by_key["uploads/coffee.jpg"]["source"] == "none" and by_key["uploads/coffee.jpg"]["fallback_ms"] > 0
    leak = secrets.found_in(out)
    assert leak is None, f"the log holds part of an image: {leak!r}"
