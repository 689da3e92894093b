"""template.yaml, samconfig.toml, function/Dockerfile and .dockerignore, checked without
an AWS account, Docker or the network.

* ``sam validate`` and ``sam validate --lint`` (the tools environment: ``make tools``);
* the template SAM actually produces (SAM CLI's own translator, as ``sam validate``
  runs it) is linted too: cfn-lint finds a circular dependency between the bucket, its
  notification and the S3 function's role there, not in the SAM template;
* least privilege of both roles, the routes, timeouts, the bucket, the queue, the
  asynchronous-invocation settings;
* S3 recursion: no result key ``handlers.s3.result_key`` computes for an upload can
  match any of the bucket's notification filters, while the upload matches one;
* the Docker build context ``sam build`` would send (docker-py, as SAM CLI uses it).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from itertools import combinations
from pathlib import Path

import pytest
import yaml

from bench.run import MEMORY_MB

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".tools" / "bin"
SAM = TOOLS / "sam"
TEMPLATE = ROOT / "template.yaml"
REGION = "ap-northeast-2"

# Pseudo parameters of an imaginary deployment, to evaluate the template's intrinsics.
PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": REGION,
    "AWS::AccountId": "123456789012",
    "AWS::StackName": "emotion-service",
    "AWS::StackId": f"arn:aws:cloudformation:{REGION}:123456789012:stack/emotion-service/"
                    "1c2fa620-982a-11e3-aff7-50e2416294e0",
    "AWS::URLSuffix": "amazonaws.com",
}

IMAGE_SUFFIXES = {".jpg", ".JPG", ".Jpg", ".jpeg", ".JPEG", ".Jpeg", ".png", ".PNG", ".Png"}
UPLOAD_KEYS = ["a.jpg", "x/Photo.JPG", "IMG_0001.JPEG", "scan.Png", "deep/dir/face.jpeg",
               "a b+c.png", "Holiday.Jpg", "LOGO.PNG", "portrait.Jpeg"]
NOT_IMAGES = ["notes.txt", "a.gif", "a.jpg.json", "a.jpgx", "jpg", "x/"]


# ---- reading CloudFormation ------------------------------------------------------------

class CfnLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus CloudFormation's short tags (!Ref, !Sub, !GetAtt, ...)."""


def _cfn_tag(loader: CfnLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def resolve(value, params: dict, pseudo: dict = PSEUDO):
    """Evaluate the intrinsics the template uses, for parameter values ``params``;
    a resource's Ref or attribute becomes ``<Name>`` / ``<Name.Attr>``."""
    names = {**pseudo, **params}
    if isinstance(value, list):
        return [resolve(v, params, pseudo) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (key, arg), = value.items()
        if key == "Ref":
            return names.get(arg, f"<{arg}>")
        if key == "Fn::GetAtt":
            return f"<{'.'.join(arg)}>"
        if key == "Fn::Sub":
            text, local = (arg, {}) if isinstance(arg, str) else arg
            local = {k: resolve(v, params, pseudo) for k, v in local.items()}
            return re.sub(r"\$\{([^}!]+)\}",
                          lambda m: str({**names, **local}.get(m.group(1), f"<{m.group(1)}>")), text)
        if key == "Fn::Select":
            index, items = resolve(arg, params, pseudo)
            return items[int(index)]
        if key == "Fn::Split":
            sep, text = resolve(arg, params, pseudo)
            return text.split(sep)
        if key == "Fn::Join":
            sep, items = resolve(arg, params, pseudo)
            return sep.join(items)
    return {k: resolve(v, params, pseudo) for k, v in value.items()}


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)


@pytest.fixture(scope="module")
def defaults(template) -> dict:
    return {name: str(p["Default"]) for name, p in template["Parameters"].items()}


def props(template, name: str) -> dict:
    return template["Resources"][name]["Properties"]


def function_setting(template, function: str, key: str):
    """A function's property, or the Globals' one it inherits."""
    own = props(template, function)
    return own[key] if key in own else template["Globals"]["Function"][key]


def function_env(template, function: str, params: dict) -> dict:
    env = {**template["Globals"]["Function"]["Environment"]["Variables"],
           **props(template, function).get("Environment", {}).get("Variables", {})}
    return {name: str(resolve(value, params)) for name, value in env.items()}


def statements(template, function: str, params: dict) -> list[dict]:
    found = []
    for policy in props(template, function)["Policies"]:
        assert isinstance(policy, dict) and "Statement" in policy, \
            f"{function}: only inline policy documents (no managed policy, no SAM policy template)"
        found += resolve(policy["Statement"], params)
    return found


def s3_filters(template, params: dict) -> dict[str, tuple[str, str]]:
    """Event name -> (prefix, suffix) of every S3 event of EmotionS3Function."""
    filters = {}
    for name, event in props(template, "EmotionS3Function")["Events"].items():
        assert event["Type"] == "S3", name
        rules = {r["Name"].lower(): resolve(r["Value"], params)
                 for r in event["Properties"]["Filter"]["S3Key"]["Rules"]}
        assert set(rules) == {"prefix", "suffix"}, f"{name}: one prefix and one suffix rule"
        filters[name] = (rules["prefix"], rules["suffix"])
    return filters


def matches(key: str, prefix: str, suffix: str) -> bool:
    """S3's key filter: case-sensitive prefix and suffix."""
    return key.startswith(prefix) and key.endswith(suffix)


# ---- the tools environment -------------------------------------------------------------

@pytest.fixture(scope="module")
def tools_env(tmp_path_factory) -> dict:
    for tool in ("sam", "cfn-lint", "python"):
        if not (TOOLS / tool).exists():
            pytest.fail(f"{TOOLS / tool} is missing: run `make tools` (AWS SAM CLI in its own "
                        "environment, .tools/)", pytrace=False)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({
        "SAM_CLI_TELEMETRY": "0",
        "__SAM_CLI_APP_DIR": str(tmp_path_factory.mktemp("sam-cli")),  # not ~/.aws-sam
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    return env


def run(args: list, env: dict, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


TRANSLATE = """
import json, sys
from samcli.lib.translate.sam_template_validator import SamTemplateValidator
from samcli.yamlhelper import yaml_parse

class NoManagedPolicies:
    def load(self):
        raise AssertionError("a managed policy by name: translating it would ask IAM")

template = yaml_parse(open(sys.argv[1]).read())
out = SamTemplateValidator(template, NoManagedPolicies(), region=sys.argv[2]).get_translated_template_if_valid()
print(json.dumps(yaml_parse(out)))
"""


@pytest.fixture(scope="module")
def translated(tools_env) -> dict:
    """The CloudFormation template the SAM transform makes of template.yaml (the code
    path of `sam validate`; the placeholder ImageUri is SAM CLI's)."""
    done = run([TOOLS / "python", "-c", TRANSLATE, TEMPLATE, REGION], tools_env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# ---- SAM CLI -----------------------------------------------------------------------------

@pytest.mark.parametrize("lint", [[], ["--lint"]], ids=["translate", "lint"])
def test_sam_validate(tools_env, lint):
    done = run([SAM, "validate", *lint, "--region", REGION, "--template-file", TEMPLATE], tools_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is a valid SAM Template" in done.stdout


def test_translated_template_passes_cfn_lint(tools_env, translated, tmp_path):
    """Among others E3004: a Ref/GetAtt of the bucket in the S3 function's policy would
    close the loop bucket -> notification permission -> function -> role -> bucket,
    which CloudFormation refuses; `sam validate --lint` does not see it."""
    path = tmp_path / "translated.json"
    path.write_text(json.dumps(translated))
    done = run([TOOLS / "cfn-lint", "--regions", REGION, "--", path], tools_env)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- parameters and settings -----------------------------------------------------------

def test_parameters(template):
    from emotion.config import FALLBACK_MODES

    params = template["Parameters"]
    assert params["FallbackMode"]["AllowedValues"] == list(FALLBACK_MODES)
    assert params["FallbackMode"]["Default"] == "no-face"
    assert float(params["ConfidenceThreshold"]["Default"]) == 0.55
    assert params["UploadPrefix"]["Default"] == "uploads/"
    pattern = params["UploadPrefix"]["AllowedPattern"]
    for good in ("uploads/", "photos/in/", "Uploads-2024/"):
        assert re.fullmatch(pattern, good), good
    for bad in ("", "uploads", "/", "results/", "results/x/", "a//", "a*/", "up?/"):
        assert not re.fullmatch(pattern, bad), bad


def test_every_setting_the_code_reads_is_in_the_template(template, defaults):
    config = (ROOT / "function" / "emotion" / "config.py").read_text()
    s3_handler = (ROOT / "function" / "handlers" / "s3.py").read_text()
    read_by_pipeline = set(re.findall(r'_env\("([A-Z0-9_]+)"', config))
    read_by_s3 = set(re.findall(r'os\.environ\.get\("([A-Z0-9_]+)"', s3_handler))
    assert {"MODEL_DIR", "FALLBACK_MODE", "DETECTOR", "DETECTOR_DIR", "DETECT_MIN_FACE"} <= read_by_pipeline
    assert {"UPLOAD_PREFIX", "RESULTS_PREFIX", "MAX_OBJECT_BYTES"} <= read_by_s3
    powertools = {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE"}
    api_env = function_env(template, "EmotionFunction", defaults)
    s3_env = function_env(template, "EmotionS3Function", defaults)
    assert read_by_pipeline | powertools <= set(api_env)
    assert read_by_pipeline | powertools | read_by_s3 <= set(s3_env)
    assert api_env["POWERTOOLS_SERVICE_NAME"] == "emotion"
    assert api_env["POWERTOOLS_METRICS_NAMESPACE"] == "EmotionService"
    assert api_env["MODEL_DIR"] == "/opt/model"
    assert api_env["REKOGNITION_REGION"] == REGION


def test_the_code_accepts_the_template_settings(template, defaults, monkeypatch):
    from emotion.config import Settings

    for name, value in function_env(template, "EmotionFunction", defaults).items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert settings.fallback_mode == defaults["FallbackMode"]
    assert settings.confidence_threshold == float(defaults["ConfidenceThreshold"])
    # A Rekognition call that keeps failing gives up well before the API function does.
    worst = (settings.rekognition_connect_timeout + settings.rekognition_read_timeout) \
        * settings.rekognition_max_attempts
    assert worst < function_setting(template, "EmotionFunction", "Timeout") - 5


# ---- the API function ------------------------------------------------------------------

def test_both_functions_are_the_same_image(template):
    for name, command in (("EmotionFunction", "handlers.api.lambda_handler"),
                          ("EmotionS3Function", "handlers.s3.lambda_handler")):
        assert props(template, name)["PackageType"] == "Image"
        assert props(template, name)["ImageConfig"]["Command"] == [command]
        assert function_setting(template, name, "Architectures") == ["x86_64"]
        # chosen by cost: the row bench/run.py marks "chosen" in BENCHMARKS.md's cost table
        assert function_setting(template, name, "MemorySize") == MEMORY_MB == 1769
    metadata = template["Resources"]["EmotionFunction"]["Metadata"]
    assert metadata == {"Dockerfile": "function/Dockerfile", "DockerContext": ".",
                        "DockerTag": "python3.12-v1"}
    # Equal Metadata: one build definition, so `sam build` builds the image once.
    assert template["Resources"]["EmotionS3Function"]["Metadata"] == metadata


def test_api_function_may_only_detect_faces(template, defaults, translated):
    assert statements(template, "EmotionFunction", defaults) == [
        {"Sid": "DetectFacesFallback", "Effect": "Allow", "Action": "rekognition:DetectFaces",
         "Resource": "*"}]
    role = translated["Resources"]["EmotionFunctionRole"]["Properties"]
    # SAM's own addition: CloudWatch Logs, nothing else.
    assert role["ManagedPolicyArns"] == ["arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"]
    actions = {a for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]
               for a in as_list(s["Action"])}
    assert actions == {"rekognition:DetectFaces"}


def test_api_routes(template, translated):
    from handlers.api import ANALYSE, PAGES

    events = props(template, "EmotionFunction")["Events"]
    routes = set()
    for name, event in events.items():
        assert event["Type"] == "HttpApi", name
        assert event["Properties"]["ApiId"] == {"Ref": "EmotionApi"}, name
        routes.add((event["Properties"]["Method"].upper(), event["Properties"]["Path"]))
    named = {("POST", route) for route in ANALYSE} | {("GET", page) for page in PAGES}
    assert named <= routes
    # Every other path and method reaches the function (its own JSON 404/405)...
    others = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}
    assert {(method, "/{proxy+}") for method in others} <= routes
    assert routes == named | {(m, "/{proxy+}") for m in others}
    # ...except OPTIONS: the CORS preflight stays with API Gateway.
    assert not any(method in ("OPTIONS", "ANY") for method, _ in routes)
    cors = props(template, "EmotionApi")["CorsConfiguration"]
    assert "POST" in cors["AllowMethods"] and "content-type" in cors["AllowHeaders"]

    body = translated["Resources"]["EmotionApi"]["Properties"]["Body"]
    assert {(m.upper(), p) for p, ops in body["paths"].items() for m in ops} == routes
    assert body["x-amazon-apigateway-cors"]["allowMethods"] == cors["AllowMethods"]


def test_timeouts(template, translated):
    api_timeout = function_setting(template, "EmotionFunction", "Timeout")
    assert api_timeout < 29  # API Gateway gives up on the integration at 29-30 s
    body = translated["Resources"]["EmotionApi"]["Properties"]["Body"]
    for path, ops in body["paths"].items():
        for method, op in ops.items():
            # API Gateway waits for the function's own answer, even a timeout's.
            assert api_timeout * 1000 < op["x-amazon-apigateway-integration"]["timeoutInMillis"] <= 30000, \
                (method, path)
    s3_timeout = function_setting(template, "EmotionS3Function", "Timeout")
    assert api_timeout <= s3_timeout <= 900


def test_outputs(template):
    outputs = template["Outputs"]
    assert outputs["EmotionApiUrl"]["Value"] == {
        "Fn::Sub": "https://${EmotionApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/emotion"}
    assert outputs["EmotionFunctionArn"]["Value"] == {"Fn::GetAtt": ["EmotionFunction", "Arn"]}
    assert outputs["UploadBucketName"]["Value"] == {"Ref": "UploadBucket"}
    assert outputs["FailedUploadsQueueUrl"]["Value"] == {"Ref": "FailedUploadsQueue"}


# ---- the upload bucket, the S3 function, the queue ----------------------------------

def bucket_name(template, params: dict, pseudo: dict = PSEUDO) -> str:
    return resolve(props(template, "UploadBucket")["BucketName"], params, pseudo)


def test_upload_bucket(template, defaults):
    bucket = props(template, "UploadBucket")
    encryption = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption and all(rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
                              for rule in encryption)
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True,
        "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    # A valid bucket name whatever the stack is called (S3 wants lower case, <= 63).
    for stack in ("emotion-service", "Emotion-Service-PROD"):
        pseudo = {**PSEUDO, "AWS::StackName": stack,
                  "AWS::StackId": PSEUDO["AWS::StackId"].replace("emotion-service", stack)}
        name = bucket_name(template, defaults, pseudo)
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", name), name


def test_s3_function_reads_uploads_and_writes_results_only(template, defaults, translated):
    env = function_env(template, "EmotionS3Function", defaults)
    bucket_arn = f"arn:aws:s3:::{bucket_name(template, defaults)}"
    granted: dict[str, set] = {}
    for statement in statements(template, "EmotionS3Function", defaults):
        assert statement["Effect"] == "Allow" and not {"NotAction", "NotResource"} & set(statement)
        for action in as_list(statement["Action"]):
            granted.setdefault(action, set()).update(as_list(statement["Resource"]))
    assert granted == {
        "s3:GetObject": {f"{bucket_arn}/{env['UPLOAD_PREFIX']}*"},
        "s3:GetObjectVersion": {f"{bucket_arn}/{env['UPLOAD_PREFIX']}*"},
        "s3:ListBucket": {bucket_arn},  # so a deleted object reads as 404 (skipped), not 403
        "s3:PutObject": {f"{bucket_arn}/{env['RESULTS_PREFIX']}*"},
        "rekognition:DetectFaces": {"*"},
    }
    assert env["UPLOAD_PREFIX"] == "uploads/" and env["RESULTS_PREFIX"] == "results/"

    # The role SAM makes: the same, plus the on-failure destination and the logs.
    role = translated["Resources"]["EmotionS3FunctionRole"]["Properties"]
    assert role["ManagedPolicyArns"] == ["arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"]
    in_role: dict[str, list] = {}
    for policy in role["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            for action in as_list(statement["Action"]):
                in_role.setdefault(action, []).append(statement["Resource"])
    assert set(in_role) == set(granted) | {"sqs:SendMessage"}
    assert in_role["sqs:SendMessage"] == [{"Fn::GetAtt": ["FailedUploadsQueue", "Arn"]}]


def test_failed_events_end_in_the_queue(template, translated):
    config = props(template, "EmotionS3Function")["EventInvokeConfig"]
    assert 0 <= config["MaximumRetryAttempts"] <= 2
    assert 60 <= config["MaximumEventAgeInSeconds"] <= 3600
    assert config["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS", "Destination": {"Fn::GetAtt": ["FailedUploadsQueue", "Arn"]}}
    queue = props(template, "FailedUploadsQueue")
    assert queue.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in queue
    assert queue["MessageRetentionPeriod"] == 14 * 24 * 3600
    made = translated["Resources"]["EmotionS3FunctionEventInvokeConfig"]["Properties"]
    assert made["Qualifier"] == "$LATEST"
    assert made["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["FailedUploadsQueue", "Arn"]}


def test_s3_event_filters(template, defaults, translated):
    filters = s3_filters(template, defaults)
    for name, event in props(template, "EmotionS3Function")["Events"].items():
        assert event["Properties"]["Bucket"] == {"Ref": "UploadBucket"}, name
        assert event["Properties"]["Events"] == "s3:ObjectCreated:*", name
    assert {prefix for prefix, _ in filters.values()} == {defaults["UploadPrefix"]}
    suffixes = [suffix for _, suffix in filters.values()]
    assert sorted(suffixes) == sorted(IMAGE_SUFFIXES)
    # S3 refuses two configurations of one event type whose filters overlap.
    for (p1, s1), (p2, s2) in combinations(filters.values(), 2):
        assert not ((p1.startswith(p2) or p2.startswith(p1)) and (s1.endswith(s2) or s2.endswith(s1))), \
            (s1, s2)
    # What SAM hands S3: one Lambda configuration per event, to the S3 function.
    configs = translated["Resources"]["UploadBucket"]["Properties"]["NotificationConfiguration"][
        "LambdaConfigurations"]
    assert len(configs) == len(filters)
    made = set()
    for config in configs:
        assert config["Event"] == "s3:ObjectCreated:*"
        assert config["Function"] == {"Fn::GetAtt": ["EmotionS3Function", "Arn"]}
        rules = {r["Name"]: resolve(r["Value"], defaults) for r in config["Filter"]["S3Key"]["Rules"]}
        made.add((rules["prefix"], rules["suffix"]))
    assert made == set(filters.values())


@pytest.fixture
def result_key(template, defaults, monkeypatch):
    """handlers.s3.result_key, with the handler's options as the template sets them."""
    from handlers import s3

    for name, value in function_env(template, "EmotionS3Function", defaults).items():
        if name in ("UPLOAD_PREFIX", "RESULTS_PREFIX", "MAX_OBJECT_BYTES"):
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(s3, "options", s3.Options.from_env(s3.settings.max_image_bytes))
    return s3.result_key


@pytest.mark.parametrize("upload_prefix", ["uploads/", "photos/in/"])
def test_a_result_never_triggers_the_function_again(template, defaults, result_key, upload_prefix):
    params = {**defaults, "UploadPrefix": upload_prefix}
    filters = s3_filters(template, params)

    def triggered_by(key: str) -> list[str]:
        return [name for name, (prefix, suffix) in filters.items() if matches(key, prefix, suffix)]

    assert result_key("uploads/a.jpg") == "results/uploads/a.jpg.json"
    samples = [upload_prefix + key for key in UPLOAD_KEYS]
    samples += [prefix + "photo" + suffix for prefix, suffix in filters.values()]
    for key in samples:
        assert len(triggered_by(key)) == 1, key  # an upload triggers the function once
        result = result_key(key)
        assert triggered_by(result) == [], (key, result)
        assert triggered_by(result_key(result)) == [], result
    for key in [upload_prefix + k for k in NOT_IMAGES] + ["other/a.jpg", "results/a.jpg",
                                                          upload_prefix.upper() + "a.jpg"]:
        assert triggered_by(key) == [], key


# ---- samconfig.toml ------------------------------------------------------------------

def test_samconfig(template):
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    assert config["version"] == 0.1
    default = config["default"]
    assert default["global"]["parameters"]["stack_name"] == "emotion-service"
    assert default["global"]["parameters"]["region"] == REGION
    deploy = default["deploy"]["parameters"]
    assert deploy["region"] == REGION
    assert deploy["capabilities"] == "CAPABILITY_IAM"
    assert deploy["resolve_image_repos"] is True
    overrides = dict(item.split("=", 1) for item in deploy["parameter_overrides"].split())
    params = template["Parameters"]
    assert set(overrides) == set(params)
    assert overrides["FallbackMode"] in params["FallbackMode"]["AllowedValues"]
    assert params["ConfidenceThreshold"]["MinValue"] <= float(overrides["ConfidenceThreshold"]) \
        <= params["ConfidenceThreshold"]["MaxValue"]
    assert re.fullmatch(params["UploadPrefix"]["AllowedPattern"], overrides["UploadPrefix"])
    # `lint = true` here would turn plain `sam validate` into lint only.
    assert "lint" not in default.get("validate", {}).get("parameters", {})


# ---- the image -------------------------------------------------------------------------

CONTEXT = """
import json, os, sys
from docker.utils.build import exclude_paths
root = sys.argv[1]
with open(os.path.join(root, ".dockerignore")) as f:   # read as docker-py's APIClient.build does
    patterns = [line.strip() for line in f.read().splitlines()]
patterns = [p for p in patterns if p and p[0] != "#"]
print(json.dumps(sorted(p for p in exclude_paths(root, patterns, dockerfile=sys.argv[2])
                        if os.path.isfile(os.path.join(root, p)))))
"""


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "function" / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile(template):
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "public.ecr.aws/lambda/python:3.12")
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert "-r /tmp/requirements.txt" in runs and "torch" not in runs  # the network runs through onnxruntime
    assert not any(op == "ADD" for op, _ in instructions)
    copies = [arg.split() for op, arg in instructions if op == "COPY"]
    manifest = json.loads((ROOT / "layers" / "model" / "manifest.json").read_text())
    assert ["layers/model/manifest.json", f"layers/model/{manifest['onnx_int8']['file']}",
            f"layers/model/{manifest['onnx']['file']}", "/opt/model/"] in copies
    assert ["function/emotion/", "${LAMBDA_TASK_ROOT}/emotion/"] in copies
    assert ["function/handlers/", "${LAMBDA_TASK_ROOT}/handlers/"] in copies
    assert ["function/web/", "${LAMBDA_TASK_ROOT}/web/"] in copies  # the demo page and the contract
    env = " ".join(arg for op, arg in instructions if op == "ENV")
    assert "MODEL_DIR=/opt/model" in env.split()
    cmd = [arg for op, arg in instructions if op == "CMD"]
    assert [json.loads(c) for c in cmd] == [props(template, "EmotionFunction")["ImageConfig"]["Command"]]


def test_docker_context(tools_env):
    """What `sam build` sends to Docker (DockerContext ".": the repository root)."""
    done = run([TOOLS / "python", "-c", CONTEXT, ROOT, "function/Dockerfile"], tools_env)
    assert done.returncode == 0, done.stderr
    context = set(json.loads(done.stdout))
    copied = {"function/Dockerfile", "function/requirements.txt", "function/trim_site_packages.py",
              "layers/model/manifest.json", "layers/model/resnet9_fer2013.onnx",
              "layers/model/resnet9_fer2013.int8.onnx"}
    for package in ("emotion", "handlers"):
        copied |= {str(p.relative_to(ROOT)) for p in (ROOT / "function" / package).glob("*.py")}
    copied |= {"function/web/index.html", "function/web/openapi.yaml"}
    manifest = json.loads((ROOT / "layers" / "model" / "manifest.json").read_text())
    assert f"layers/model/{manifest['onnx']['file']}" in context
    assert f"layers/model/{manifest['onnx_int8']['file']}" in context
    assert f"layers/model/{manifest['weights']}" not in context  # training's fp16 state_dict
    assert copied <= context
    for path in context:
        assert not path.startswith((".git/", ".venv/", ".tools/", ".aws-sam/", "tests/", "training/",
                                    "bench/", "events/", "function/local/")), path
        assert "__pycache__" not in path and not path.endswith(".pyc"), path


WITHOUT = """
import importlib.abc, json, sys
blocked = set(sys.argv[1].split(","))
for name in [m for m in sys.modules if m.split(".")[0] in blocked]:
    del sys.modules[name]   # put there at start-up by a .pth file of this venv


class NotInTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is not in the Lambda image", name=name)


sys.meta_path.insert(0, NotInTheImage())
import handlers.api, handlers.s3
from local.events import LambdaContext
answers = {}
for name in sys.argv[2:]:
    with open(name) as f:
        answer = handlers.api.lambda_handler(json.load(f), LambdaContext())
    answers[name] = {"status": answer["statusCode"], "body": json.loads(answer["body"])}
for path in ("/", "/openapi.json"):
    from local.events import http_api_event
    answer = handlers.api.lambda_handler(http_api_event("GET", path, {}), LambdaContext())
    answers[path] = {"status": answer["statusCode"], "type": answer["headers"]["Content-Type"]}
answers["onnxruntime"] = sys.modules["onnxruntime"].__file__
print(json.dumps(answers))
"""


def test_the_handlers_run_with_only_what_the_image_installs(tmp_path):
    """function/Dockerfile installs function/requirements.txt and nothing else (no torch),
    then trims it (function/trim_site_packages.py): the handlers must import and answer
    real requests with every other distribution of this environment (torch, onnx, moto,
    pytest, ...) unimportable, and with onnxruntime as trimmed."""
    from importlib.metadata import packages_distributions

    import onnxruntime
    from trim_site_packages import unneeded, trim
    site = tmp_path / "site"
    shutil.copytree(Path(onnxruntime.__file__).parent, site / "onnxruntime")
    doomed = unneeded(site)
    assert {p.name for p in doomed} >= {"quantization", "transformers", "tools", f"libonnxruntime.so.{onnxruntime.__version__}"}
    trim(site)
    assert not any(p.exists() for p in doomed)

    from bench.sizes import image_distributions
    image = image_distributions()
    assert {"opencv-python-headless", "numpy", "pillow", "aws-lambda-powertools"} <= set(image)
    assert "torch" not in image
    normal = lambda dist: dist.lower().replace("_", "-")  # noqa: E731
    blocked = sorted(module for module, dists in packages_distributions().items()
                     if not module.startswith("_") and all(normal(d) not in image for d in dists))
    assert {"torch", "onnx", "moto", "pytest"} <= set(blocked) and "cv2" not in blocked
    events = [ROOT / "events" / "http-api-jpeg.json", ROOT / "events" / "http-api-group.json",
              ROOT / "events" / "http-api-prototype-form.json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT / "function"), str(ROOT)]),
           "FALLBACK_MODE": "off", "AWS_REGION": "ap-northeast-2"}
    done = run([sys.executable, "-c", WITHOUT, ",".join(blocked), *events], env)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    one, group, prototype = (answers[str(e)] for e in events)
    assert answers["onnxruntime"] == str(site / "onnxruntime" / "__init__.py")  # the trimmed copy ran
    assert one["status"] == group["status"] == prototype["status"] == 200
    assert len(one["body"]["faces"]) == 1 and len(group["body"]["faces"]) >= 2
    assert prototype["body"]["emotion"] == one["body"]["faces"][0]["emotion"]
    assert answers["/"] == {"status": 200, "type": "text/html; charset=utf-8"}
    assert answers["/openapi.json"] == {"status": 200, "type": "application/json"}  # PyYAML is in the image
