"""The local ways in: the prototype's client over real HTTP against `make serve`, and
the handler under the real Lambda runtime interface client (awslambdaric)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading

import pytest
import requests
from conftest import EVENTS, IMAGES, ROOT

from emotion.model import CLASSES


@pytest.fixture(scope="module")
def server():
    from local.serve import make_server

    srv = make_server("127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def test_the_prototypes_client_still_works(server):
    # Exactly what the Flask prototype's client did.
    photo = IMAGES / "astronaut.jpg"
    r = requests.post(server + "/main", data={"image": base64.b64encode(open(photo, "rb").read())}, timeout=60)
    assert r.status_code == 200
    assert r.json()["emotion"] == "HAPPY"


def test_curl_style_multipart_upload_and_raw_body(server, astronaut_jpeg):
    r = requests.post(server + "/emotion", files={"image": ("face.jpg", astronaut_jpeg, "image/jpeg")}, timeout=60)
    assert r.status_code == 200 and len(r.json()["faces"]) == 1
    r = requests.post(server + "/emotion", data=astronaut_jpeg, headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert r.status_code == 200 and r.json()["faces"][0]["emotion"] in CLASSES


def test_http_errors_are_json(server):
    r = requests.get(server + "/emotion", timeout=10)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = requests.post(server + "/nope", data=b"x", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = requests.post(server + "/emotion", json={"image": "%%%"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_base64"


def test_under_the_real_runtime_interface_client():
    from local.runtime_api import RuntimeAPI

    api = RuntimeAPI()
    client = api.start_client("handlers.api.lambda_handler")
    try:
        kind, answer = api.invoke(json.loads((EVENTS / "http-api-prototype-form.json").read_text()))
        assert kind == "response", answer
        assert answer["statusCode"] == 200
        assert json.loads(answer["body"])["emotion"] == "HAPPY"
        kind, answer = api.invoke(json.loads((EVENTS / "bad-base64.json").read_text()))
        assert (kind, answer["statusCode"]) == ("response", 400)
    finally:
        client.terminate()
        client.wait(10)
        api.close()


def test_local_invoke_prints_the_response():
    out = subprocess.run([sys.executable, "-m", "local.invoke", str(EVENTS / "http-api-jpeg.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "function"), str(ROOT)])}).stdout
    answer = json.loads(out[out.index('{\n  "statusCode"'):])
    assert answer["statusCode"] == 200 and answer["body"]["emotion"] == "HAPPY"
