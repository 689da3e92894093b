"""Remake the sample events in events/ from the photos in events/images/.

    python events/generate.py

Bodies are built by `requests` exactly as clients send them (the prototype's client
does requests.post(url, data={'image': base64.b64encode(photo)})), then wrapped the way
API Gateway wraps them (function/local/events.py)."""
from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import requests
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "function"))

from local.events import http_api_event, rest_api_event, sqs_event, sqs_message  # noqa: E402

IMAGES = HERE / "images"
URL = "https://abc123.execute-api.ap-northeast-2.amazonaws.com"
# Where the cascade finds the astronaut's face (x0, y0, x1, y1): cut out, it is a face crop
# in FER2013's own format, 48x48 grey.
ASTRONAUT_FACE_BOX = (174, 64, 275, 165)


def prepared(path: str, method: str = "POST", **kwargs) -> tuple[dict, bytes]:
    req = requests.Request(method, URL + path, **kwargs).prepare()
    headers = {k: v for k, v in req.headers.items() if k.lower() != "content-length"}
    body = req.body or b""
    return headers, body.encode() if isinstance(body, str) else body


def face_crop() -> bytes:
    """events/images/astronaut-face.png: the astronaut's face alone, 48x48 grey PNG."""
    with Image.open(IMAGES / "astronaut.jpg") as img:
        face = img.convert("L").crop(ASTRONAUT_FACE_BOX).resize((48, 48), Image.Resampling.BOX)
    buffer = io.BytesIO()
    face.save(buffer, format="PNG")
    (IMAGES / "astronaut-face.png").write_bytes(buffer.getvalue())
    return buffer.getvalue()


def upload_message() -> dict:
    """events/sqs-s3-put.json: what EmotionS3Function gets from the upload queue, one
    message whose body is S3's notification (events/s3-put.json, written by hand from
    S3's documented shape, with the astronaut's real size and ETag)."""
    notification = json.loads((HERE / "s3-put.json").read_text())
    return sqs_event(sqs_message(json.dumps(notification), message_id="059f36b4-87a3-44ab-83d2-661975830a7d",
                                 sent_ms=1796284800000,
                                 queue_arn="arn:aws:sqs:ap-northeast-2:123456789012:emotion-service-UploadsQueue"))


def main() -> int:
    face = (IMAGES / "astronaut.jpg").read_bytes()
    no_face = (IMAGES / "coffee.jpg").read_bytes()
    group = (IMAGES / "group.jpg").read_bytes()
    crop = face_crop()
    b64 = base64.b64encode(face)
    jpeg = {"Content-Type": "image/jpeg"}
    events = {
        # good requests
        "http-api-jpeg.json": http_api_event("POST", "/emotion", jpeg, face),
        "http-api-json.json": http_api_event("POST", "/emotion", *prepared("/emotion", json={"image": b64.decode()})),
        "http-api-json-data-url.json": http_api_event("POST", "/emotion", *prepared(
            "/emotion", json={"image": "data:image/jpeg;base64," + b64.decode()})),
        "http-api-prototype-form.json": http_api_event("POST", "/main", *prepared("/main", data={"image": b64})),
        "http-api-multipart.json": http_api_event("POST", "/emotion", *prepared(
            "/emotion", files={"image": ("astronaut.jpg", face, "image/jpeg")})),
        "rest-api-prototype-form.json": rest_api_event("POST", "/main", *prepared("/main", data={"image": b64})),
        "http-api-no-face.json": http_api_event("POST", "/emotion", jpeg, no_face),
        "http-api-group.json": http_api_event("POST", "/emotion", jpeg, group),
        "http-api-face-crop.json": http_api_event("POST", "/emotion", {"Content-Type": "image/png"}, crop),
        # bad requests
        "bad-base64.json": http_api_event("POST", "/emotion", *prepared("/emotion", json={"image": "not base64!"})),
        "bad-not-an-image.json": http_api_event("POST", "/emotion", *prepared(
            "/emotion", json={"image": base64.b64encode(b"hello, this is text").decode()})),
        "bad-no-image.json": http_api_event("POST", "/main", *prepared("/main", data={"photo": "abc"})),
        "bad-media-type.json": http_api_event("POST", "/emotion", {"Content-Type": "text/plain"}, b"hello"),
        "bad-method.json": http_api_event("GET", "/emotion", {}),
        "bad-route.json": http_api_event("POST", "/nowhere", jpeg, no_face[:64]),
        # the upload queue
        "sqs-s3-put.json": upload_message(),
    }
    for name, event in events.items():
        (HERE / name).write_text(json.dumps(event, indent=2) + "\n")
        print("wrote", HERE / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
