"""function/web/openapi.yaml is the API's contract: it is valid OpenAPI 3.1, the
function serves it, every sample event's answer follows it (openapi-core, a real
validator), and schemathesis finds nothing outside it against `make serve`."""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from botocore.stub import Stubber
import yaml
from conftest import EVENTS, ROOT
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate as validate_spec

from emotion import annotate, rekognition
from emotion.config import Settings
from handlers import api, runtime
from local import serve
from local.events import LambdaContext, http_api_event
from local.fuzz import schema_validator

CONTRACT = ROOT / "function" / "web" / "openapi.yaml"
API_EVENTS = sorted(p.name for p in EVENTS.glob("*.json") if not p.name.startswith(("s3-", "sqs-")))


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(CONTRACT.read_text())


@pytest.fixture(scope="module")
def openapi(spec) -> OpenAPI:
    return OpenAPI.from_dict(spec)




def event_request(event: dict) -> MockRequest:
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    body = event.get("body") or ""
    data = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
    method = event.get("requestContext", {}).get("http", {}).get("method") or event.get("httpMethod")
    path = event.get("rawPath") or event.get("path")
    query = event.get("queryStringParameters") or {}
    return MockRequest("http://127.0.0.1:3000", method.lower(), path, args=query, headers=headers, data=data,
                       content_type=headers.get("content-type", ""))


def answer_response(answer: dict) -> MockResponse:
    body = answer["body"]
    data = base64.b64decode(body) if answer["isBase64Encoded"] else body.encode()
    return MockResponse(data, status_code=answer["statusCode"], headers=answer["headers"],
                        content_type=answer["headers"]["Content-Type"])


def test_the_contract_is_valid_openapi_3_1(spec):
    validate_spec(spec)
    assert spec["openapi"].startswith("3.1")
    assert {"/emotion", "/main", "/", "/openapi.json"} == set(spec["paths"])


def test_the_function_serves_the_contract_as_json(spec):
    answer = api.lambda_handler(http_api_event("GET", "/openapi.json", {}), LambdaContext())
    assert answer["statusCode"] == 200 and answer["headers"]["Content-Type"] == "application/json"
    assert json.loads(answer["body"]) == spec


@pytest.mark.parametrize("name", API_EVENTS)
def test_every_sample_events_answer_follows_the_contract(name, spec, openapi):
    event = json.loads((EVENTS / name).read_text())
    answer = api.lambda_handler(event, LambdaContext())
    request, response = event_request(event), answer_response(answer)
    body = json.loads(answer["body"])
    if name.startswith("bad-route") or name.startswith("bad-method"):
        # Outside the contract's paths or methods: still its Error schema.
        schema_validator("Error").validate(body)
        assert answer["statusCode"] in (404, 405)
        return
    openapi.validate_response(request, response)
    if name.startswith("bad-"):
        assert 400 <= answer["statusCode"] < 500, body
    else:
        openapi.validate_request(request)  # the good sample requests follow the contract too
        assert answer["statusCode"] == 200


def test_an_annotated_answer_follows_the_contract(openapi, group_jpeg):
    event = http_api_event("POST", "/emotion", {"Content-Type": "image/jpeg"}, group_jpeg, query="annotate=1")
    event["queryStringParameters"] = {"annotate": "1"}
    answer = api.lambda_handler(event, LambdaContext())
    assert answer["headers"]["Content-Type"] == "image/jpeg"
    openapi.validate_response(event_request(event), answer_response(answer))


@pytest.mark.parametrize("rekognition_answers", ["a face", "an error"])
def test_rekognitions_answers_follow_the_contract(spec, coffee_jpeg, rekognition_answers):
    """The fallback's faces (with rekognition_type) and its failure (fallback_error)."""
    s = runtime.settings
    client = rekognition.client(s.rekognition_region, s.rekognition_connect_timeout,
                                s.rekognition_read_timeout, s.rekognition_max_attempts)
    with Stubber(client) as stubber:
        if rekognition_answers == "a face":
            stubber.add_response("detect_faces", {"FaceDetails": [{
                "BoundingBox": {"Width": 0.25, "Height": 0.5, "Left": 0.5, "Top": 0.25}, "Confidence": 99.9,
                "Emotions": [{"Type": "CALM", "Confidence": 70.0}, {"Type": "CONFUSED", "Confidence": 30.0}]}]})
        else:
            stubber.add_client_error("detect_faces", "ThrottlingException", "Rate exceeded", 400)
        answer = api.lambda_handler(http_api_event("POST", "/emotion", {"Content-Type": "image/jpeg"}, coffee_jpeg),
                                    LambdaContext())
    body = json.loads(answer["body"])
    schema_validator("Analysis").validate(body)
    if rekognition_answers == "a face":
        assert body["source"] == "rekognition" and body["faces"][0]["rekognition_type"] == "CALM"
    else:
        assert body["fallback_error"]["code"] == "ThrottlingException" and body["faces"] == []


def test_every_error_code_the_api_can_answer_is_in_the_contract(spec):
    enum = set(spec["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"])
    sources = [ROOT / "function" / "handlers" / f for f in ("api.py", "http.py")] + \
        [ROOT / "function" / "emotion" / "images.py", ROOT / "function" / "local" / "serve.py"]
    codes = {code for path in sources for code in re.findall(r'InputError\(\s*"([a-z0-9_]+)"', path.read_text())}
    codes |= {"internal_error", "request_too_large"}
    assert codes <= enum, codes - enum
    assert enum - codes == set(), "codes the contract lists but nothing answers: " + str(enum - codes)


def test_the_contracts_limits_are_the_functions(spec):
    limits = spec["info"]["x-limits"]
    defaults = Settings()
    assert limits["max_image_bytes"] == defaults.max_image_bytes
    assert limits["max_image_pixels"] == defaults.max_image_pixels
    assert limits["max_request_bytes"] == serve.MAX_REQUEST_BYTES
    assert limits["annotated_max_side"] == annotate.MAX_SIDE
    template = (ROOT / "template.yaml").read_text()
    assert f'MAX_IMAGE_BYTES: "{limits["max_image_bytes"]}"' in template
    assert f'MAX_IMAGE_PIXELS: "{limits["max_image_pixels"]}"' in template
    assert f'{limits["max_image_bytes"]:,} bytes' in spec["info"]["description"]


def test_the_readme_points_at_the_contract():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The API", 1)[1].split("\n## ", 1)[0]
    assert "function/web/openapi.yaml" in section and "/openapi.json" in section


def test_schemathesis_finds_nothing_outside_the_contract(served, tmp_path):
    """Property-based requests (valid and invalid, a fixed seed, a bounded number)
    against `make serve`: no 5xx, every status, header, media type and body as the
    contract says.  Not checked: that every schema-valid request is accepted, since a
    body of random bytes is schema-valid and rightly refused as not an image."""
    cli = Path(sys.executable).parent / "schemathesis"
    run = subprocess.run(
        [str(cli), "run", str(CONTRACT), "--url", served, "--seed", "20261203", "--max-examples", "40",
         "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--mode", "all", "--workers", "1",
         "--request-timeout", "30", "--generation-database", "none", "--no-color"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(ROOT / "tests" / "schemathesis_hooks.py")})
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    cases = int(re.search(r"(\d+) generated", output).group(1))
    assert cases >= 100 and "Examples" in output, output[-3000:]
    # the contract's example photo was sent and answered 200 on both analysis routes
    assert requests.post(served + "/emotion", json=spec_example()).status_code == 200


def spec_example() -> dict:
    return yaml.safe_load(CONTRACT.read_text())["components"]["examples"]["FaceCrop"]["value"]
