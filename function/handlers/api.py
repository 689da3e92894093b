"""API Gateway (HTTP API payload 2.0 and REST API 1.0) -> the emotion pipeline.

Routes (function/web/openapi.yaml is the contract): POST /emotion, and POST /main for
the prototype's client, answer JSON or, asked to annotate, the photo as a JPEG with the
faces drawn; GET / is the demo page and GET /openapi.json the contract."""
from __future__ import annotations

import base64
import json

from emotion.annotate import annotate
from emotion.errors import InputError
from handlers import web
from handlers.http import Request, extract_image, parse_event, wants_jpeg
from handlers.runtime import count, logger, metrics, pipeline, record

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


def _analyse(request: Request) -> dict:
    jpeg = wants_jpeg(request)
    image = pipeline.decode(extract_image(request))
    result = pipeline.analyse_image(image)
    record(result)
    logger.info("analysed", extra={"faces": len(result["faces"]), "source": result["source"], "annotated": jpeg,
                                   "fallback_error": result.get("fallback_error", {}).get("code")})
    if not jpeg:
        return response(200, result)
    headers = {"Content-Type": "image/jpeg", "X-Face-Count": str(len(result["faces"])),
               "X-Emotion": result["emotion"] or "none", "X-Source": result["source"], **SECURITY}
    return {"statusCode": 200, "headers": headers, "isBase64Encoded": True,
            "body": base64.b64encode(annotate(image, result["faces"])).decode("ascii")}


@metrics.log_metrics(capture_cold_start_metric=True)
@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event, context):
    allowed = ""
    try:
        request = parse_event(event)
        logger.append_keys(path=request.path, method=request.method)
        allowed = _allowed(request.path)
        if request.method not in allowed.split(", "):
            raise InputError("method_not_allowed", f"{request.path} accepts {allowed} only.", 405)
        return _analyse(request) if allowed == "POST" else _page(request)
    except InputError as exc:
        logger.info("rejected", extra={"status": exc.status, "code": exc.code})
        count("ClientErrors")
        answer = response(exc.status, exc.to_dict())
        if exc.status == 405:
            answer["headers"]["Allow"] = allowed
        return answer
    except Exception:  # a bug of ours: logged with its trace, never shown to the client
        logger.exception("unexpected error")
        count("ServerErrors")
        return response(500, {"error": {"code": "internal_error",
                                        "message": "The image could not be analysed; please try again."}})
