"""A local HTTP endpoint on 127.0.0.1 that hands every request to the API handler
as an HTTP API (2.0) event, the way API Gateway would.

    python -m local.serve --port 3000
    curl -F image=@face.jpg http://127.0.0.1:3000/emotion
    open http://127.0.0.1:3000/ (the demo page)
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from local.events import LambdaContext, http_api_event

MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit


def make_server(host: str = "127.0.0.1", port: int = 3000) -> ThreadingHTTPServer:
    from handlers.api import lambda_handler  # loads the model once, like a container's init

    one_at_a_time = threading.Lock()  # a Lambda container serves one request at a time

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_REQUEST_BYTES:
                self._send(413, {"Content-Type": "application/json"}, json.dumps({"error": {
                    "code": "request_too_large",
                    "message": f"Requests are limited to {MAX_REQUEST_BYTES} bytes."}}).encode())
                self.close_connection = True
                return
            body = self.rfile.read(length) if length else b""
            path, _, query = self.path.partition("?")
            event = http_api_event(self.command, path, dict(self.headers.items()), body, query,
                                   source_ip=self.client_address[0])
            with one_at_a_time:
                answer = lambda_handler(event, LambdaContext())
            body = answer.get("body") or ""
            payload = base64.b64decode(body) if answer.get("isBase64Encoded") else body.encode("utf-8")
            self._send(answer["statusCode"], answer.get("headers", {}), payload)

        def _send(self, status: int, headers: dict, payload: bytes):
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def __getattr__(self, name):
            # Every method (do_GET, do_TRACE, do_QUERY, ...) reaches the handler, which
            # answers 405 with Allow for one a path does not take.
            if name.startswith("do_"):
                return self._handle
            raise AttributeError(name)

        def log_message(self, fmt, *args):  # the handler logs each request itself
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    args = p.parse_args(argv)
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")  # no metric lines among the logs
    server = make_server(args.host, args.port)
    print(f"listening on http://{args.host}:{server.server_port} (demo page: /, POST /emotion, POST /main, GET /openapi.json); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
