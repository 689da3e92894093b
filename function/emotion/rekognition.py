"""Amazon Rekognition DetectFaces behind one function, answering in our schema.

boto3 is imported on first use only: a request that never falls back never pays for it."""
from __future__ import annotations

import threading

# Rekognition's emotion types -> our labels.  CONFUSED and UNKNOWN have no local
# counterpart and are passed through as they are.
EMOTION_MAP = {
    "HAPPY": "HAPPY", "SAD": "SAD", "ANGRY": "ANGRY", "SURPRISED": "SURPRISE",
    "DISGUSTED": "DISGUST", "FEAR": "FEAR", "CALM": "NEUTRAL", "CONFUSED": "CONFUSED", "UNKNOWN": "UNKNOWN",
}
MAX_BYTES = 5 * 1024 * 1024  # DetectFaces' limit for image bytes

_clients: dict = {}
_lock = threading.Lock()


class FallbackError(Exception):
    """Rekognition could not answer; ``code`` is short and safe to show a client."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def client(region: str, connect_timeout: float, read_timeout: float, max_attempts: int):
    """One boto3 Rekognition client per configuration, created on first use.

    ``max_attempts`` counts every try, the first included: with the defaults (2 s to
    connect, 5 s to read, 2 attempts) a dead Rekognition costs at most about 15 s,
    well inside the function's timeout."""
    key = (region, connect_timeout, read_timeout, max_attempts)
    with _lock:
        if key not in _clients:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError

            try:
                _clients[key] = boto3.client("rekognition", region_name=region, config=Config(
                    connect_timeout=connect_timeout, read_timeout=read_timeout,
                    retries={"total_max_attempts": max_attempts, "mode": "standard"}))
            except (BotoCoreError, ValueError) as exc:
                raise FallbackError(type(exc).__name__, str(exc)) from exc
        return _clients[key]


def detect_faces(image_bytes: bytes, width: int, height: int, rekognition) -> list[dict]:
    """Faces found by DetectFaces in a JPEG or PNG of ``width`` x ``height`` pixels,
    each ``{"box", "emotion", "confidence", "scores", "source", "rekognition_type"}``.
    Raises FallbackError when Rekognition fails for any reason."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = rekognition.detect_faces(Image={"Bytes": image_bytes}, Attributes=["EMOTIONS"])
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise FallbackError(error.get("Code", "ClientError"), error.get("Message", str(exc))) from exc
    except BotoCoreError as exc:
        raise FallbackError(type(exc).__name__, str(exc)) from exc
    faces = []
    for detail in answer.get("FaceDetails", []):
        emotions = sorted(detail.get("Emotions", []), key=lambda e: e.get("Confidence", 0.0), reverse=True)
        if not emotions:
            continue
        scores = {EMOTION_MAP.get(e["Type"], e["Type"]): round(e.get("Confidence", 0.0) / 100.0, 4) for e in emotions}
        top = emotions[0]
        faces.append({
            "box": _box(detail.get("BoundingBox", {}), width, height),
            "emotion": EMOTION_MAP.get(top["Type"], top["Type"]),
            "confidence": round(top.get("Confidence", 0.0) / 100.0, 4),
            "scores": scores,
            "source": "rekognition",
            "rekognition_type": top["Type"],
        })
    return faces


def _box(ratio: dict, width: int, height: int) -> dict:
    """Rekognition's ratio box (it may reach outside the image) -> pixels inside it."""
    x0 = min(max(ratio.get("Left", 0.0), 0.0), 1.0) * width
    y0 = min(max(ratio.get("Top", 0.0), 0.0), 1.0) * height
    x1 = min(max(ratio.get("Left", 0.0) + ratio.get("Width", 0.0), 0.0), 1.0) * width
    y1 = min(max(ratio.get("Top", 0.0) + ratio.get("Height", 0.0), 0.0), 1.0) * height
    return {"x": round(x0), "y": round(y0), "width": round(x1) - round(x0), "height": round(y1) - round(y0)}
