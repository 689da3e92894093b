"""API Gateway (HTTP API payload 2.0 and REST API 1.0) -> the emotion pipeline.

Routes (function/web/openapi.yaml is the contract): POST /emotion, and POST /main for
the prototype's client, answer JSON or, asked to annotate, the photo as a JPEG with the
faces drawn; GET / is the demo page and GET /openapi.json the contract.

Every request logs one line (Powertools' JSON, with function_request_id, path and
method): "analysed" (status, bytes received, the image's size, faces, source, annotated,
fallback_error's code, milliseconds of each stage), "rejected" (status, code, bytes),
"served" (a page) or "unexpected error" (a 500, with its trace).  Never the image."""
from __future__ import annotations

import base64
import json
import time

from emotion.annotate import annotate
from emotion.errors import InputError
from emotion.pipeline import ms_since
from handlers import web
from handlers.http import Request, extract_image, parse_event, wants_jpeg
from handlers.runtime import analysed_fields, count, logger, metrics, pipeline, record

ANALYSE = ("/emotion", "/main")
PAGES = ("/", "/openapi.json")
SECURITY = {"X-Content-Type-Options": "nosniff"}


def response(status: int, body: dict) -> dict:
    return {"statusCode": status, "headers": {"Content-Type": "application/json", **SECURITY},
            "body": json.dumps(body), "isBase64Encoded": False}


def _allowed(path: str) -> str:
    if path in ANALYSE:
        return "POST"
    if path in PAGES:
        return "GET, HEAD"
    raise InputError("not_found", f"No route {path}; use POST /emotion (or /main), GET / or GET /openapi.json.", 404)


def _page(request: Request) -> dict:
    if request.path == "/":
        html, csp = web.page()
        headers = {"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": csp,
                   "Cache-Control": "no-cache"}
        body = html
    else:
        headers = {"Content-Type": "application/json", "Cache-Control": "max-age=300"}
        body = web.contract_json()
    return {"statusCode": 200, "headers": {**headers, **SECURITY},
            "body": "" if request.method == "HEAD" else body, "isBase64Encoded": False}


def _received(event, request: Request | None) -> int:
    """The bytes received: the body read, or its size as API Gateway delivered it for a
    request refused before it was read."""
    if request is not None:
        return len(request.body)
    body = event.get("body") if isinstance(event, dict) else None
    if isinstance(body, str):
        return len(body.encode("utf-8", "surrogateescape"))
    return len(body) if isinstance(body, (bytes, bytearray)) else 0


def _analyse(request: Request, started: float) -> dict:
    jpeg = wants_jpeg(request)
    data = extract_image(request)
    timings: dict = {}
    image = pipeline.decode(data, timings)
    result = pipeline.analyse_image(image, timings=timings)
    record(result)
    fields = {"status": 200, "bytes": len(request.body), "image_bytes": len(data), "annotated": jpeg,
              **analysed_fields(result, timings), "annotate_ms": 0.0}
    if not jpeg:
        answer = response(200, result)
    else:
        drawn = time.perf_counter()
        headers = {"Content-Type": "image/jpeg", "X-Face-Count": str(len(result["faces"])),
                   "X-Emotion": result["emotion"] or "none", "X-Source": result["source"], **SECURITY}
        answer = {"statusCode": 200, "headers": headers, "isBase64Encoded": True,
                  "body": base64.b64encode(annotate(image, result["faces"])).decode("ascii")}
        fields["annotate_ms"] = ms_since(drawn)
    logger.info("analysed", extra={**fields, "total_ms": ms_since(started)})
    return answer


@metrics.log_metrics(capture_cold_start_metric=True)
@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event, context):
    started = time.perf_counter()
    allowed = ""
    request = None
    try:
        request = parse_event(event)
        logger.append_keys(path=request.path, method=request.method)
        allowed = _allowed(request.path)
        if request.method not in allowed.split(", "):
            raise InputError("method_not_allowed", f"{request.path} accepts {allowed} only.", 405)
        if allowed == "POST":
            return _analyse(request, started)
        answer = _page(request)
        logger.info("served", extra={"status": 200, "bytes": len(request.body), "total_ms": ms_since(started)})
        return answer
    except InputError as exc:
        logger.info("rejected", extra={"status": exc.status, "code": exc.code,
                                       "bytes": _received(event, request), "total_ms": ms_since(started)})
        count("ClientErrors")
        answer = response(exc.status, exc.to_dict())
        if exc.status == 405:
            answer["headers"]["Allow"] = allowed
        return answer
    except Exception:  # a bug of ours: logged with its trace, never shown to the client
        logger.exception("unexpected error", extra={"status": 500, "code": "internal_error",
                                                    "bytes": _received(event, request),
                                                    "total_ms": ms_since(started)})
        count("ServerErrors")
        return response(500, {"error": {"code": "internal_error",
                                        "message": "The image could not be analysed; please try again."}})
