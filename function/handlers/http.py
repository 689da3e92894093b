"""Reading an image out of an API Gateway request (REST 1.0 or HTTP API 2.0 payload)."""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from urllib.parse import parse_qs, parse_qsl

from emotion.errors import InputError

RAW_IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/webp", "image/bmp", "application/octet-stream"}
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
MULTIPART = "multipart/form-data"
ACCEPTED = "JSON {\"image\": <base64>}, a form field 'image' (urlencoded base64 or a multipart file), or a raw image/jpeg or image/png body"


@dataclass
class Request:
    method: str
    path: str
    content_type: str   # the media type alone, lower case
    content_type_header: str
    body: bytes
    query: dict[str, str]
    accept: str = ""


def _field(mapping, key: str, default: str = "") -> str:
    """A string field of an event; missing or null: ``default``; of another type: a 400
    (API Gateway never sends one, but anything may invoke the function)."""
    value = mapping.get(key) if isinstance(mapping, dict) else None
    if value is None:
        return default
    if not isinstance(value, str):
        raise InputError("invalid_event", f"The event's {key} is not a string.")
    return value


def _mapping(event: dict, key: str) -> dict:
    value = event.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError("invalid_event", f"The event's {key} is not an object.")
    return value


def parse_event(event: dict) -> Request:
    """The method, path, content type and body bytes of an API Gateway event.  Raises
    InputError (400 invalid_event) for an event whose fields have the wrong types."""
    if not isinstance(event, dict):
        raise InputError("invalid_event", "The event is not an API Gateway request.")
    context = event.get("requestContext")
    context = context if isinstance(context, dict) else {}
    if event.get("version") == "2.0" or "http" in context:
        http = context.get("http")
        http = http if isinstance(http, dict) else {}
        method = _field(http, "method")
        path = _field(event, "rawPath") or _field(http, "path")
        stage = context.get("stage")
        stage = stage if isinstance(stage, str) else "$default"
        if stage != "$default" and path.startswith(f"/{stage}/"):
            path = path[len(stage) + 1:]
        raw_query = event.get("rawQueryString")
        query = dict(parse_qsl(raw_query, keep_blank_values=True)) if isinstance(raw_query, str) \
            else event.get("queryStringParameters")
    else:
        method = _field(event, "httpMethod")
        path = _field(event, "path") or _field(event, "resource")
        query = event.get("queryStringParameters")
    query = {str(k): str(v) for k, v in query.items()} if isinstance(query, dict) else {}
    headers = {str(k).lower(): str(v) for k, v in _mapping(event, "headers").items() if v is not None}
    header = headers.get("content-type", "")
    body = event.get("body")
    if body is None:
        body = ""
    elif not isinstance(body, (str, bytes, bytearray)):
        raise InputError("invalid_event", "The event's body is not a string.")
    encoded = event.get("isBase64Encoded")
    if encoded is not None and not isinstance(encoded, bool):
        raise InputError("invalid_event", "The event's isBase64Encoded is not a boolean.")
    if encoded:
        try:
            data = base64.b64decode(body, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise InputError("invalid_body", "The request body is not valid base64.") from exc
    else:
        data = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else bytes(body)
    return Request(method=method.upper(), path=path.rstrip("/") or "/",
                   content_type=header.split(";")[0].strip().lower(), content_type_header=header, body=data,
                   query=query, accept=headers.get("accept", ""))


def wants_jpeg(request: Request) -> bool:
    """Whether to answer with the annotated photo: ``?annotate=1|true`` (``0|false``:
    never), else when Accept prefers image/jpeg (or image/*) to application/json."""
    flag = request.query.get("annotate")
    if flag is not None:
        if flag.lower() in ("1", "true"):
            return True
        if flag.lower() in ("0", "false"):
            return False
        raise InputError("invalid_parameter", f"annotate must be 1, true, 0 or false, not {flag[:40]!r}.")
    jpeg = json_q = 0.0
    for item in request.accept.split(","):
        media, _, params = item.strip().partition(";")
        media = media.strip().lower()
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media in ("image/jpeg", "image/*"):
            jpeg = max(jpeg, q)
        elif media in ("application/json", "application/*", "*/*"):
            json_q = max(json_q, q)
    return jpeg > json_q


def decode_base64(text: str | bytes) -> bytes:
    """Standard or URL-safe base64, with or without padding, whitespace and a data-URL prefix."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    text = text.strip()
    if text.startswith("data:"):
        text = text.partition(",")[2]
    # A form value whose '+' was not percent-encoded arrives with spaces.
    text = re.sub(r"[\r\n\t]", "", text).replace(" ", "+").replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError("invalid_base64", "The 'image' field is not valid base64.") from exc
    if not data:
        raise InputError("missing_image", "The 'image' field is empty.")
    return data


def extract_image(request: Request) -> bytes:
    """The image bytes of a request, by its Content-Type."""
    ctype, body = request.content_type, request.body
    if not body:
        raise InputError("missing_image", f"The request has no body. Send {ACCEPTED}.")
    if not ctype:
        ctype = _sniff(body)
    if ctype in RAW_IMAGE_TYPES or ctype.startswith("image/"):
        return body
    if ctype == FORM:
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        if not fields.get("image"):
            raise InputError("missing_image", "The form has no 'image' field (base64 of the image).")
        return decode_base64(fields["image"][0])
    if ctype == JSON or ctype.endswith("+json"):
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
            raise InputError("invalid_json", "The body is not valid JSON.") from exc
        if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
            raise InputError("missing_image", 'The JSON body needs a string field "image" (base64 of the image).')
        return decode_base64(payload["image"])
    if ctype == MULTIPART:
        return _multipart_image(request.content_type_header, body)
    raise InputError("unsupported_media_type", f"Content-Type {ctype} is not accepted. Send {ACCEPTED}.", status=415)


def _sniff(body: bytes) -> str:
    head = body[:16]
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG", b"BM")) or head[8:12] == b"WEBP":
        return "application/octet-stream"
    if body.lstrip()[:1] == b"{":
        return JSON
    if body.startswith(b"image=") or b"&image=" in body:
        return FORM
    raise InputError("unsupported_media_type", f"The request has no Content-Type. Send {ACCEPTED}.", status=415)


def _multipart_image(content_type_header: str, body: bytes) -> bytes:
    if "boundary=" not in content_type_header:
        raise InputError("invalid_multipart", "The multipart Content-Type has no boundary.")
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type_header.encode("latin-1", "replace") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise InputError("invalid_multipart", "The multipart body could not be read.")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") != "image":
            continue
        data = part.get_payload(decode=True) or b""
        if part.get_filename() is None and not part.get_content_type().startswith("image/"):
            return decode_base64(data)  # a plain text field holding base64, like the urlencoded form
        if not data:
            raise InputError("missing_image", "The 'image' part is empty.")
        return data
    raise InputError("missing_image", "The multipart form has no 'image' field.")
