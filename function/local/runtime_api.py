"""A small Lambda Runtime API on 127.0.0.1, for running the handler under the real
runtime interface client (awslambdaric), the closest thing to Lambda without Docker.

    python -m local.runtime_api events/http-api-jpeg.json [--handler handlers.api.lambda_handler]

starts the API, starts `python -m awslambdaric <handler>` against it, hands it the event
and prints the function's answer."""
from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PREFIX = "/2018-06-01/runtime"
FUNCTION_DIR = Path(__file__).resolve().parents[1]


class RuntimeAPI:
    """Queues events for the runtime client and collects what it answers."""

    def __init__(self, timeout_s: float = 25.0):
        self.pending: queue.Queue = queue.Queue()
        self.results: dict[str, queue.Queue] = {}
        self.init_error: dict | None = None
        self.timeout_s = timeout_s
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def _reply(self, status: int, payload: bytes = b"{}", headers: dict | None = None):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                if self.path != f"{PREFIX}/invocation/next":
                    return self._reply(404)
                request_id, event = api.pending.get()  # blocks, like Lambda between requests
                deadline = int((time.time() + api.timeout_s) * 1000)
                self._reply(200, json.dumps(event).encode(), {
                    "Lambda-Runtime-Aws-Request-Id": request_id,
                    "Lambda-Runtime-Deadline-Ms": str(deadline),
                    "Lambda-Runtime-Invoked-Function-Arn":
                        "arn:aws:lambda:ap-northeast-2:123456789012:function:EmotionFunction",
                    "Lambda-Runtime-Trace-Id": f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]};Sampled=0",
                })

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path[len(PREFIX):].strip("/").split("/")
                if parts[:2] == ["init", "error"]:
                    api.init_error = json.loads(body or b"{}")
                    for waiting in api.results.values():
                        waiting.put(("init_error", api.init_error))
                elif len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    api.results.setdefault(parts[1], queue.Queue()).put((parts[2], json.loads(body or b"null")))
                else:
                    return self._reply(404)
                self._reply(202)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], ConnectionError):  # the client stopped mid-poll
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def invoke(self, event: dict, wait_s: float = 120.0) -> tuple[str, object]:
        """("response", answer) or ("error", error) from the function."""
        request_id = str(uuid.uuid4())
        waiting = self.results.setdefault(request_id, queue.Queue())
        if self.init_error is not None:
            return "init_error", self.init_error
        self.pending.put((request_id, event))
        return waiting.get(timeout=wait_s)

    def start_client(self, handler: str = "handlers.api.lambda_handler", env: dict | None = None,
                     python: str = sys.executable, task_root: Path = FUNCTION_DIR) -> subprocess.Popen:
        """`python -m awslambdaric <handler>` against this API, as Lambda's bootstrap runs it
        (``python`` and ``task_root``: another interpreter and code folder, local.image_check)."""
        environ = {**os.environ, **(env or {}), "AWS_LAMBDA_RUNTIME_API": self.address,
                   "LAMBDA_TASK_ROOT": str(task_root), "_HANDLER": handler,
                   "AWS_LAMBDA_FUNCTION_NAME": "EmotionFunction", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1769",
                   "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_EC2_METADATA_DISABLED": "true"}
        environ["PYTHONPATH"] = os.pathsep.join([str(task_root), environ.get("PYTHONPATH", "")])
        return subprocess.Popen([python, "-m", "awslambdaric", handler], env=environ, cwd=task_root)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("event")
    p.add_argument("--handler", default="handlers.api.lambda_handler")
    args = p.parse_args(argv)
    api = RuntimeAPI()
    client = api.start_client(args.handler, {"POWERTOOLS_METRICS_DISABLED": "true"})
    try:
        kind, answer = api.invoke(json.loads(Path(args.event).read_text()))
    finally:
        client.terminate()
        client.wait(10)
        api.close()
    print(json.dumps({"outcome": kind, "answer": answer}, indent=2))
    return 0 if kind == "response" else 1


if __name__ == "__main__":
    raise SystemExit(main())
