"""Invoke a handler on an event file, as `sam local invoke` would, without Docker.

    python -m local.invoke events/http-api-jpeg.json            # the API handler
    python -m local.invoke events/s3-put.json --handler handlers.s3.lambda_handler
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from local.events import LambdaContext


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("event", help="event JSON file")
    p.add_argument("--handler", default="handlers.api.lambda_handler", help="module.function")
    args = p.parse_args(argv)
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")  # no EMF lines in a local run
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")    # not on EC2: never ask its metadata service
    with open(args.event) as fh:
        event = json.load(fh)
    module, _, name = args.handler.rpartition(".")
    handler = getattr(importlib.import_module(module), name)
    answer = handler(event, LambdaContext())
    if isinstance(answer, dict) and isinstance(answer.get("body"), str):
        try:
            answer = {**answer, "body": json.loads(answer["body"])}  # readable, not an escaped string
        except ValueError:
            pass
    json.dump(answer, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
