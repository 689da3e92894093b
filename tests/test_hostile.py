"""Anything a client can send gets a 200 or a 4xx the contract describes: never a 500,
never an exception out of the handler (issue #22, section 1).

Property tests (hypothesis, derandomized: the same examples every run) of request
parsing and image decoding; a seeded slice of local.fuzz's hostile events through the
handler in both payload versions (`make fuzz` runs 10,000); and one named test for each
bug the fuzzing found.  Rekognition is never called (FALLBACK_MODE off)."""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from emotion.errors import InputError
from emotion.images import DecodedImage, decode
from handlers import api, runtime
from handlers.http import Request, decode_base64, extract_image, parse_event, wants_jpeg
from local import fuzz
from local.events import LambdaContext, http_api_event, rest_api_event

MAX_BYTES, MAX_PIXELS = 6 * 1024 * 1024, 40_000_000
PROPERTY = settings(max_examples=1000, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
IMAGE_PROPERTY = settings(PROPERTY, max_examples=600)


@pytest.fixture(autouse=True)
def no_rekognition(monkeypatch):
    """The pipeline with FALLBACK_MODE=off, whatever the environment said."""
    monkeypatch.setattr(runtime.pipeline, "settings", dataclasses.replace(runtime.pipeline.settings,
                                                                          fallback_mode="off"))


def client_error(call, *args):
    """``call(*args)``'s result, or None when it raised an InputError with a 4xx status;
    any other exception fails the test."""
    try:
        return call(*args)
    except InputError as exc:
        assert 400 <= exc.status < 500, (exc.status, exc.code)
        assert exc.code and exc.message
        return None


def invoke(event) -> dict:
    answer = api.lambda_handler(event, LambdaContext())
    assert answer["statusCode"] < 500, answer["body"]
    return answer


def both(method: str, path: str, headers: dict, body: bytes = b"", query: str = "") -> list[dict]:
    """The same request as an HTTP API (2.0) and as a REST API (1.0) event."""
    rest = rest_api_event(method, path, headers, body)
    if query:
        rest["queryStringParameters"] = dict(p.split("=", 1) for p in query.split("&"))
    return [http_api_event(method, path, headers, body, query), rest]


def png(size: tuple[int, int], mode: str = "L", colour=128) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- (a) properties

JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=4),
                       max_leaves=10)
HOSTILE = JSONISH | st.binary(max_size=20) | st.sampled_from(["2.0", "POST", "/emotion", "$default", "prod"])
HEADERS = st.dictionaries(st.sampled_from(["content-type", "Content-Type", "accept", "Accept", "x"]) | st.text(max_size=10),
                          st.text(max_size=60) | st.sampled_from(["image/jpeg", "application/json",
                                                                  "multipart/form-data; boundary=x"]) | HOSTILE,
                          max_size=4)
EVENT = st.fixed_dictionaries({}, optional={
    "version": st.sampled_from(["2.0", "1.0", None, 2]) | HOSTILE,
    "rawPath": st.sampled_from(["/emotion", "/main", "/", "/prod/emotion"]) | HOSTILE,
    "path": st.sampled_from(["/emotion", "/openapi.json"]) | HOSTILE,
    "resource": HOSTILE,
    "httpMethod": st.sampled_from(["POST", "post", "GET", "HEAD"]) | HOSTILE,
    "rawQueryString": st.sampled_from(["annotate=1", "annotate=x", ""]) | HOSTILE,
    "queryStringParameters": st.dictionaries(st.text(max_size=10), st.text(max_size=10)) | HOSTILE,
    "headers": HEADERS | HOSTILE,
    "body": st.text(max_size=200) | HOSTILE,
    "isBase64Encoded": st.booleans() | HOSTILE,
    "requestContext": st.fixed_dictionaries({}, optional={
        "http": st.fixed_dictionaries({}, optional={"method": st.sampled_from(["POST", "GET"]) | HOSTILE,
                                                    "path": HOSTILE}) | HOSTILE,
        "stage": st.sampled_from(["$default", "prod"]) | HOSTILE}) | HOSTILE,
})


@PROPERTY
@given(EVENT | HOSTILE)
def test_parse_event_reads_any_event_or_says_400(event):
    request = client_error(parse_event, event)
    if request is not None:
        assert isinstance(request.method, str) and isinstance(request.path, str) and request.path
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in request.query.items())
        assert isinstance(request.body, bytes)
        assert request.content_type == request.content_type.lower()


GOOD_B64 = base64.b64encode(png((8, 8))).decode()
CONTENT_TYPES = ["", "image/jpeg", "image/png", "image/gif", "application/json", "application/problem+json",
                 "application/x-www-form-urlencoded", "multipart/form-data", "text/plain",
                 "application/octet-stream"]


@st.composite
def bodies(draw) -> Request:
    kind = draw(st.sampled_from(["binary", "json", "form", "multipart"]))
    boundary = draw(st.sampled_from(["x", "----b", "", "\"q\""]) | st.text(max_size=10))
    header = f"multipart/form-data; boundary={boundary}" if kind == "multipart" and draw(st.booleans()) else \
        draw(st.sampled_from(CONTENT_TYPES) | st.text(max_size=30))
    value = draw(st.sampled_from([GOOD_B64, "", "data:,", "data:image/png;base64," + GOOD_B64]) | st.text(max_size=80))
    if kind == "binary":
        body = draw(st.binary(max_size=300))
    elif kind == "json":
        body = draw(st.sampled_from([json.dumps({"image": value}).encode(), b"[" * 5000, b"{", b"null"])
                    | JSONISH.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=100))
    elif kind == "form":
        body = draw(st.sampled_from([f"image={value}".encode("utf-8", "surrogatepass"), b"image=%zz", b"&&=",
                                     b"image=a&image=" + GOOD_B64.encode()]) | st.binary(max_size=100))
    else:
        disposition = draw(st.sampled_from(['form-data; name="image"', 'form-data; name="image"; filename="a"',
                                            "form-data", "form-data; name*=UTF-8''image"]) | st.text(max_size=30))
        part = draw(st.sampled_from([GOOD_B64.encode(), png((4, 4)), b""]) | st.binary(max_size=100))
        body = (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode("utf-8", "surrogatepass") + part
                + f"\r\n--{boundary}--\r\n".encode("utf-8", "surrogatepass"))
        if draw(st.booleans()):
            body = draw(st.binary(max_size=50)) + body[draw(st.integers(0, len(body))):]
    return Request(method="POST", path="/emotion", content_type=header.split(";")[0].strip().lower(),
                   content_type_header=header, body=body, query={})


@PROPERTY
@given(bodies())
def test_extract_image_returns_bytes_or_says_4xx(request_):
    data = client_error(extract_image, request_)
    assert data is None or isinstance(data, bytes) and data


@PROPERTY
@given(st.text(max_size=300) | st.binary(max_size=300)
       | st.sampled_from([GOOD_B64, GOOD_B64[:-1], GOOD_B64 + "===", "data:" + GOOD_B64, "\ud800", " "]))
def test_decode_base64_returns_bytes_or_says_400(text):
    data = client_error(decode_base64, text)
    assert data is None or isinstance(data, bytes) and data


@PROPERTY
@given(st.dictionaries(st.sampled_from(["annotate", "x"]) | st.text(max_size=5), st.text(max_size=20)),
       st.text(max_size=100) | st.sampled_from(["image/jpeg;q=nan", "image/*;q=1e999", "image/jpeg;q=", ",;,;="]))
def test_wants_jpeg_answers_or_says_400(query, accept):
    request = Request(method="POST", path="/emotion", content_type="", content_type_header="", body=b"x",
                      query=query, accept=accept)
    assert client_error(wants_jpeg, request) in (True, False, None)


IMAGES = sorted({**fuzz.corpus().valid, **fuzz.corpus().modes, **fuzz.corpus().tiny,
                 **{f"exif-{k}": v for k, v in fuzz.corpus().exif.items()},
                 **fuzz.corpus().animated, **{f"other-{k}": v for k, v in fuzz.corpus().other.items()}}.items())


@st.composite
def image_bytes(draw) -> bytes:
    name, data = draw(st.sampled_from(IMAGES))
    how = draw(st.sampled_from(["as is", "truncated", "mutated", "random"]))
    if how == "truncated":
        return data[:draw(st.integers(1, max(1, len(data) - 1)))]
    if how == "mutated":
        out = bytearray(data)
        for at, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)),
                                       min_size=1, max_size=12)):
            out[at] = value
        return bytes(out)
    if how == "random":
        return draw(st.binary(min_size=1, max_size=500))
    return data


@IMAGE_PROPERTY
@given(image_bytes())
def test_decode_returns_an_image_or_says_4xx(data):
    image = client_error(decode, data, MAX_BYTES, MAX_PIXELS, 1280)
    if image is not None:
        assert isinstance(image, DecodedImage)
        assert image.rgb.ndim == 3 and image.rgb.shape[2] == 3 and image.rgb.dtype.name == "uint8"
        assert image.width >= 1 and image.height >= 1


# ---------------------------------------------------------------- (b) a seeded slice of local.fuzz

FUZZ_SLICE = 1200


def test_a_seeded_slice_of_hostile_events_gets_no_bad_answer():
    """local.fuzz's first FUZZ_SLICE cases of seed 1 (every kind, both payload versions):
    200s that follow the contract or 4xx Errors, none slower than 3 s."""
    summary = fuzz.run(FUZZ_SLICE, seed=1)
    assert summary["requests"] == FUZZ_SLICE
    assert set(summary["per_kind"]) == set(fuzz.KINDS)
    assert summary["bad_answers"] == 0, fuzz.summary_text(summary)


def test_the_fuzzer_is_seeded_and_replayable():
    def stable(case):   # without the request id and time events.py makes up
        event = json.loads(json.dumps(case.event, default=repr))
        if isinstance(event, dict) and isinstance(event.get("requestContext"), dict):
            for key in ("requestId", "time", "timeEpoch"):
                event["requestContext"].pop(key, None)
        return case.kind, case.version, json.dumps(event, sort_keys=True)
    assert stable(fuzz.generate(123, seed=7)) == stable(fuzz.generate(123, seed=7))
    assert [fuzz.generate(i, seed=7).kind for i in range(0, 400, 2)] == \
        [fuzz.generate(i, seed=8).kind for i in range(0, 400, 2)]   # the kind by the index, its content by the seed
    assert {fuzz.generate(i, seed=1).version for i in range(4)} == {"2.0", "1.0"}


# ---------------------------------------------------------------- (c) the bugs the fuzzing found

@pytest.mark.parametrize("depth", [1_000, 10_000, 100_000])
@pytest.mark.parametrize("shape", ["array", "object", "inside image"])
def test_deeply_nested_json_is_a_400(depth, shape):
    """json.loads raised RecursionError (not a ValueError) beyond ~1,000 levels: a 500."""
    text = {"array": "[" * depth + "]" * depth,
            "object": '{"a":' * depth + "1" + "}" * depth,
            "inside image": '{"image": ' + "[" * depth + "]" * depth + "}"}[shape]
    for event in both("POST", "/emotion", {"Content-Type": "application/json"}, text.encode()):
        answer = invoke(event)
        assert answer["statusCode"] == 400
        assert json.loads(answer["body"])["error"]["code"] in ("invalid_json", "missing_image")


ODD_FIELDS = [  # (where, value): each was a 500 (AttributeError, TypeError, ...) before
    ("requestContext.http", True), ("requestContext.http", "POST"), ("requestContext.http", [1]),
    ("requestContext", "x"), ("requestContext", []),
    ("headers", True), ("headers", ["content-type", "image/jpeg"]), ("headers", "content-type: image/jpeg"),
    ("rawPath", True), ("rawPath", 5), ("path", ["/emotion"]), ("resource", {}),
    ("httpMethod", None), ("httpMethod", 5), ("requestContext.http.method", None),
    ("requestContext.http.method", ["POST"]), ("requestContext.stage", 5),
    ("body", 5), ("body", 1.5), ("body", 2**70), ("body", [1, 2]), ("body", {"image": "x"}), ("body", True),
    ("isBase64Encoded", "true"), ("isBase64Encoded", "false"), ("isBase64Encoded", 1),
]


@pytest.mark.parametrize("where,value", ODD_FIELDS, ids=[f"{w}={v!r}"[:40] for w, v in ODD_FIELDS])
def test_event_fields_of_the_wrong_type_are_a_400_not_a_500(where, value):
    for event in both("POST", "/emotion", {"Content-Type": "image/jpeg"}, png((8, 8))):
        fuzz._set(event, where, value, delete=False)
        answer = invoke(event)
        assert answer["statusCode"] in (200, 400, 404, 405, 415), answer
        if answer["statusCode"] == 400 and where != "requestContext" and where != "requestContext.http":
            assert json.loads(answer["body"])["error"]["code"] in ("invalid_event", "invalid_body", "invalid_image",
                                                                   "missing_image")


def test_a_body_that_is_a_huge_number_is_refused_not_allocated():
    """`bytes(body)` on an int body allocated that many bytes (or raised OverflowError)."""
    for event in both("POST", "/emotion", {"Content-Type": "image/jpeg"}, b"x"):
        event["body"], event["isBase64Encoded"] = 10**12, False
        answer = invoke(event)
        assert answer["statusCode"] == 400
        assert json.loads(answer["body"])["error"]["code"] == "invalid_event"


@pytest.mark.parametrize("event", [None, [], "event", 0, 1.5, True, b"{}", [{"version": "2.0"}]])
def test_an_event_that_is_not_an_object_is_a_400(event):
    answer = invoke(event)
    assert answer["statusCode"] == 400
    assert json.loads(answer["body"])["error"]["code"] == "invalid_event"


def test_a_big_compressible_png_is_answered_within_3_s():
    """A 6000x6000 flat RGB PNG (120 kB; 36 of the 40 megapixels allowed) took 2.7-3.6 s
    here: decode copied the pixels twice for nothing (exif_transpose without an
    orientation, convert("RGB") of an RGB picture)."""
    data = png((6000, 6000), "RGB", (128, 128, 128))
    event = http_api_event("POST", "/emotion", {"Content-Type": "image/png"}, data)
    started = time.perf_counter()
    answer = invoke(event)
    elapsed = time.perf_counter() - started
    assert answer["statusCode"] == 200
    assert json.loads(answer["body"])["image"] == {"width": 6000, "height": 6000}
    assert elapsed < fuzz.SLOW_S, f"{elapsed:.2f} s"


def test_decode_still_turns_by_exif_and_converts_odd_modes():
    """The decode change keeps what it did: the EXIF turn, and RGB from any mode."""
    corpus = fuzz.corpus()
    turned = decode(corpus.exif[6], MAX_BYTES, MAX_PIXELS)
    assert (turned.width, turned.height) == (112, 96) and turned.reoriented and turned.rgb.shape == (96, 112, 3)
    plain = decode(corpus.exif[1], MAX_BYTES, MAX_PIXELS)
    assert (plain.width, plain.height) == (96, 112) and not plain.reoriented
    for name, data in corpus.modes.items():
        image = client_error(decode, data, MAX_BYTES, MAX_PIXELS)
        assert image is None or image.rgb.shape[2] == 3, name


# Photos of odd shapes: YuNet (emotion/faces.py, YuNetDetector._run) answers a garbage
# row (infinite box, score 1.0) when one side of its input is under 32 pixels, and
# _clipped's int(round(inf)) raised OverflowError; annotate() resized a photo more than
# 4,096 times longer than wide to 0 pixels (cv2.error).  Both 500s.
def test_photos_of_extreme_shapes_are_analysed_not_a_500():
    """The garbage depends on what the network saw before (it reads memory it did not
    write), so a grid of shapes, flat and noisy, in a row: before the fix about a third
    of these were 500s."""
    rng = np.random.default_rng(0)
    failed = []
    for long in (16, 64, 100, 500, 2000, 8000):
        for short in (1, 2, 3, 6, 12, 24, 32):
            for width, height in ((long, short), (short, long)):
                for noisy in (False, True):
                    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8) if noisy else \
                        np.full((height, width, 3), 128, np.uint8)
                    buffer = io.BytesIO()
                    Image.fromarray(pixels).save(buffer, format="PNG")
                    answer = api.lambda_handler(http_api_event("POST", "/emotion", {"Content-Type": "image/png"},
                                                               buffer.getvalue()), LambdaContext())
                    if answer["statusCode"] != 200:
                        failed.append((width, height, noisy, answer["statusCode"]))
    assert not failed, f"{len(failed)} of 168 shapes failed: {failed[:10]}"


@pytest.mark.parametrize("size", [(1, 40000), (40000, 1), (2, 9000)])
def test_annotating_a_very_long_thin_photo_is_not_a_500(size):
    for event in both("POST", "/emotion", {"Content-Type": "image/png"}, png(size), query="annotate=1"):
        answer = invoke(event)
        assert answer["statusCode"] == 200
        assert answer["headers"]["Content-Type"] == "image/jpeg"
        assert base64.b64decode(answer["body"]).startswith(b"\xff\xd8\xff")


def test_the_atheris_target_runs_on_its_seeds(tmp_path):
    """fuzz/atheris_api.py imports with or without atheris, and its target passes on
    the seeds it writes (sample pictures each way, odd fields) and on odd bytes."""
    import importlib.util
    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("atheris_api", ROOT / "fuzz" / "atheris_api.py")
    target = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(target)
    assert target.write_seeds(tmp_path) > 100
    for seed in sorted(tmp_path.iterdir())[::8]:
        target.one_input(seed.read_bytes())
    for data in (b"", b"\x00", b"\xff" * 64, bytes(range(256)), b"\x86\x00\xc5\xd3" + b"{" * 3000):
        target.one_input(data)
