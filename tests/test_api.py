"""The API handler on the sample events and on hand-made requests, with the real model.
Rekognition is stubbed with botocore's Stubber, which checks each request against
the real API model; nothing reaches the network."""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import os

import numpy as np
import pytest
from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError
from botocore.stub import Stubber
from conftest import EVENTS
from PIL import Image

from emotion import rekognition
from emotion.faces import Box, Face
from emotion.images import decode
from emotion.config import Settings
from emotion.model import CLASSES, PRECISIONS, load_model
from emotion.pipeline import Pipeline
from handlers import api, runtime
from local.events import LambdaContext, http_api_event
from training.common import DEFAULT_DATA, PUBLIC_TEST, fixed_sample, load_split

# The face of the astronaut portrait (events/images/astronaut.jpg, 512x512) is centred
# near (225, 113); a box on her face must contain that point and be face-sized.
ASTRONAUT_FACE = (225, 113)


def invoke(event: dict) -> tuple[int, dict]:
    answer = api.lambda_handler(event, LambdaContext())
    assert answer["headers"]["Content-Type"] == "application/json"
    return answer["statusCode"], json.loads(answer["body"])


def post(body: bytes, content_type: str = "image/jpeg", path: str = "/emotion") -> tuple[int, dict]:
    return invoke(http_api_event("POST", path, {"Content-Type": content_type}, body))


def contains(box: dict, point: tuple[int, int]) -> bool:
    return box["x"] <= point[0] <= box["x"] + box["width"] and box["y"] <= point[1] <= box["y"] + box["height"]


def assert_answer_schema(body: dict) -> None:
    assert set(body) >= {"emotion", "faces", "source", "image", "model"}
    assert body["model"] == {"name": "resnet9", "sha256": api.pipeline.model.sha256,  # the answering pipeline's
                             "precision": api.pipeline.model.precision, "flip_average": api.pipeline.model.flip}
    for face in body["faces"]:
        assert set(face) >= {"box", "emotion", "confidence", "scores", "source"}
        assert set(face["box"]) == {"x", "y", "width", "height"}
        assert face["emotion"] == max(face["scores"], key=face["scores"].get)
        assert face["confidence"] == face["scores"][face["emotion"]]
    if body["faces"]:
        assert body["emotion"] == max(body["faces"], key=lambda f: f["confidence"])["emotion"]
    else:
        assert body["emotion"] is None


@pytest.fixture
def use_pipeline(monkeypatch):
    """Run the handler with other settings, reusing the loaded model."""
    def use(model=None, **changes) -> Pipeline:
        pipe = Pipeline(dataclasses.replace(runtime.settings, **changes), model=model or runtime.pipeline.model)
        monkeypatch.setattr(api, "pipeline", pipe)
        return pipe
    return use


@pytest.fixture
def stubbed_rekognition():
    """The Rekognition client the pipeline will use, under a Stubber."""
    s = runtime.settings
    client = rekognition.client(s.rekognition_region, s.rekognition_connect_timeout,
                                s.rekognition_read_timeout, s.rekognition_max_attempts)
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


REKOGNITION_FACE = {
    "BoundingBox": {"Width": 0.25, "Height": 0.5, "Left": 0.5, "Top": 0.25},
    "Confidence": 99.9,
    "Emotions": [{"Type": "CALM", "Confidence": 10.0}, {"Type": "SURPRISED", "Confidence": 80.0},
                 {"Type": "CONFUSED", "Confidence": 5.0}, {"Type": "HAPPY", "Confidence": 5.0}],
}


# ---- the sample events -----------------------------------------------------------

@pytest.mark.parametrize("name", ["http-api-jpeg.json", "http-api-json.json", "http-api-json-data-url.json",
                                  "http-api-prototype-form.json", "http-api-multipart.json",
                                  "rest-api-prototype-form.json"])
def test_sample_events_find_the_astronauts_face(name):
    status, body = invoke(json.loads((EVENTS / name).read_text()))
    assert status == 200, body
    assert_answer_schema(body)
    assert body["source"] == "local"
    assert body["image"] == {"width": 512, "height": 512}
    [face] = body["faces"]
    assert contains(face["box"], ASTRONAUT_FACE)
    assert 60 <= face["box"]["width"] <= 160
    assert face["source"] == "local" and face["emotion"] in CLASSES
    assert abs(sum(face["scores"].values()) - 1) < 1e-3
    assert body["emotion"] == "HAPPY"  # she smiles


def test_group_photo_classifies_every_face_in_one_batch(monkeypatch):
    # events/images/group.jpg: the astronaut portrait pasted at 420 px (20,150), 360 px
    # mirrored (470,60) and 300 px (900,300) on a 1280x720 canvas.
    centres = [(204, 243), (672, 139), (1031, 366)]
    calls = []
    model = runtime.pipeline.model
    original = type(model).predict
    monkeypatch.setattr(type(model), "predict", lambda self, faces: calls.append(len(faces)) or original(self, faces))
    status, body = invoke(json.loads((EVENTS / "http-api-group.json").read_text()))
    assert status == 200
    assert_answer_schema(body)
    assert len(body["faces"]) == 3
    assert calls == [3]
    for centre in centres:
        assert sum(contains(f["box"], centre) for f in body["faces"]) == 1, centre
    assert [f["emotion"] for f in body["faces"]] == ["HAPPY"] * 3


# ---- the two precisions (MODEL_PRECISION) ---------------------------------------

@pytest.fixture(scope="module")
def both_precisions() -> dict:
    """The shipped model as each graph serves it, loaded the way the handler does."""
    return {p: load_model(runtime.settings.model_dir, p) for p in PRECISIONS}


def test_the_manifest_serves_int8_and_the_handler_runs_it():
    assert runtime.settings.model_precision == ""  # not set: the manifest's choice
    assert runtime.pipeline.model.precision == "int8" == runtime.pipeline.model.manifest["serves"]
    # its threads: one per CPU this process may use (not the host's count)
    threads = runtime.pipeline.model.session.get_session_options().intra_op_num_threads
    assert threads == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("name, n_faces", [("http-api-jpeg.json", 1), ("http-api-group.json", 3),
                                           ("http-api-face-crop.json", 1)])
def test_both_precisions_give_the_same_answers(use_pipeline, both_precisions, name, n_faces):
    event = json.loads((EVENTS / name).read_text())
    answers = {}
    for precision, model in both_precisions.items():
        use_pipeline(model=model)
        status, body = invoke(event)
        assert status == 200 and body["model"]["precision"] == precision, body
        assert_answer_schema(body)
        answers[precision] = body
    int8, fp32 = answers["int8"], answers["fp32"]
    assert len(int8["faces"]) == len(fp32["faces"]) == n_faces
    assert int8["emotion"] == fp32["emotion"] == "HAPPY"
    for a, b in zip(int8["faces"], fp32["faces"]):
        assert a["box"] == b["box"] and a["emotion"] == b["emotion"]
        assert max(abs(a["scores"][c] - b["scores"][c]) for c in CLASSES) < 0.05, (a["scores"], b["scores"])


def test_model_precision_setting(monkeypatch):
    monkeypatch.setenv("MODEL_PRECISION", "FP32 ")
    settings = Settings.from_env()
    assert settings.model_precision == "fp32"
    assert Pipeline(settings).model.precision == "fp32"
    monkeypatch.setenv("MODEL_PRECISION", "")
    assert Settings.from_env().model_precision == ""
    monkeypatch.setenv("MODEL_PRECISION", "fp16")
    with pytest.raises(ValueError, match="MODEL_PRECISION must be one of int8, fp32"):
        Settings.from_env()


def test_model_flip_average_setting(monkeypatch):
    """Empty: the manifest's choice (one pass per face); true: flip averaging, the answer
    saying which; anything else stops the function at init."""
    event = json.loads((EVENTS / "http-api-group.json").read_text())
    monkeypatch.delenv("MODEL_FLIP_AVERAGE", raising=False)
    assert Settings.from_env().model_flip_average is None
    assert runtime.pipeline.model.flip is False is runtime.pipeline.model.manifest["flip_average"]
    answers = {}
    for value in ("false", " TRUE"):
        monkeypatch.setenv("MODEL_FLIP_AVERAGE", value)
        settings = Settings.from_env()
        assert settings.model_flip_average is (value.strip().lower() == "true")
        monkeypatch.setattr(api, "pipeline", Pipeline(settings))  # the model loaded as the handler loads it
        status, body = invoke(event)
        assert status == 200 and body["model"]["flip_average"] is settings.model_flip_average, body
        assert_answer_schema(body)
        answers[value] = body
    # the same faces, the same emotions, scores a little different
    one, two = answers["false"]["faces"], answers[" TRUE"]["faces"]
    assert [f["box"] for f in one] == [f["box"] for f in two]
    assert 0 < max(abs(a["scores"][c] - b["scores"][c]) for a, b in zip(one, two) for c in CLASSES) < 0.2
    monkeypatch.setenv("MODEL_FLIP_AVERAGE", "yes")
    with pytest.raises(ValueError, match="MODEL_FLIP_AVERAGE must be true or false"):
        Settings.from_env()


@pytest.mark.parametrize("name, status, code", [
    ("bad-base64.json", 400, "invalid_base64"),
    ("bad-not-an-image.json", 400, "invalid_image"),
    ("bad-no-image.json", 400, "missing_image"),
    ("bad-media-type.json", 415, "unsupported_media_type"),
    ("bad-method.json", 405, "method_not_allowed"),
    ("bad-route.json", 404, "not_found"),
])
def test_bad_sample_events_get_clear_errors(name, status, code):
    got, body = invoke(json.loads((EVENTS / name).read_text()))
    assert (got, body["error"]["code"]) == (status, code)
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]


# ---- bad input made here ---------------------------------------------------------

def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def test_truncated_jpeg_is_400(astronaut_jpeg):
    status, body = post(astronaut_jpeg[:2000])
    assert (status, body["error"]["code"]) == (400, "invalid_image")


def test_gif_is_415(astronaut_jpeg):
    gif = _encode(Image.open(io.BytesIO(astronaut_jpeg)), "GIF")
    status, body = post(gif, "image/gif")
    assert (status, body["error"]["code"]) == (415, "unsupported_image_format")
    assert "JPEG" in body["error"]["message"]


def test_empty_body_and_empty_field_are_400():
    assert post(b"")[1]["error"]["code"] == "missing_image"
    assert post(b"image=", "application/x-www-form-urlencoded", "/main")[1]["error"]["code"] == "missing_image"
    status, body = post(b'["not", "an", "object"]', "application/json")
    assert (status, body["error"]["code"]) == (400, "missing_image")
    assert post(b"{not json", "application/json")[1]["error"]["code"] == "invalid_json"


def test_multipart_without_image_field_is_400(astronaut_jpeg):
    boundary = "XyZ"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + astronaut_jpeg + f"\r\n--{boundary}--\r\n".encode()
    status, answer = post(body, f"multipart/form-data; boundary={boundary}")
    assert (status, answer["error"]["code"]) == (400, "missing_image")


def test_too_large_image_is_413_and_states_the_limit(use_pipeline, astronaut_jpeg):
    use_pipeline(max_image_bytes=50_000)
    status, body = post(astronaut_jpeg)
    assert (status, body["error"]["code"]) == (413, "image_too_large")
    assert "50000" in body["error"]["message"]


def test_too_many_pixels_is_413(use_pipeline, astronaut_jpeg):
    use_pipeline(max_image_pixels=512 * 511)
    assert post(astronaut_jpeg)[0] == 413


def test_webp_png_and_bmp_are_read(astronaut_jpeg):
    img = Image.open(io.BytesIO(astronaut_jpeg))
    for fmt, ctype in (("PNG", "image/png"), ("WEBP", "image/webp"), ("BMP", "image/bmp")):
        status, body = post(_encode(img, fmt), ctype)
        assert status == 200, (fmt, body)
        assert contains(body["faces"][0]["box"], ASTRONAUT_FACE), fmt


def test_exif_orientation_is_applied(astronaut_jpeg):
    # Stored rotated by 90 degrees with EXIF orientation 6 ("rotate 90 CW to view"):
    # a viewer, and we, see the upright portrait, so the face is where it always is.
    img = Image.open(io.BytesIO(astronaut_jpeg)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    status, body = post(_encode(img, "JPEG", exif=exif.tobytes(), quality=92))
    assert status == 200
    [face] = body["faces"]
    assert contains(face["box"], ASTRONAUT_FACE)


def test_a_phone_photo_is_decoded_at_reduced_size_and_answered_in_its_own_pixels(astronaut_jpeg):
    # A 12-megapixel portrait photo as phones store it: 4032x3024 pixels lying on their
    # side, with EXIF orientation 6.  Upright it is 3024 wide and 4032 high, the face
    # at the top (the portrait scaled to 3024x3024, then the bottom mirrored).
    portrait = Image.open(io.BytesIO(astronaut_jpeg)).convert("RGB").resize((3024, 3024), Image.Resampling.BICUBIC)
    upright = Image.new("RGB", (3024, 4032))
    upright.paste(portrait, (0, 0))
    upright.paste(portrait.crop((0, 2016, 3024, 3024)).transpose(Image.Transpose.FLIP_TOP_BOTTOM), (0, 3024))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes(), quality=90)

    pipe = runtime.pipeline
    reduced = pipe.decode(data)
    full = decode(data, 1 << 30, 1 << 30)
    assert (full.width, full.height, full.scale) == (3024, 4032, 1.0)
    assert (reduced.width, reduced.height, reduced.scale) == (3024, 4032, 0.5)
    assert reduced.rgb.shape == (2016, 1512, 3)

    status, body = post(data)
    assert status == 200
    assert_answer_schema(body)
    assert body["image"] == {"width": 3024, "height": 4032}
    [face] = body["faces"]
    assert contains(face["box"], (ASTRONAUT_FACE[0] * 3024 // 512, ASTRONAUT_FACE[1] * 3024 // 512))
    # The same face, in the same place, as decoding every pixel would give.
    [at_full_size] = pipe.local_faces(full)
    for key in ("x", "y", "width", "height"):
        assert abs(face["box"][key] - at_full_size["box"][key]) <= 8, key
    assert face["emotion"] == at_full_size["emotion"]


def test_a_bug_is_a_500_without_a_trace(monkeypatch, astronaut_jpeg):
    def broken(image, timings=None):
        raise RuntimeError("secret internals")
    monkeypatch.setattr(api.pipeline, "analyse_image", broken)
    status, body = post(astronaut_jpeg)
    assert (status, body["error"]["code"]) == (500, "internal_error")
    assert "secret" not in json.dumps(body)


# ---- face crops: pictures that are a face, as FER2013's are ------------------------------

@pytest.fixture(scope="module")
def fer_crops() -> tuple[np.ndarray, np.ndarray]:
    """100 real FER2013 PublicTest faces (48x48 grey) and their labels."""
    return fixed_sample(*load_split(DEFAULT_DATA, PUBLIC_TEST), n=100, seed=3)


def test_face_crops_are_answered_as_the_model_classifies_them(stubbed_rekognition, fer_crops):
    client, _ = stubbed_rekognition  # no response queued: a Rekognition call would show
    calls = []
    client.meta.events.register("before-parameter-build.rekognition.DetectFaces", lambda **kw: calls.append(1))
    images, labels = fer_crops
    direct = runtime.pipeline.model.predict(list(images)).argmax(1)
    faces = []
    for pixels in images:
        status, body = post(_encode(Image.fromarray(pixels), "PNG"), "image/png")
        assert status == 200 and body["source"] == "local" and "fallback_error" not in body
        assert_answer_schema(body)
        assert len(body["faces"]) == 1
        faces.append(body["faces"][0])
    client.meta.events.unregister("before-parameter-build.rekognition.DetectFaces")
    assert not calls
    whole = [i for i, face in enumerate(faces) if face.get("whole_image")]
    assert len(whole) >= 95  # the rest: the detector found a face of less than 60 % of the crop
    for i in whole:
        assert faces[i]["box"] == {"x": 0, "y": 0, "width": 48, "height": 48}
        assert faces[i]["emotion"] == CLASSES[direct[i]]
    answered = np.mean([CLASSES.index(face["emotion"]) == label for face, label in zip(faces, labels)])
    assert answered >= np.mean(direct == labels) - 0.03 and answered >= 0.6, answered


def test_without_the_face_crop_rule_crops_are_answered_worse(use_pipeline, fer_crops):
    # YuNet finds a face in most 48x48 crops, but its box frames the face otherwise than
    # FER2013 does: the whole crop is the better face (BENCHMARKS.md, "Face crops").
    images, labels = fer_crops

    def right() -> tuple[int, int]:
        faces = [post(_encode(Image.fromarray(pixels), "PNG"), "image/png")[1]["faces"] for pixels in images]
        return sum(map(bool, faces)), sum(bool(f) and CLASSES.index(f[0]["emotion"]) == label
                                          for f, label in zip(faces, labels))

    use_pipeline(fallback_mode="off")
    answered, with_rule = right()
    use_pipeline(face_crop_max_side=0, fallback_mode="off")
    answered_without, without = right()
    assert answered == 100 and answered_without < 95
    assert with_rule >= without + 5, (with_rule, without)


def test_the_face_crop_event_is_the_astronauts_smile(capsys):
    status, body = invoke(json.loads((EVENTS / "http-api-face-crop.json").read_text()))
    invoke(json.loads((EVENTS / "http-api-jpeg.json").read_text()))  # a photo: no face crop
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert [m["FaceCrops"] for m in emf if "FaceCrops" in m] == [[1.0], [0.0]]  # what operators see
    assert status == 200
    assert_answer_schema(body)
    assert body["image"] == {"width": 48, "height": 48} and body["source"] == "local"
    [face] = body["faces"]
    assert face["whole_image"] is True and face["box"] == {"x": 0, "y": 0, "width": 48, "height": 48}
    assert face["emotion"] == "HAPPY"


def test_only_nearly_square_pictures_that_may_be_a_face_are_face_crops(use_pipeline, astronaut_jpeg, coffee_jpeg):
    use_pipeline(fallback_mode="off")
    astronaut, coffee = Image.open(io.BytesIO(astronaut_jpeg)), Image.open(io.BytesIO(coffee_jpeg))
    # A small portrait: the face found in it is a fifth of the picture, so it keeps its box.
    status, body = post(_encode(astronaut.resize((256, 256), Image.Resampling.LANCZOS), "JPEG", quality=90))
    [face] = body["faces"]
    assert "whole_image" not in face and contains(face["box"], (ASTRONAUT_FACE[0] // 2, ASTRONAUT_FACE[1] // 2))
    assert face["box"]["width"] < 0.6 * 256
    # No face: a small square picture is taken to be a face crop, and says so; a larger
    # one in which a second look finds no face filling it, or a small one wider than
    # 1:1.3, is not.
    square = coffee.crop((200, 100, 400, 300))
    [face] = post(_encode(square, "JPEG", quality=90))[1]["faces"]
    assert face["whole_image"] is True and face["box"] == {"x": 0, "y": 0, "width": 200, "height": 200}
    assert post(_encode(coffee.crop((150, 50, 450, 350)), "JPEG", quality=90))[1]["faces"] == []
    assert post(_encode(coffee.resize((240, 160)), "JPEG", quality=90))[1]["faces"] == []


def test_larger_tight_crops_are_face_crops_when_the_face_fills_them(use_pipeline, fer_crops):
    # 320x320: over FACE_CROP_MAX_SIDE, so a crop is a face crop only when the face
    # found fills it, or a second look with a border around it finds one that does.
    def faces_of(pixels) -> list[dict]:
        big = Image.fromarray(pixels).resize((320, 320), Image.Resampling.BICUBIC)
        return post(_encode(big, "JPEG", quality=90))[1]["faces"]

    use_pipeline(fallback_mode="off")
    answers = [faces_of(pixels) for pixels in fer_crops[0]]
    assert np.mean([bool(a) for a in answers]) >= 0.9
    assert np.mean([bool(a) and a[0].get("whole_image", False) for a in answers]) >= 0.85


def _faces(*boxes: Box) -> list[Face]:
    return [Face(b, (b.x, b.y, b.width, b.height)) for b in boxes]


@pytest.mark.parametrize("width, height, boxes, expected", [
    (48, 48, [], True),
    (256, 197, [], True),                       # 1:1.3
    (256, 196, [], False),                      # wider than 1:1.3
    (257, 257, [], False),                      # over FACE_CROP_MAX_SIDE, and no face fills it
    (100, 100, [Box(10, 10, 60, 60)], True),    # the face fills 60 % of the side
    (100, 100, [Box(10, 10, 59, 59)], False),
    (100, 100, [Box(0, 0, 80, 80), Box(85, 85, 12, 12)], True),
    (400, 400, [Box(80, 80, 240, 240)], True),  # any size, when the face fills it
])
def test_face_crop_thresholds(width, height, boxes, expected):
    detector, blank = runtime.pipeline.detector, np.zeros((height, width), np.uint8)
    bgr = np.zeros((height, width, 3), np.uint8)
    faces = _faces(*boxes)
    assert detector.face_crop(bgr, blank, faces, max_side=256) == (Box(0, 0, width, height) if expected else None)
    assert detector.face_crop(bgr, blank, faces, max_side=0) is None


# ---- the Rekognition fallback ----------------------------------------------------

def test_no_face_calls_detect_faces_once_in_seoul(stubbed_rekognition, coffee_jpeg):
    client, stubber = stubbed_rekognition
    assert client.meta.region_name == "ap-northeast-2"
    stubber.add_response("detect_faces", {"FaceDetails": [REKOGNITION_FACE]},
                         {"Image": {"Bytes": coffee_jpeg}, "Attributes": ["EMOTIONS"]})
    status, body = post(coffee_jpeg)
    assert status == 200
    assert_answer_schema(body)
    assert body["source"] == "rekognition"
    [face] = body["faces"]
    assert face["source"] == "rekognition"
    assert face["emotion"] == "SURPRISE" and face["rekognition_type"] == "SURPRISED"
    assert face["confidence"] == 0.8
    assert face["scores"] == {"SURPRISE": 0.8, "NEUTRAL": 0.1, "CONFUSED": 0.05, "HAPPY": 0.05}
    assert face["box"] == {"x": 300, "y": 100, "width": 150, "height": 200}  # 600x400 image
    assert body["emotion"] == "SURPRISE"


def test_confident_local_answer_does_not_call_rekognition(stubbed_rekognition, astronaut_jpeg):
    client, stubber = stubbed_rekognition  # no response queued: a call would fail the request
    calls = []
    client.meta.events.register("before-parameter-build.rekognition.DetectFaces", lambda **kw: calls.append(1))
    status, body = post(astronaut_jpeg)
    assert status == 200 and body["source"] == "local" and not calls
    client.meta.events.unregister("before-parameter-build.rekognition.DetectFaces")


def test_no_face_and_no_face_for_rekognition_either(stubbed_rekognition, coffee_jpeg):
    _, stubber = stubbed_rekognition
    stubber.add_response("detect_faces", {"FaceDetails": []})
    status, body = post(coffee_jpeg)
    assert status == 200
    assert (body["source"], body["faces"], body["emotion"]) == ("none", [], None)
    assert "fallback_error" not in body


@pytest.mark.parametrize("code, http_status", [
    ("ThrottlingException", 400), ("ProvisionedThroughputExceededException", 400),
    ("AccessDeniedException", 400), ("InvalidImageFormatException", 400),
    ("ImageTooLargeException", 400), ("InternalServerError", 500),
])
def test_rekognition_errors_never_fail_the_request(stubbed_rekognition, coffee_jpeg, code, http_status):
    _, stubber = stubbed_rekognition
    stubber.add_client_error("detect_faces", service_error_code=code, service_message="nope",
                             http_status_code=http_status)
    status, body = post(coffee_jpeg)
    assert status == 200
    assert (body["source"], body["faces"]) == ("none", [])
    assert body["fallback_error"] == {"code": code, "message": "nope"}


@pytest.mark.parametrize("error", [ReadTimeoutError(endpoint_url="https://rekognition"),
                                   ConnectTimeoutError(endpoint_url="https://rekognition")])
def test_rekognition_timeouts_never_fail_the_request(stubbed_rekognition, monkeypatch, coffee_jpeg, error):
    client, _ = stubbed_rekognition
    def slow(**kwargs):
        raise error
    monkeypatch.setattr(client, "detect_faces", slow)
    status, body = post(coffee_jpeg)
    assert status == 200 and body["faces"] == []
    assert body["fallback_error"]["code"] == type(error).__name__


def test_client_has_timeouts_and_bounded_retries():
    s = runtime.settings
    client = rekognition.client(s.rekognition_region, s.rekognition_connect_timeout,
                                s.rekognition_read_timeout, s.rekognition_max_attempts)
    assert client.meta.config.connect_timeout == 2.0
    assert client.meta.config.read_timeout == 5.0
    assert client.meta.config.retries["total_max_attempts"] == 2


def test_low_confidence_mode_asks_rekognition_when_unsure(use_pipeline, stubbed_rekognition, astronaut_jpeg):
    _, stubber = stubbed_rekognition
    use_pipeline(fallback_mode="low-confidence", confidence_threshold=1.01)  # never sure enough
    stubber.add_response("detect_faces", {"FaceDetails": [REKOGNITION_FACE]},
                         {"Image": {"Bytes": astronaut_jpeg}, "Attributes": ["EMOTIONS"]})
    status, body = post(astronaut_jpeg)
    assert status == 200 and body["source"] == "rekognition"
    assert body["faces"][0]["box"] == {"x": 256, "y": 128, "width": 128, "height": 256}


def test_low_confidence_mode_keeps_a_sure_local_answer(use_pipeline, stubbed_rekognition, astronaut_jpeg):
    use_pipeline(fallback_mode="low-confidence", confidence_threshold=0.0)
    status, body = post(astronaut_jpeg)
    assert status == 200 and body["source"] == "local"


def test_fallback_off_never_calls(use_pipeline, stubbed_rekognition, coffee_jpeg):
    use_pipeline(fallback_mode="off")
    status, body = post(coffee_jpeg)
    assert status == 200 and body["source"] == "none" and "fallback_error" not in body


def test_rekognition_gets_an_upright_jpeg_within_its_limits(stubbed_rekognition, astronaut_jpeg):
    # A WebP is not accepted by Rekognition: the pipeline sends a JPEG instead.
    _, stubber = stubbed_rekognition
    noise = Image.effect_noise((300, 200), 60).convert("RGB")  # no face in it
    sent = []
    stubber.add_response("detect_faces", {"FaceDetails": []})
    stubber.client.meta.events.register("before-parameter-build.rekognition.DetectFaces",
                                        lambda params, **kw: sent.append(params["Image"]["Bytes"]))
    status, _ = post(_encode(noise, "WEBP"), "image/webp")
    assert status == 200
    assert Image.open(io.BytesIO(sent[0])).format == "JPEG"
    assert Image.open(io.BytesIO(sent[0])).size == (300, 200)
    stubber.client.meta.events.unregister("before-parameter-build.rekognition.DetectFaces")
