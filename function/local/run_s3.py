"""``make run-s3``: the upload path end to end on this machine -- no AWS account, no Docker.

Starts moto's S3 and SQS server on 127.0.0.1 (a free port), points boto3 at it through
the standard AWS_ENDPOINT_URL variable with fake credentials (set in this process only),
builds the bucket, its upload queue and dead-letter queue as template.yaml does
(local/queue.py), uploads the photo under uploads/, works the queue the way Lambda's event
source mapping does (S3's s3:TestEvent first, then the upload's notification), and
prints the result read back from the bucket.

Nothing leaves the machine: Rekognition is pointed at a closed local port, so a photo in
which no face is found (FALLBACK_MODE=no-face, the default) shows
``fallback_error: EndpointConnectionError`` instead of calling AWS.

    python -m local.run_s3 [--image events/images/astronaut.jpg]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "emotion-uploads-123456789012-ap-northeast-2-local"


def start_moto():
    """moto's server on 127.0.0.1, and this process's AWS settings pointed at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # Before handlers.s3 is imported: the handler's clients read the standard variables.
    os.environ.update({
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_REKOGNITION": f"http://127.0.0.1:{closed_port()}",
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "ap-northeast-2"),
        "AWS_EC2_METADATA_DISABLED": "true"})
    os.environ.pop("AWS_PROFILE", None)
    return server, endpoint


def closed_port() -> int:
    """A local port nobody listens on (moto does not implement DetectFaces)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=ROOT / "events" / "images" / "astronaut.jpg")
    args = parser.parse_args(argv)
    server, endpoint = start_moto()
    try:
        return run(args.image, endpoint)
    finally:
        server.stop()


def run(image: Path, endpoint: str) -> int:
    import boto3

    from handlers import s3 as handler
    from local import queue

    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    settings = queue.queue_settings()
    queue_url, _ = queue.create(s3, sqs, BUCKET, handler.options.upload_prefix, settings["max_receive_count"],
                                settings["visibility_timeout"])
    key = f"{handler.options.upload_prefix}{image.name}"
    s3.put_object(Bucket=BUCKET, Key=key, Body=image.read_bytes())
    print(f"uploaded {image.name} to s3://{BUCKET}/{key} ({endpoint}); working the queue", file=sys.stderr)
    deadline = time.monotonic() + 60
    while queue.depth(sqs, queue_url) and time.monotonic() < deadline:
        batch = queue.poll(sqs, queue_url, handler.lambda_handler, settings["batch_size"])
        print(f"batch: {batch['messages']} messages, {batch['failed']} failed", file=sys.stderr)
    target = handler.result_key(key)
    try:
        result = json.loads(s3.get_object(Bucket=BUCKET, Key=target)["Body"].read())
    except s3.exceptions.NoSuchKey:
        print(f"no result at s3://{BUCKET}/{target}", file=sys.stderr)
        return 1
    print(f"s3://{BUCKET}/{target}:", file=sys.stderr)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0 if result.get("status") == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
