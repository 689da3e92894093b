"""``make run-s3``: the S3 trigger end to end on this machine -- no AWS account, no Docker.

Starts moto's S3 server on 127.0.0.1 (a free port), points boto3 at it through the
standard AWS_ENDPOINT_URL_S3 variable with fake credentials (set in this process only),
creates the bucket, uploads the photo under uploads/, invokes handlers.s3.lambda_handler
with events/s3-put.json (its key, size and ETag replaced by those of the real upload) and
prints the result read back from the bucket.

Nothing leaves the machine: Rekognition is pointed at a closed local port, so a photo in
which no face is found (FALLBACK_MODE=no-face, the default) shows
``fallback_error: EndpointConnectionError`` instead of calling AWS.

    python -m local.run_s3 [--image events/images/astronaut.jpg] [--event events/s3-put.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import socket
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote_plus

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=ROOT / "events" / "images" / "astronaut.jpg")
    parser.add_argument("--event", type=Path, default=ROOT / "events" / "s3-put.json")
    args = parser.parse_args(argv)

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        # Before handlers.s3 is imported: the handler's client reads the standard variables.
        os.environ.update({
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing", "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_ENDPOINT_URL_REKOGNITION": f"http://127.0.0.1:{closed_port()}",
        })
        os.environ.pop("AWS_PROFILE", None)
        os.environ.setdefault("AWS_DEFAULT_REGION", "ap-northeast-2")
        return invoke(args.image, json.loads(args.event.read_text()))
    finally:
        server.stop()


def closed_port() -> int:
    """A local port nobody listens on (moto does not implement DetectFaces)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def invoke(image: Path, template: dict) -> int:
    import boto3

    from handlers import s3 as handler

    event = copy.deepcopy(template)
    rec = event["Records"][0]
    bucket = rec["s3"]["bucket"]["name"]
    region = rec.get("awsRegion") or os.environ["AWS_DEFAULT_REGION"]
    key = f"{handler.options.upload_prefix}{image.name}"
    client = boto3.client("s3", region_name=region)
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    data = image.read_bytes()
    put = client.put_object(Bucket=bucket, Key=key, Body=data, ContentType="image/jpeg")
    rec["s3"]["object"].update(key=quote_plus(key, safe="/"), size=len(data), eTag=put["ETag"].strip('"'))
    print(f"uploaded {image.name} to s3://{bucket}/{key} ({client.meta.endpoint_url})", file=sys.stderr)

    context = SimpleNamespace(function_name="EmotionS3Function", memory_limit_in_mb=1769,
                              invoked_function_arn=f"arn:aws:lambda:{region}:123456789012:function:EmotionS3Function",
                              aws_request_id=str(uuid.uuid4()))
    summary = handler.lambda_handler(event, context)
    print(f"summary: {json.dumps(summary)}", file=sys.stderr)
    target = handler.result_key(key)
    try:
        body = client.get_object(Bucket=bucket, Key=target)["Body"].read()
    except client.exceptions.NoSuchKey:
        print(f"no result at s3://{bucket}/{target}", file=sys.stderr)
        return 1
    result = json.loads(body)
    print(f"s3://{bucket}/{target}:", file=sys.stderr)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0 if result.get("status") == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
