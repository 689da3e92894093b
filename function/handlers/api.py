"""API Gateway (HTTP API payload 2.0 and REST API 1.0) -> the emotion pipeline.

Routes: POST /emotion, and POST /main for the prototype's client."""
from __future__ import annotations

import json

from emotion.errors import InputError
from handlers.http import extract_image, parse_event
from handlers.runtime import count, logger, metrics, pipeline, record

ROUTES = ("/emotion", "/main")


def response(status: int, body: dict) -> dict:
    return {"statusCode": status, "headers": {"Content-Type": "application/json"},
            "body": json.dumps(body), "isBase64Encoded": False}


@metrics.log_metrics(capture_cold_start_metric=True)
@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event, context):
    try:
        request = parse_event(event)
        logger.append_keys(path=request.path, method=request.method)
        if request.path not in ROUTES:
            raise InputError("not_found", f"No route {request.path}; use POST {' or POST '.join(ROUTES)}.", 404)
        if request.method != "POST":
            raise InputError("method_not_allowed", f"{request.path} accepts POST only.", 405)
        result = pipeline.analyse(extract_image(request))
    except InputError as exc:
        logger.info("rejected", extra={"status": exc.status, "code": exc.code})
        count("ClientErrors")
        answer = response(exc.status, exc.to_dict())
        if exc.status == 405:
            answer["headers"]["Allow"] = "POST"
        return answer
    except Exception:  # a bug of ours: logged with its trace, never shown to the client
        logger.exception("unexpected error")
        count("ServerErrors")
        return response(500, {"error": {"code": "internal_error",
                                        "message": "The image could not be analysed; please try again."}})
    record(result)
    logger.info("analysed", extra={"faces": len(result["faces"]), "source": result["source"],
                                   "fallback_error": result.get("fallback_error", {}).get("code")})
    return response(200, result)
