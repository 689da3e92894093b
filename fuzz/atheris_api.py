"""A coverage-guided fuzz target (atheris, libFuzzer) over the API handler: bytes ->
an API Gateway event (payload 2.0 or REST 1.0; raw, JSON, urlencoded or multipart
body; odd fields) -> handlers.api.lambda_handler, which parses it (parse_event,
extract_image) and decodes the picture (emotion.images.decode).  Any answer local.fuzz
calls bad (a 5xx, a 4xx outside the contract's Error schema, ...) or any exception
escaping the handler is a crash.  Rekognition is never called (FALLBACK_MODE=off).

    .venv/bin/pip install atheris      # not in requirements-dev.txt
    .venv/bin/python fuzz/atheris_api.py --seed-corpus /tmp/api-corpus   # sample photos as seeds
    .venv/bin/python fuzz/atheris_api.py -max_total_time=60 /tmp/api-corpus

Without atheris the module still imports (``one_input`` is the target; tests call it)."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for entry in (ROOT / "function", ROOT):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))
os.environ.setdefault("MODEL_DIR", str(ROOT / "layers" / "model"))
os.environ.setdefault("AWS_DEFAULT_REGION", "ap-northeast-2")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "emotion")
if __name__ == "__main__":   # as a fuzzer: quiet, and never Rekognition
    os.environ["FALLBACK_MODE"] = "off"
    os.environ["POWERTOOLS_LOG_LEVEL"] = "ERROR"   # a 500 logs its trace (stderr)
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"

try:
    import atheris
except ImportError:   # the target still imports, for a smoke test
    atheris = None

# The heavy libraries uninstrumented (their coverage is noise); ours, Pillow's parsers
# and the email package's multipart parser instrumented.
import cv2  # noqa: E402,F401
import numpy  # noqa: E402,F401
import onnxruntime  # noqa: E402,F401
import aws_lambda_powertools  # noqa: E402,F401

_instrumented = atheris.instrument_imports(include=["handlers", "emotion", "PIL", "email"]) \
    if atheris else contextlib.nullcontext()
with _instrumented:
    from handlers import api, runtime  # noqa: E402
    from handlers.http import parse_event  # noqa: E402,F401  (instrumented with api)
    from emotion.images import decode  # noqa: E402,F401

from local import fuzz  # noqa: E402
from local.events import LambdaContext, http_api_event, rest_api_event  # noqa: E402

CONTENT_TYPES = ["image/jpeg", "image/png", "image/webp", "application/octet-stream", "application/json",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=B", "multipart/form-data",
                 "text/plain", "", "IMAGE/PNG", "application/vnd.x+json", "image/gif"]
QUERIES = ["", "annotate=1", "annotate=0", "annotate=x", "annotate=true&annotate=0"]
ACCEPTS = ["", "image/jpeg", "application/json", "image/*;q=0.5, application/json;q=0.4", "*/*;q=nan"]
PATHS = ["/emotion", "/main", "/", "/openapi.json", "/nope"]
METHODS = ["POST", "POST", "POST", "GET", "HEAD", "PUT", "post"]
ODD = [None, 0, True, "", [], {}, "x", 1.5]
FIELDS = ["headers", "body", "isBase64Encoded", "requestContext", "rawPath", "httpMethod", "path",
          "queryStringParameters", "version"]


class Reader:
    """The input bytes as a few choices and the rest as the body (no atheris needed)."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def byte(self) -> int:
        if self.at >= len(self.data):
            return 0
        self.at += 1
        return self.data[self.at - 1]

    def pick(self, items: list):
        return items[self.byte() % len(items)]

    def rest(self) -> bytes:
        return self.data[self.at:]


def event_from(data: bytes):
    """The event the bytes describe: 4 choice bytes (shape, content type, extras,
    oddity), then the payload."""
    r = Reader(data)
    shape, ctype, extras, oddity = r.byte(), r.pick(CONTENT_TYPES), r.byte(), r.byte()
    payload = r.rest()
    version = "2.0" if shape & 1 else "1.0"
    how = (shape >> 1) % 4
    if how == 0:                      # the payload is the body
        body = payload
    elif how == 1:                    # the payload, base64, in JSON
        body = b'{"image": "' + fuzz.b64(payload).encode() + b'"}'
        ctype = "application/json"
    elif how == 2:                    # the payload, base64, in a form
        body = b"image=" + fuzz.b64(payload).replace("+", "%2B").encode()
        ctype = "application/x-www-form-urlencoded"
    else:                             # the payload as a multipart file
        body = fuzz.multipart("B", [({"Content-Disposition": 'form-data; name="image"; filename="p"',
                                      "Content-Type": "image/jpeg"}, payload)])
        ctype = "multipart/form-data; boundary=B"
    method, path = (METHODS[extras % len(METHODS)], PATHS[(extras >> 3) % len(PATHS)]) if extras & 0x80 \
        else ("POST", "/emotion")
    headers = {"Content-Type": ctype} if ctype else {}
    accept = ACCEPTS[(extras >> 1) % len(ACCEPTS)]
    if accept:
        headers["Accept"] = accept
    query = QUERIES[(shape >> 3) % len(QUERIES)]
    req = fuzz.Req(body, headers, query, method, path, expect_jpeg=None)
    event = fuzz.make_event(req, version)
    if oddity & 0x80:                 # one field missing, null or of the wrong type
        fuzz._set(event, FIELDS[oddity % len(FIELDS)], ODD[(oddity >> 4) % len(ODD)], delete=bool(oddity & 0x40))
    return fuzz.Case(0, "atheris", version, event, None)


def one_input(data: bytes) -> None:
    """The target: raises on any bad answer."""
    case = event_from(data)
    try:
        answer = api.lambda_handler(case.event, LambdaContext())
    except Exception as exc:  # noqa: BLE001 - re-raised with what was sent
        raise RuntimeError(f"exception escaped the handler: {exc!r}") from exc
    problem = fuzz.check(case, answer)
    if problem:
        raise RuntimeError(f"bad answer: {problem}")


def write_seeds(directory: Path) -> int:
    """The fuzzer's sample pictures (events/images, PIL-made) as seed inputs, each way."""
    directory.mkdir(parents=True, exist_ok=True)
    c = fuzz.corpus()
    pictures = {**c.valid, **c.modes, **c.tiny, **{f"exif{k}": v for k, v in c.exif.items()}}
    count = 0
    for name, data in pictures.items():
        if len(data) > 100_000:
            continue
        for shape in (0, 1, 2, 5, 6):
            (directory / f"{name}-{shape}").write_bytes(bytes([shape, 0, 0, 0]) + data)
            count += 1
    return count


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seed-corpus":
        print(f"{write_seeds(Path(sys.argv[2]))} seeds in {sys.argv[2]}")
        return
    if atheris is None:
        sys.exit("atheris is not installed: .venv/bin/pip install atheris")
    fuzz._logs_to_stderr()
    fuzz._fallback_off()
    import warnings
    warnings.simplefilter("ignore")
    assert runtime.pipeline.settings.fallback_mode == "off"
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
