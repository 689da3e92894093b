"""API Gateway events built the way API Gateway builds them, for local runs and
the sample events in events/."""
from __future__ import annotations

import base64
import time
import uuid

# Media types API Gateway would pass base64-encoded (HTTP API encodes every non-text body).
TEXT_TYPES = ("text/", "application/json", "application/x-www-form-urlencoded", "application/xml")


def _is_text(content_type: str) -> bool:
    return content_type.lower().startswith(TEXT_TYPES)


def _body(body: bytes, content_type: str) -> tuple[str, bool]:
    if body and _is_text(content_type):
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return (base64.b64encode(body).decode("ascii"), True) if body else ("", False)


def http_api_event(method: str, path: str, headers: dict[str, str], body: bytes = b"",
                   query: str = "", source_ip: str = "127.0.0.1") -> dict:
    """An HTTP API (payload format 2.0) event, $default stage."""
    headers = {k.lower(): v for k, v in headers.items()}
    text, encoded = _body(body, headers.get("content-type", ""))
    now = time.time()
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": headers.get("host", "localhost"),
            "domainPrefix": "local",
            "http": {"method": method.upper(), "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": source_ip, "userAgent": headers.get("user-agent", "")},
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "body": text,
        "isBase64Encoded": encoded,
    }


def rest_api_event(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> dict:
    """A REST API (payload format 1.0) proxy event, stage prod, with the route's
    media type listed in binaryMediaTypes (so binary bodies arrive base64-encoded)."""
    text, encoded = _body(body, headers.get("Content-Type", headers.get("content-type", "")))
    return {
        "resource": path,
        "path": path,
        "httpMethod": method.upper(),
        "headers": dict(headers),
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012", "apiId": "local", "httpMethod": method.upper(),
            "path": f"/prod{path}", "resourcePath": path, "stage": "prod",
            "requestId": str(uuid.uuid4()), "protocol": "HTTP/1.1",
            "identity": {"sourceIp": "127.0.0.1", "userAgent": headers.get("User-Agent", "")},
        },
        "body": text or None,
        "isBase64Encoded": encoded,
    }


class LambdaContext:
    """Enough of Lambda's context object for Powertools and our handlers."""

    function_version = "$LATEST"
    memory_limit_in_mb = 1769
    log_stream_name = "local"

    def __init__(self, timeout_s: float = 25.0, function_name: str = "EmotionFunction"):
        self.function_name = function_name
        self.invoked_function_arn = f"arn:aws:lambda:ap-northeast-2:123456789012:function:{function_name}"
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def sqs_message(body: str, message_id: str | None = None, receipt_handle: str = "MessageReceiptHandle",
                receive_count: int = 1, queue_arn: str = "arn:aws:sqs:ap-northeast-2:123456789012:UploadsQueue",
                sent_ms: int | None = None) -> dict:
    """One record of an SQS event, as Lambda's event source mapping delivers it (the
    shape of `sam local generate-event sqs receive-message`)."""
    import hashlib

    sent = sent_ms if sent_ms is not None else int(time.time() * 1000)
    return {
        "messageId": message_id or str(uuid.uuid4()),
        "receiptHandle": receipt_handle,
        "body": body,
        "attributes": {"ApproximateReceiveCount": str(receive_count), "SentTimestamp": str(sent),
                       "SenderId": "AIDAJHIPRHEMV73VRJEBU", "ApproximateFirstReceiveTimestamp": str(sent + 1)},
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(body.encode("utf-8")).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": queue_arn.split(":")[3],
    }


def sqs_event(*messages: dict) -> dict:
    """An SQS event of the given records (sqs_message)."""
    return {"Records": list(messages)}
