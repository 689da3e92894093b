"""Annotated answers (emotion.annotate): the photo with every face's box and label drawn.

Drawn on the real sample photos with the real model, through the API handler (HTTP API
and REST API events), `make serve`'s local server and the S3 trigger (ANNOTATE).  Nothing
a retrained model would change is hard-coded: faces, emotions and colours are read from
what the pipeline itself answers.  Pixels are compared with a JPEG tolerance."""
from __future__ import annotations

import base64
import io
import json
import re
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from emotion import annotate as drawing
from emotion.images import DecodedImage, decode
from handlers import api, runtime
from local.events import LambdaContext, http_api_event, rest_api_event
from test_s3 import (BUCKET, calls, fallback, handler, invoke, keys_under, rekognition_stub, result_of,  # noqa: F401
                     s3, s3_record, upload)
from test_template import UPLOAD_KEYS, defaults, function_env, matches, s3_filters, template  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 40  # per channel, for colours that went through a JPEG


# ---- helpers ---------------------------------------------------------------------------

def jpeg_of(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def pixels_of(jpeg: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    return np.asarray(image.convert("RGB")).astype(int)


def plain(width: int, height: int) -> DecodedImage:
    """A dark grey picture, on which every colour of the palette stands out."""
    return decode(jpeg_of(Image.new("RGB", (width, height), (40, 40, 40))), 10**8, 10**8)


def face(x: int, y: int, width: int, height: int, emotion: str = "HAPPY", confidence: float = 0.9) -> dict:
    return {"box": {"x": x, "y": y, "width": width, "height": height}, "emotion": emotion,
            "confidence": confidence, "scores": {emotion: confidence}, "source": "local"}


def close(pixel, colour) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel) - np.asarray(colour)) <= TOLERANCE))


def out_box(box: dict, scale: float) -> tuple[int, int, int, int]:
    """A face's box (picture pixels) in pixels of the annotated output."""
    return (round(box["x"] * scale), round(box["y"] * scale),
            round((box["x"] + box["width"]) * scale), round((box["y"] + box["height"]) * scale))


def run_length(pixels: np.ndarray, colour, points) -> int:
    """How many of ``points`` (x, y), taken in order, are the colour before one is not."""
    n = 0
    for x, y in points:
        if not (0 <= y < pixels.shape[0] and 0 <= x < pixels.shape[1]) or not close(pixels[y, x], colour):
            break
        n += 1
    return n


def band_above(pixels: np.ndarray, box: tuple, colour) -> int:
    """Rows of the label's colour just above a box's top line, in the label's left margin."""
    x0, y0 = box[:2]
    thick = drawing.line_px(min(pixels.shape[:2]))
    return run_length(pixels, colour, [(x0 + 1, y) for y in range(y0 - thick, -1, -1)])


def assert_drawn(pixels: np.ndarray, faces: list[dict], scale: float) -> None:
    """Every face's box edges and label background are in its emotion's colour."""
    short = min(pixels.shape[:2])
    for f in faces:
        colour = drawing.colour_of(f["emotion"])
        x0, y0, x1, y1 = out_box(f["box"], scale)
        mid_y, mid_x = (y0 + y1) // 2, (x0 + x1) // 2
        left = np.median([pixels[y, x0] for y in range(mid_y - 2, mid_y + 3)], axis=0)
        top = np.median([pixels[y0, x] for x in range(mid_x - 2, mid_x + 3)], axis=0)
        assert close(left, colour) and close(top, colour), (f["emotion"], left, top, colour)
        assert band_above(pixels, (x0, y0), colour) >= drawing.text_px(y1 - y0, short), f


def respond(event: dict) -> tuple[int, dict, bytes]:
    """Status, headers and body bytes of the API's answer; the body is base64 exactly
    when it is the JPEG."""
    answer = api.lambda_handler(event, LambdaContext())
    body, jpeg = answer["body"], answer["headers"]["Content-Type"] == "image/jpeg"
    assert answer["isBase64Encoded"] is jpeg
    return answer["statusCode"], answer["headers"], base64.b64decode(body) if jpeg else body.encode("utf-8")


def post(data: bytes, query: str = "", path: str = "/emotion", **headers) -> tuple[int, dict, bytes]:
    headers = {"Content-Type": "image/jpeg", **{k.replace("_", "-"): v for k, v in headers.items()}}
    return respond(http_api_event("POST", path, headers, data, query))


def analysed(data: bytes) -> tuple[DecodedImage, dict]:
    image = runtime.pipeline.decode(data)
    return image, runtime.pipeline.analyse_image(image)


# ---- drawing -----------------------------------------------------------------------------

@pytest.mark.parametrize("photo", ["group_jpeg", "astronaut_jpeg"])
def test_every_face_is_boxed_and_labelled_in_its_emotions_colour(request, photo):
    image, result = analysed(request.getfixturevalue(photo))
    assert result["faces"]
    pixels = pixels_of(drawing.annotate(image, result["faces"]))
    assert pixels.shape[:2] == (image.height, image.width)
    assert_drawn(pixels, result["faces"], 1.0)


def test_different_emotions_get_different_colours():
    assert len(set(drawing.COLOURS.values())) == len(drawing.COLOURS)
    faces = [face(60, 100, 150, 180, "HAPPY"), face(400, 100, 150, 180, "SAD")]
    pixels = pixels_of(drawing.annotate(plain(640, 360), faces))
    assert_drawn(pixels, faces, 1.0)
    happy, sad = (pixels[190, f["box"]["x"]] for f in faces)
    assert not close(happy, drawing.colour_of("SAD")) and not close(sad, drawing.colour_of("HAPPY"))


def test_the_page_uses_the_same_palette():
    page = (ROOT / "function" / "web" / "index.html").read_text()
    found = re.search(r"const COLOURS = (\{.*?\});", page)
    assert found and json.loads(found.group(1)) == drawing.COLOURS


@pytest.mark.parametrize("size, full", [((320, 240), False), ((4000, 3000), False), ((4000, 3000), True)],
                         ids=["320px", "12MP", "12MP-full-decode"])
def test_labels_are_legible_on_small_and_large_photos(astronaut_jpeg, size, full):
    data = jpeg_of(Image.open(io.BytesIO(astronaut_jpeg)).resize(size))
    image, result = analysed(data)
    assert len(result["faces"]) == 1 and result["image"] == {"width": size[0], "height": size[1]}
    if full:  # every pixel decoded, so annotate itself scales the 12 MP picture down
        image = decode(data, 10**8, 10**8)
    jpeg = drawing.annotate(image, result["faces"])
    pixels = pixels_of(jpeg)
    height, width = pixels.shape[:2]
    assert max(width, height) <= drawing.MAX_SIDE
    assert abs(width / height - size[0] / size[1]) < 0.01
    assert len(jpeg) * 4 / 3 < 6 * 1024 * 1024  # base64 fits a Lambda response
    short, scale = min(width, height), width / size[0]
    x0, y0, x1, y1 = out_box(result["faces"][0]["box"], scale)
    text, thick = drawing.text_px(y1 - y0, short), drawing.line_px(short)
    need = 12 if short < 600 else 0.02 * short
    assert text >= need and thick >= 2
    colour = drawing.colour_of(result["faces"][0]["emotion"])
    mid_y = (y0 + y1) // 2
    assert sum(close(pixels[mid_y, x], colour) for x in range(x0 - 2 * thick, x0 + 2 * thick + 1)) >= 2
    assert need <= text <= band_above(pixels, (x0, y0), colour) <= 4 * text  # the label, not the photo
    assert_drawn(pixels, result["faces"], scale)


def test_a_small_face_in_a_large_photo_gets_a_legible_label():
    small = face(2000, 1500, 40, 40, "SURPRISE")
    pixels = pixels_of(drawing.annotate(plain(4000, 3000), [small]))
    assert pixels.shape[:2] == (1536, 2048)
    band = band_above(pixels, out_box(small["box"], 2048 / 4000), drawing.colour_of("SURPRISE"))
    assert 0.02 * 1536 <= band <= 0.2 * 1536


def test_labels_stay_inside_the_picture_at_its_edges():
    width, height = 800, 600
    middle, at_top, at_right = face(300, 250, 150, 300), face(100, 0, 150, 300), face(650, 250, 150, 300)
    pixels = pixels_of(drawing.annotate(plain(width, height), [middle, at_top, at_right]))
    colour = drawing.colour_of("HAPPY")
    thick = drawing.line_px(min(width, height))
    text = drawing.text_px(300, min(width, height))
    # At the top: the label inside the box's top, from the picture's first row down.
    assert run_length(pixels, colour, [(100 + thick + 1, y) for y in range(height)]) >= text

    # At the right: the whole label, as wide as the one in the middle, shifted left (the
    # row just above the box's top line is the label's bottom margin, free of letters).
    row = 250 - thick - 1
    mid = run_length(pixels, colour, [(x, row) for x in range(300, width)])
    right = run_length(pixels, colour, [(x, row) for x in range(width - 1, -1, -1)])
    assert mid > 150 and abs(right - mid) <= 3  # "Happy 90%" is wider than the box
    assert not close(pixels[row, width - right - 3], colour)


# ---- the API --------------------------------------------------------------------------

def assert_annotated(status: int, headers: dict, body: bytes, size: tuple[int, int], answer: dict) -> None:
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(body)).size == size
    assert headers["X-Face-Count"] == str(len(answer["faces"]))
    assert headers["X-Emotion"] == (answer["emotion"] or "none") and headers["X-Source"] == answer["source"]


def test_the_api_answers_the_annotated_photo_when_asked(group_jpeg):
    status, headers, body = post(group_jpeg)
    assert status == 200 and headers["Content-Type"] == "application/json"
    answer, size = json.loads(body), Image.open(io.BytesIO(group_jpeg)).size
    assert len(answer["faces"]) == 3
    for query in ("annotate=1", "annotate=true"):
        assert_annotated(*post(group_jpeg, query), size, answer)
    assert_annotated(*post(group_jpeg, "annotate=1", path="/main"), size, answer)
    assert_annotated(*post(group_jpeg, Accept="image/jpeg"), size, answer)
    rest = rest_api_event("POST", "/emotion", {"Content-Type": "image/jpeg"}, group_jpeg)
    rest["queryStringParameters"] = {"annotate": "1"}
    assert_annotated(*respond(rest), size, answer)


@pytest.mark.parametrize("query, accept", [("", "application/json, image/jpeg;q=0.5"), ("", "*/*"),
                                           ("annotate=0", "image/jpeg"), ("annotate=false", "image/jpeg"), ("", "")])
def test_the_api_answers_json_otherwise(astronaut_jpeg, query, accept):
    status, headers, body = post(astronaut_jpeg, query, **({"Accept": accept} if accept else {}))
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["faces"]


def test_a_bad_annotate_value_or_a_bad_image_is_a_json_error(astronaut_jpeg):
    status, headers, body = post(astronaut_jpeg, "annotate=maybe")
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "invalid_parameter"
    status, headers, body = post(b"this is not a picture", "annotate=1")
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "invalid_image"


def test_make_serve_sends_the_jpeg_bytes(astronaut_jpeg):
    from local.serve import make_server

    server = make_server("127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = requests.post(f"http://127.0.0.1:{server.server_port}/emotion?annotate=1", data=astronaut_jpeg,
                          headers={"Content-Type": "image/jpeg"}, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert r.content[:3] == b"\xff\xd8\xff" and int(r.headers["X-Face-Count"]) == 1
    assert Image.open(io.BytesIO(r.content)).size == (512, 512)


# ---- S3 (ANNOTATE) ----------------------------------------------------------------------

def test_s3_writes_the_annotated_copy_before_the_result(s3, fallback, monkeypatch, astronaut_jpeg, coffee_jpeg):  # noqa: F811
    fallback("off")
    monkeypatch.setattr(handler, "options", replace(handler.options, annotate=True))
    photos = {"uploads/astronaut.jpg": astronaut_jpeg, "uploads/coffee.jpg": coffee_jpeg}
    for key, data in {**photos, "uploads/bad.jpg": b"not an image"}.items():
        upload(s3, key, data)
    records = [s3_record(s3, key) for key in [*photos, "uploads/bad.jpg"]]
    puts = calls(handler.s3_client(), "PutObject")
    assert invoke(*records) == {"records": 3, "ok": 2, "error": 1, "skipped": 0, "failed": 0}
    written = [put["Key"] for put in puts]
    for key in photos:  # the picture first: whoever sees the JSON result finds it there
        assert written.index(f"results/{key}.annotated.jpg") < written.index(f"results/{key}.json")
    for key, data in photos.items():
        result = result_of(s3, key)
        assert result["status"] == "ok" and result["annotated_key"] == f"results/{key}.annotated.jpg"
        copy = s3.get_object(Bucket=BUCKET, Key=result["annotated_key"])
        assert copy["ContentType"] == "image/jpeg"
        assert Image.open(io.BytesIO(copy["Body"].read())).size == Image.open(io.BytesIO(data)).size
    bad = result_of(s3, "uploads/bad.jpg")
    assert bad["status"] == "error" and "annotated_key" not in bad
    assert keys_under(s3, "results/") == sorted(
        [f"results/{k}.json" for k in [*photos, "uploads/bad.jpg"]] + [f"results/{k}.annotated.jpg" for k in photos])


def test_s3_writes_no_annotated_copy_by_default(s3, fallback, monkeypatch, astronaut_jpeg):  # noqa: F811
    fallback("off")
    monkeypatch.setattr(handler, "options", replace(handler.options, annotate=False))
    upload(s3, "uploads/a.jpg", astronaut_jpeg)
    assert invoke(s3_record(s3, "uploads/a.jpg"))["ok"] == 1
    assert "annotated_key" not in result_of(s3, "uploads/a.jpg")
    assert keys_under(s3, "results/") == ["results/uploads/a.jpg.json"]


@pytest.mark.parametrize("value, expected", [("true", True), ("false", False), ("TRUE", True), (" False ", False),
                                             ("yes", ValueError), ("1", ValueError)])
def test_annotate_setting(monkeypatch, value, expected):
    for name in ("UPLOAD_PREFIX", "RESULTS_PREFIX", "MAX_OBJECT_BYTES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANNOTATE", value)
    if expected is ValueError:
        with pytest.raises(ValueError, match="ANNOTATE"):
            handler.Options.from_env(1000)
    else:
        assert handler.Options.from_env(1000).annotate is expected


@pytest.mark.parametrize("upload_prefix", ["uploads/", "photos/in/"])
def test_an_annotated_copy_never_triggers_the_function(template, defaults, monkeypatch, upload_prefix):  # noqa: F811
    params = {**defaults, "UploadPrefix": upload_prefix, "Annotate": "true"}
    assert "true" in template["Parameters"]["Annotate"]["AllowedValues"]
    for name, value in function_env(template, "EmotionS3Function", params).items():
        if name in ("UPLOAD_PREFIX", "RESULTS_PREFIX", "MAX_OBJECT_BYTES", "ANNOTATE"):
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(handler, "options", handler.Options.from_env(handler.settings.max_image_bytes))
    assert handler.options.annotate and handler.options.upload_prefix == upload_prefix
    filters = s3_filters(template, params)

    def triggered_by(key: str) -> list[str]:
        return [name for name, (prefix, suffix) in filters.items() if matches(key, prefix, suffix)]

    samples = [upload_prefix + key for key in UPLOAD_KEYS]
    samples += [prefix + "photo" + suffix for prefix, suffix in filters.values()]
    for key in samples:
        assert len(triggered_by(key)) == 1, key
        for made in (handler.annotated_key(key), handler.annotated_key(handler.result_key(key)),
                     handler.annotated_key(handler.annotated_key(key))):
            assert triggered_by(made) == [], (key, made)
            assert made.startswith(handler.options.results_prefix)  # and the handler would skip it
