"""template.yaml, samconfig.toml, function/Dockerfile and .dockerignore, checked without
an AWS account or Docker.

* ``sam validate`` and ``sam validate --lint`` (the tools environment: ``make tools``);
* the template SAM actually produces (SAM CLI's own translator, as ``sam validate``
  runs it) is linted too: what CloudFormation gets, SAM's roles included;
* least privilege of both roles, the routes, timeouts, the bucket; the way uploads reach
  the S3 function (bucket -> UploadsQueue -> event source mapping -> function, and no
  other way), the queue policy, the dead-letter queue and its alarm;
* S3 recursion: no result key ``handlers.s3.result_key`` computes for an upload can
  match any of the bucket's notification filters, while the upload matches one;
* the Docker build context ``sam build`` would send (docker-py, as SAM CLI uses it);
* both Architectures: every runtime requirement has a wheel for CPython 3.12 on
  manylinux x86_64 and aarch64 (``pip install --dry-run``: the only test here that needs
  the package index; it is skipped when the index cannot be reached).
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

from bench.run import MEMORY_MB
from local.queue import load_template

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
    return load_template(TEMPLATE)  # CloudFormation's short tags as {"Ref": ...}, {"Fn::Sub": ...}


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
    """A name (``QueueConfigurations[<i>]``) -> (prefix, suffix) of every notification
    configuration of UploadBucket: each of them ends in EmotionS3Function (through
    UploadsQueue), and the bucket notifies nothing else (no Lambda, SNS or EventBridge
    configuration escapes these filters)."""
    notification = props(template, "UploadBucket")["NotificationConfiguration"]
    assert set(notification) == {"QueueConfigurations"}, \
        "UploadBucket notifies UploadsQueue only: every notification passes s3_filters"
    filters = {}
    for index, config in enumerate(notification["QueueConfigurations"]):
        name = f"QueueConfigurations[{index}]"
        rules = {r["Name"].lower(): resolve(r["Value"], params) for r in config["Filter"]["S3Key"]["Rules"]}
        assert len(config["Filter"]["S3Key"]["Rules"]) == 2 and set(rules) == {"prefix", "suffix"}, \
            f"{name}: one prefix and one suffix rule"
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
overrides = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}  # parameter values, as `sam deploy` gives them
out = SamTemplateValidator(template, NoManagedPolicies(), region=sys.argv[2],
                           parameter_overrides=overrides).get_translated_template_if_valid()
print(json.dumps(yaml_parse(out)))
"""


def translate(tools_env: dict, overrides: dict | None = None) -> dict:
    """The SAM transform of template.yaml for these parameter values (the others: defaults)."""
    done = run([TOOLS / "python", "-c", TRANSLATE, TEMPLATE, REGION, json.dumps(overrides or {})], tools_env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def translated(tools_env) -> dict:
    """The CloudFormation template the SAM transform makes of template.yaml (the code
    path of `sam validate`; the placeholder ImageUri is SAM CLI's)."""
    return translate(tools_env)


# ---- SAM CLI -----------------------------------------------------------------------------

@pytest.mark.parametrize("lint", [[], ["--lint"]], ids=["translate", "lint"])
def test_sam_validate(tools_env, lint):
    done = run([SAM, "validate", *lint, "--region", REGION, "--template-file", TEMPLATE], tools_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is a valid SAM Template" in done.stdout


def test_translated_template_passes_cfn_lint(tools_env, translated, tmp_path):
    """Among others E3004: a Ref/GetAtt of the bucket in UploadsQueuePolicy (its
    aws:SourceArn) would close the loop bucket -> (DependsOn) queue policy -> bucket,
    which CloudFormation refuses: the policy builds the bucket's ARN from its name."""
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

    assert params["Architecture"]["AllowedValues"] == ["x86_64", "arm64"]
    assert params["Architecture"]["Default"] == "x86_64"
    # Every number's default within its own bounds, and those within what the service takes.
    for name, param in params.items():
        if param["Type"] == "Number":
            assert param["MinValue"] <= param["Default"] <= param["MaxValue"], name
    service_limits = {  # AWS::Lambda::EventSourceMapping with a standard queue; RedrivePolicy
        "QueueBatchSize": (1, 10000), "QueueBatchingWindowSeconds": (0, 300),
        "QueueMaximumConcurrency": (2, 1000), "QueueMaxReceiveCount": (1, 1000)}
    for name, (low, high) in service_limits.items():
        assert params[name]["Type"] == "Number", name
        assert low <= params[name]["MinValue"] and params[name]["MaxValue"] <= high, name
    # Lambda refuses a batch of more than 10 messages without a batching window.
    assert params["QueueBatchSize"]["Default"] <= 10 or params["QueueBatchingWindowSeconds"]["Default"] >= 1
    # A message that keeps failing is set aside after a few tries, not at the first
    # (perhaps passing) failure, nor after hours of retries.
    assert 2 <= params["QueueMaxReceiveCount"]["Default"] <= 10
    alarm_topic = params["AlarmTopicArn"]
    assert alarm_topic["Type"] == "String" and alarm_topic["Default"] == ""
    for good in ("", "arn:aws:sns:ap-northeast-2:123456789012:emotion-alarms",
                 "arn:aws-cn:sns:cn-north-1:123456789012:ops_topic"):
        assert re.fullmatch(alarm_topic["AllowedPattern"], good), good
    for bad in (" ", "emotion-alarms", "arn:aws:sqs:ap-northeast-2:123456789012:q",
                "arn:aws:sns:ap-northeast-2:1234:t", "arn:aws:sns:ap-northeast-2:123456789012:"):
        assert not re.fullmatch(alarm_topic["AllowedPattern"], bad), bad


def references(value) -> set[str]:
    """Every name a Ref, GetAtt or Sub of ``value`` refers to (resources, parameters,
    pseudo parameters, conditions)."""
    found = set()
    if isinstance(value, list):
        for item in value:
            found |= references(item)
    elif isinstance(value, dict):
        for key, arg in value.items():
            if key in ("Ref", "Condition") and isinstance(arg, str):
                found.add(arg)
            elif key == "Fn::GetAtt":
                found.add(arg[0])
            elif key == "Fn::Sub":
                text, local = (arg, {}) if isinstance(arg, str) else arg
                found |= set(re.findall(r"\$\{([^}!.]+)", text)) - set(local)
                found |= references(local)
            else:
                found |= references(arg)
    return found


def test_every_parameter_is_used(template):
    used = references({k: v for k, v in template.items() if k != "Parameters"})
    assert set(template["Parameters"]) <= used


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

def test_both_functions_are_the_same_image(template, defaults):
    for name, command in (("EmotionFunction", "handlers.api.lambda_handler"),
                          ("EmotionS3Function", "handlers.s3.lambda_handler")):
        assert props(template, name)["PackageType"] == "Image"
        assert props(template, name)["ImageConfig"]["Command"] == [command]
        assert function_setting(template, name, "Architectures") == [{"Ref": "Architecture"}]
        # chosen by cost: the row bench/run.py marks "chosen" in BENCHMARKS.md's cost table
        assert function_setting(template, name, "MemorySize") == MEMORY_MB == 1769
    metadata = template["Resources"]["EmotionFunction"]["Metadata"]
    assert metadata == {"Dockerfile": "function/Dockerfile", "DockerContext": ".",
                        "DockerTag": "python3.12-v1"}
    # Equal Metadata: one build definition, so `sam build` builds the image once.
    assert template["Resources"]["EmotionS3Function"]["Metadata"] == metadata
    # ... for the one processor both run on (test_every_wheel_exists_for_both_architectures).
    assert resolve(template["Globals"]["Function"]["Architectures"], defaults) == ["x86_64"]


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
    assert outputs["UploadsQueueUrl"]["Value"] == {"Ref": "UploadsQueue"}
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
        # what the event source mapping needs to work the queue (it polls with this role)
        "sqs:ReceiveMessage": {"<UploadsQueue.Arn>"},
        "sqs:DeleteMessage": {"<UploadsQueue.Arn>"},
        "sqs:GetQueueAttributes": {"<UploadsQueue.Arn>"},
    }
    assert env["UPLOAD_PREFIX"] == "uploads/" and env["RESULTS_PREFIX"] == "results/"

    # The role SAM makes: the same and the logs, nothing else -- in particular no
    # AWSLambdaSQSQueueExecutionRole (a SAM SQS event's: those actions on every queue),
    # and no sqs:SendMessage (there is no on-failure destination any more).
    role = translated["Resources"]["EmotionS3FunctionRole"]["Properties"]
    assert role["ManagedPolicyArns"] == ["arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"]
    in_role: dict[str, set] = {}
    for policy in role["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow" and not {"NotAction", "NotResource"} & set(statement)
            for action in as_list(statement["Action"]):
                in_role.setdefault(action, set()).update(as_list(resolve(statement["Resource"], defaults)))
    assert "sqs:SendMessage" not in in_role
    assert in_role == granted


def test_uploads_queue_and_its_dead_letter_queue(template):
    uploads, failed = props(template, "UploadsQueue"), props(template, "FailedUploadsQueue")
    # Lambda's advice: at least six times the function's timeout, so that a batch still
    # being worked on (or retried after throttling) is never handed out a second time.
    assert uploads["VisibilityTimeout"] >= 6 * function_setting(template, "EmotionS3Function", "Timeout")
    assert uploads["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": ["FailedUploadsQueue", "Arn"]},
                                        "maxReceiveCount": {"Ref": "QueueMaxReceiveCount"}}
    assert "RedrivePolicy" not in failed  # the end of the line
    for queue in (uploads, failed):
        assert queue.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in queue
        assert "FifoQueue" not in queue  # S3 notifies standard queues only
    assert failed["MessageRetentionPeriod"] == 14 * 24 * 3600
    # A message keeps its first enqueue time in a standard queue's dead-letter queue:
    # it must not outlive the dead-letter queue's retention before it gets there.
    assert uploads.get("MessageRetentionPeriod", 4 * 24 * 3600) <= failed["MessageRetentionPeriod"]


def test_only_this_bucket_may_send_to_the_queue(template, defaults):
    policy = props(template, "UploadsQueuePolicy")
    assert template["Resources"]["UploadsQueuePolicy"]["Type"] == "AWS::SQS::QueuePolicy"
    assert policy["Queues"] == [{"Ref": "UploadsQueue"}]
    statement, = policy["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow" and not {"NotAction", "NotResource", "NotPrincipal"} & set(statement)
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert as_list(statement["Action"]) == ["sqs:SendMessage"]
    assert as_list(statement["Resource"]) == [{"Fn::GetAtt": ["UploadsQueue", "Arn"]}]
    assert set(statement["Condition"]) == {"ArnEquals", "StringEquals"}
    # The bucket's own ARN, whatever the stack and account (the same expression as its name).
    for stack in ("emotion-service", "Emotion-Service-PROD"):
        pseudo = {**PSEUDO, "AWS::StackName": stack,
                  "AWS::StackId": PSEUDO["AWS::StackId"].replace("emotion-service", stack)}
        assert resolve(statement["Condition"], defaults, pseudo) == {
            "ArnEquals": {"aws:SourceArn": f"arn:aws:s3:::{bucket_name(template, defaults, pseudo)}"},
            "StringEquals": {"aws:SourceAccount": pseudo["AWS::AccountId"]}}
    # S3 checks it may send when the notification is configured: the policy comes first.
    assert "UploadsQueuePolicy" in as_list(template["Resources"]["UploadBucket"].get("DependsOn", []))


def test_the_queue_feeds_the_s3_function(template, translated):
    mapping = template["Resources"]["UploadsQueueMapping"]
    assert mapping["Type"] == "AWS::Lambda::EventSourceMapping"
    # the role must allow polling before the mapping starts (SAM names it <Function>Role)
    assert as_list(mapping.get("DependsOn", [])) == ["EmotionS3FunctionRole"]
    assert translated["Resources"]["EmotionS3FunctionRole"]["Type"] == "AWS::IAM::Role"
    assert mapping["Properties"] == {
        "EventSourceArn": {"Fn::GetAtt": ["UploadsQueue", "Arn"]},
        "FunctionName": {"Ref": "EmotionS3Function"},
        "BatchSize": {"Ref": "QueueBatchSize"},
        "MaximumBatchingWindowInSeconds": {"Ref": "QueueBatchingWindowSeconds"},
        "ScalingConfig": {"MaximumConcurrency": {"Ref": "QueueMaximumConcurrency"}},
        # handlers.s3 answers batchItemFailures: only the failed messages come back
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
    }
    made = translated["Resources"]["UploadsQueueMapping"]
    assert made["Properties"] == mapping["Properties"]
    assert as_list(made.get("DependsOn", [])) == ["EmotionS3FunctionRole"]


def test_failed_uploads_raise_the_alarm(template, defaults):
    alarm = template["Resources"]["FailedUploadsAlarm"]
    assert alarm["Type"] == "AWS::CloudWatch::Alarm"
    alarm = alarm["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["FailedUploadsQueue", "QueueName"]}}]
    # one message in the dead-letter queue is enough
    assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["Statistic"] in ("Maximum", "Sum") and alarm["EvaluationPeriods"] == 1
    assert alarm.get("TreatMissingData") == "notBreaching"  # SQS sends no data for an idle queue
    # Notifies AlarmTopicArn when it is given, nothing otherwise.
    assert template["Conditions"]["HasAlarmTopic"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]}
    # AlarmsTopic (AlarmEmail) and/or AlarmTopicArn: test_alarms_notify_the_topics
    assert alarm["AlarmActions"] == ALARM_ACTIONS
    assert defaults["AlarmTopicArn"] == ""


def test_s3_event_filters(template, defaults, translated):
    filters = s3_filters(template, defaults)
    for config in props(template, "UploadBucket")["NotificationConfiguration"]["QueueConfigurations"]:
        assert config["Event"] == "s3:ObjectCreated:*", config
        assert config["Queue"] == {"Fn::GetAtt": ["UploadsQueue", "Arn"]}, config
    assert {prefix for prefix, _ in filters.values()} == {defaults["UploadPrefix"]}
    suffixes = [suffix for _, suffix in filters.values()]
    assert sorted(suffixes) == sorted(IMAGE_SUFFIXES)
    # S3 refuses two configurations of one event type whose filters overlap.
    for (p1, s1), (p2, s2) in combinations(filters.values(), 2):
        assert not ((p1.startswith(p2) or p2.startswith(p1)) and (s1.endswith(s2) or s2.endswith(s1))), \
            (s1, s2)

    # What CloudFormation gets: these configurations, and SAM adds no Lambda one.
    made = translated["Resources"]["UploadBucket"]["Properties"]["NotificationConfiguration"]
    assert set(made) == {"QueueConfigurations"}  # no LambdaConfigurations
    assert made == props(template, "UploadBucket")["NotificationConfiguration"]
    # One way in: no S3 event (SAM's Lambda configuration and permission), no
    # asynchronous-invocation settings, and only the queue's event source mapping.
    function = props(template, "EmotionS3Function")
    assert "Events" not in function and "EventInvokeConfig" not in function
    resources = translated["Resources"]
    assert not [name for name, r in resources.items() if r["Type"] == "AWS::Lambda::EventInvokeConfig"]
    assert not [name for name, r in resources.items() if r["Type"] == "AWS::Lambda::Permission"
                and "EmotionS3Function" in references(r["Properties"]["FunctionName"])]
    assert [name for name, r in resources.items() if r["Type"] == "AWS::Lambda::EventSourceMapping"] \
        == ["UploadsQueueMapping"]


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


# ---- who may call, alarms and what is kept ---------------------------------------------

NO_VALUE = {"Ref": "AWS::NoValue"}


def parameter_values(template, overrides: dict | None = None) -> dict:
    """Every parameter's value as CloudFormation gives it to a Ref: the defaults, these
    overrides (strings, as `sam deploy` passes them), a CommaDelimitedList as a list."""
    values = {name: str(p.get("Default", "")) for name, p in template["Parameters"].items()}
    values.update(overrides or {})
    return {name: value.split(",") if template["Parameters"][name]["Type"] == "CommaDelimitedList" else value
            for name, value in values.items()}


def holds(expr, template, params: dict) -> bool:
    """A condition (Conditions, or a rule's RuleCondition / Assert) for these parameter values."""
    (key, arg), = expr.items()
    if key == "Condition":
        return holds(template["Conditions"][arg], template, params)
    if key == "Fn::Equals":
        left, right = (resolve(a, params) for a in arg)
        return (left if isinstance(left, list) else str(left)) == (right if isinstance(right, list) else str(right))
    if key == "Fn::Not":
        return not holds(arg[0], template, params)
    if key == "Fn::And":
        return all(holds(a, template, params) for a in arg)
    if key == "Fn::Or":
        return any(holds(a, template, params) for a in arg)
    if key == "Fn::Contains":
        items, item = (resolve(a, params) for a in arg)
        return item in items
    raise AssertionError(f"not evaluated here: {key}")


def choose(value, template, params: dict):
    """``value`` with every Fn::If decided and every AWS::NoValue gone, as CloudFormation does."""
    if isinstance(value, list):
        return [v for v in (choose(v, template, params) for v in value) if v != NO_VALUE]
    if isinstance(value, dict):
        if set(value) == {"Fn::If"}:
            name, yes, no = value["Fn::If"]
            return choose(yes if holds({"Condition": name}, template, params) else no, template, params)
        return {k: v for k, v in ((k, choose(v, template, params)) for k, v in value.items()) if v != NO_VALUE}
    return value


def deployed(value, template, params: dict):
    """What CloudFormation makes of ``value`` for these parameter values."""
    return resolve(choose(value, template, params), params)


def test_stage_throttling(template, defaults, translated):
    params = template["Parameters"]
    rate, burst = params["ThrottlingRateLimit"], params["ThrottlingBurstLimit"]
    assert (rate["Default"], burst["Default"]) == (50, 100)
    for param in (rate, burst):
        assert param["Type"] == "Number" and param["MinValue"] >= 1
        assert str(param["Default"]) in param["Description"]  # the default and why, stated
    # A few warm instances' worth (one does 20-25 requests/s at 40-50 ms each), far
    # below the account's 1,000 concurrent executions; the burst above the rate.
    assert rate["Default"] * 0.05 <= 10 and burst["Default"] >= rate["Default"]
    assert props(template, "EmotionApi")["DefaultRouteSettings"] == {
        "ThrottlingBurstLimit": {"Ref": "ThrottlingBurstLimit"}, "ThrottlingRateLimit": {"Ref": "ThrottlingRateLimit"}}
    assert "RouteSettings" not in props(template, "EmotionApi")  # no route escapes them
    # What CloudFormation gets: the API's one stage carries them.
    stages = [r for r in translated["Resources"].values() if r["Type"] == "AWS::ApiGatewayV2::Stage"]
    assert len(stages) == 1 and stages[0]["Properties"]["ApiId"] == {"Ref": "EmotionApi"}
    assert stages[0]["Properties"]["StageName"] == "$default"  # EmotionApiUrl has no stage in its path
    assert resolve(stages[0]["Properties"]["DefaultRouteSettings"], defaults) == {
        "ThrottlingBurstLimit": "100", "ThrottlingRateLimit": "50"}


JWT = {"JwtIssuer": "https://cognito-idp.ap-northeast-2.amazonaws.com/ap-northeast-2_Example",
       "JwtAudience": "client-one,client-two"}


def route_authorization(body: dict) -> dict[tuple[str, str], tuple]:
    """(METHOD, path) -> ("NONE",) / ("AWS_IAM",) / ("JWT", jwtConfiguration, identitySource),
    as API Gateway imports a deployed OpenAPI body."""
    schemes = body.get("components", {}).get("securitySchemes", {})
    found = {}
    for path, ops in body["paths"].items():
        for method, op in ops.items():
            security = op.get("security", [])
            if not security:
                found[(method.upper(), path)] = ("NONE",)
                continue
            (requirement,) = security
            (name, scopes), = requirement.items()
            assert scopes == [], (method, path)
            scheme = schemes[name]
            if scheme.get("x-amazon-apigateway-authtype") == "awsSigv4":
                found[(method.upper(), path)] = ("AWS_IAM",)
            else:
                authorizer = scheme["x-amazon-apigateway-authorizer"]
                assert authorizer["type"] == "jwt" and scheme["type"] == "oauth2"
                found[(method.upper(), path)] = ("JWT", authorizer["jwtConfiguration"], authorizer["identitySource"])
    return found


@pytest.mark.parametrize("auth", ["none", "iam", "jwt"])
def test_auth(template, tools_env, translated, auth):
    from handlers.api import PAGES

    param = template["Parameters"]["Auth"]
    assert param["AllowedValues"] == ["none", "iam", "jwt"] and param["Default"] == "none"  # the prototype's client
    overrides = {"Auth": auth, **(JWT if auth == "jwt" else {})}
    made = translate(tools_env, overrides)
    # SAM makes the same template whatever Auth is: CloudFormation's conditions choose.
    assert made == translated
    params = parameter_values(template, overrides)
    body = deployed(made["Resources"]["EmotionApi"]["Properties"]["Body"], made, params)
    routes = route_authorization(body)
    public = {("GET", page) for page in PAGES}
    assert public < set(routes) and {("POST", "/emotion"), ("POST", "/main")} < set(routes)
    expected = {"none": ("NONE",), "iam": ("AWS_IAM",),
                "jwt": ("JWT", {"issuer": JWT["JwtIssuer"], "audience": ["client-one", "client-two"]},
                        "$request.header.Authorization")}[auth]
    for route, authorization in routes.items():
        # the demo page and the contract stay public; every route that runs the model does not
        assert authorization == (("NONE",) if route in public else expected), route
    # No authorizer is defined that the routes do not use (an empty issuer would fail).
    assert set(body.get("components", {}).get("securitySchemes", {})) == \
        {"none": set(), "iam": {"AWS_IAM"}, "jwt": {"JwtAuthorizer"}}[auth]
    # SAM's own Auth property is not used: it is decided at transform time.
    assert "Auth" not in props(template, "EmotionApi")
    for event in props(template, "EmotionFunction")["Events"].values():
        assert "Auth" not in event["Properties"]


def test_jwt_needs_an_issuer_and_an_audience(template):
    def refused(overrides: dict) -> list[str]:
        params = parameter_values(template, overrides)
        failed = []
        for rule in template["Rules"].values():
            if "RuleCondition" in rule and not holds(rule["RuleCondition"], template, params):
                continue
            failed += [a["AssertDescription"] for a in rule["Assertions"] if not holds(a["Assert"], template, params)]
        return failed

    assert refused({}) == [] and refused({"Auth": "iam"}) == []
    assert refused({"Auth": "jwt", **JWT}) == []
    assert refused({"Auth": "jwt", "JwtIssuer": JWT["JwtIssuer"], "JwtAudience": "one"}) == []
    assert len(refused({"Auth": "jwt"})) == 2
    assert refused({"Auth": "jwt", "JwtAudience": "one"}) == ["Auth jwt needs JwtIssuer (the tokens' issuer URL)"]
    for audience in ("", "a,,b"):
        assert len(refused({"Auth": "jwt", "JwtIssuer": JWT["JwtIssuer"], "JwtAudience": audience})) == 1
    issuer = template["Parameters"]["JwtIssuer"]
    assert template["Parameters"]["JwtAudience"]["Type"] == "CommaDelimitedList"
    for good in ("", JWT["JwtIssuer"], "https://example.auth0.com/"):
        assert re.fullmatch(issuer["AllowedPattern"], good), good
    for bad in ("http://example.com", "example.com", "https://a b", " "):
        assert not re.fullmatch(issuer["AllowedPattern"], bad), bad


def test_cors_origins(template, translated):
    param = template["Parameters"]["CorsAllowOrigins"]
    assert param["Type"] == "CommaDelimitedList" and param["Default"] == "*"
    # In the body, where CloudFormation resolves the Ref (see the template's comment),
    # not in CorsConfiguration, where SAM would put its own.
    assert "AllowOrigins" not in props(template, "EmotionApi")["CorsConfiguration"]
    body = translated["Resources"]["EmotionApi"]["Properties"]["Body"]
    assert body["x-amazon-apigateway-cors"]["allowOrigins"] == {"Ref": "CorsAllowOrigins"}
    for value, origins in (("*", ["*"]), ("https://app.example.com,https://admin.example.com",
                                          ["https://app.example.com", "https://admin.example.com"])):
        cors = deployed(body["x-amazon-apigateway-cors"], translated, parameter_values(template, {"CorsAllowOrigins": value}))
        assert cors["allowOrigins"] == origins
        assert cors["allowMethods"] == ["POST"]
        # a browser's bearer token or SigV4 signature passes the preflight
        assert {"content-type", "authorization", "x-amz-date", "x-amz-security-token"} <= set(cors["allowHeaders"])


ALARM_ACTIONS = {"Fn::If": [
    "HasAlarmEmail",
    {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmsTopic"}, {"Ref": "AlarmTopicArn"}], [{"Ref": "AlarmsTopic"}]]},
    {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], NO_VALUE]}]}

# name: namespace, metric, dimension, statistic, threshold, periods to alarm (of as many)
ALARMS = {
    "FailedUploadsAlarm": ("AWS/SQS", "ApproximateNumberOfMessagesVisible",
                           {"Name": "QueueName", "Value": {"Fn::GetAtt": ["FailedUploadsQueue", "QueueName"]}},
                           "Maximum", 0, 1),
    "ApiErrorsAlarm": ("AWS/Lambda", "Errors", {"Name": "FunctionName", "Value": {"Ref": "EmotionFunction"}},
                       "Sum", 0, 1),
    "ApiThrottlesAlarm": ("AWS/Lambda", "Throttles", {"Name": "FunctionName", "Value": {"Ref": "EmotionFunction"}},
                          "Sum", 0, 1),
    "ApiDurationAlarm": ("AWS/Lambda", "Duration", {"Name": "FunctionName", "Value": {"Ref": "EmotionFunction"}},
                         "p95", {"Ref": "ApiDurationAlarmMs"}, 3),
    "UploadErrorsAlarm": ("AWS/Lambda", "Errors", {"Name": "FunctionName", "Value": {"Ref": "EmotionS3Function"}},
                          "Sum", 0, 1),
    "UploadDurationAlarm": ("AWS/Lambda", "Duration", {"Name": "FunctionName", "Value": {"Ref": "EmotionS3Function"}},
                            "p95", 48000, 3),
}


def test_alarms(template, translated):
    resources = template["Resources"]
    assert {name for name, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"} == set(ALARMS)
    for name, (namespace, metric, dimension, statistic, threshold, periods) in ALARMS.items():
        alarm = resources[name]["Properties"]
        assert (alarm["Namespace"], alarm["MetricName"], alarm["Dimensions"]) == (namespace, metric, [dimension]), name
        if statistic.startswith("p"):
            assert alarm["ExtendedStatistic"] == statistic and "Statistic" not in alarm, name
        else:
            assert alarm["Statistic"] == statistic and "ExtendedStatistic" not in alarm, name
        assert alarm["Threshold"] == threshold and alarm["ComparisonOperator"] == "GreaterThanThreshold", name
        # 5-minute periods; one bad period, or (durations) 3 of 3
        assert alarm["Period"] == 300 and alarm["EvaluationPeriods"] == periods, name
        assert alarm.get("DatapointsToAlarm", periods) == periods, name
        assert alarm["TreatMissingData"] == "notBreaching", name  # no traffic is no trouble
        assert alarm["AlarmActions"] == ALARM_ACTIONS, name
        assert translated["Resources"][name] == resources[name], name  # SAM passes them through
    # The thresholds: the API's p95 between a warm request and its timeout; the upload
    # function's at 80 % of its timeout.
    duration = template["Parameters"]["ApiDurationAlarmMs"]
    assert duration["Type"] == "Number" and duration["Default"] == 5000 and "5000" in duration["Description"]
    assert duration["MaxValue"] <= function_setting(template, "EmotionFunction", "Timeout") * 1000
    assert ALARMS["UploadDurationAlarm"][4] == 0.8 * function_setting(template, "EmotionS3Function", "Timeout") * 1000


@pytest.mark.parametrize("email", ["", "ops@example.com"])
@pytest.mark.parametrize("topic", ["", "arn:aws:sns:ap-northeast-2:123456789012:ops"])
def test_alarms_notify_the_topics(template, email, topic):
    params = parameter_values(template, {"AlarmEmail": email, "AlarmTopicArn": topic})
    expected = (["<AlarmsTopic>"] if email else []) + ([topic] if topic else [])
    for name in ALARMS:
        alarm = deployed(template["Resources"][name]["Properties"], template, params)
        assert alarm.get("AlarmActions", []) == expected, name
    # The e-mail topic exists only with an address, subscribed to it.
    topic_resource = template["Resources"]["AlarmsTopic"]
    assert topic_resource["Type"] == "AWS::SNS::Topic" and topic_resource["Condition"] == "HasAlarmEmail"
    assert holds({"Condition": "HasAlarmEmail"}, template, params) == bool(email)
    assert deployed(topic_resource["Properties"]["Subscription"], template, params) == [
        {"Protocol": "email", "Endpoint": email}]


def test_alarm_email_parameter(template):
    param = template["Parameters"]["AlarmEmail"]
    assert param["Type"] == "String" and param["Default"] == ""
    for good in ("", "ops@example.com", "first.last+alarms@sub.example.co.kr"):
        assert re.fullmatch(param["AllowedPattern"], good), good
    for bad in (" ", "ops", "ops@example", "a@b@c.com", "ops @example.com"):
        assert not re.fullmatch(param["AllowedPattern"], bad), bad


@pytest.mark.parametrize("days,upload_prefix", [("30", "uploads/"), ("7", "photos/in/"), ("0", "uploads/")])
def test_retention(template, days, upload_prefix):
    param = template["Parameters"]["RetentionDays"]
    assert param["Type"] == "Number" and param["Default"] == 30 and param["MinValue"] == 0
    params = parameter_values(template, {"RetentionDays": days, "UploadPrefix": upload_prefix})
    rules = deployed(props(template, "UploadBucket")["LifecycleConfiguration"], template, params)["Rules"]
    assert all(rule["Status"] == "Enabled" for rule in rules)
    # Always: noncurrent versions 30 days after they stop being current (an expired
    # upload's too), unfinished multipart uploads after 7.
    base, = [rule for rule in rules if rule["Id"] == "ExpireOldVersionsAndAbortedUploads"]
    assert base["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30} and "Prefix" not in base
    assert "ExpirationInDays" not in base
    expiring = {rule["Prefix"]: int(rule["ExpirationInDays"]) for rule in rules if "ExpirationInDays" in rule}
    results = function_env(template, "EmotionS3Function", params)["RESULTS_PREFIX"]
    if days == "0":
        assert expiring == {} and rules == [base]  # keeps everything
    else:
        assert expiring == {upload_prefix: int(days), results: int(days)}


# ---- samconfig.toml ------------------------------------------------------------------

SAMCONFIG = """
import json, sys
from pathlib import Path
from samcli.cli.types import CfnParameterOverridesType
from samcli.lib.config.samconfig import SamConfig

path = Path(sys.argv[1])
deploy = SamConfig(str(path.parent), path.name).get_all(["deploy"], "parameters", env="default")
print(json.dumps(CfnParameterOverridesType().convert(deploy["parameter_overrides"], None, None)))
"""


def test_samconfig(template, tools_env):
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    assert config["version"] == 0.1
    default = config["default"]
    assert default["global"]["parameters"]["stack_name"] == "emotion-service"
    assert default["global"]["parameters"]["region"] == REGION
    deploy = default["deploy"]["parameters"]
    assert deploy["region"] == REGION
    assert deploy["capabilities"] == "CAPABILITY_IAM"
    assert deploy["resolve_image_repos"] is True
    # The overrides as `sam deploy` reads them (SAM CLI's own parser: AlarmTopicArn=""
    # is the empty string, a deliberate "no topic").
    done = run([TOOLS / "python", "-c", SAMCONFIG, ROOT / "samconfig.toml"], tools_env)
    assert done.returncode == 0, done.stderr
    overrides = json.loads(done.stdout)
    params = template["Parameters"]
    assert set(overrides) == set(params)  # every parameter, each chosen explicitly
    for name, value in overrides.items():
        param = params[name]
        if "AllowedValues" in param:
            assert value in param["AllowedValues"], (name, value)
        if "AllowedPattern" in param:
            assert re.fullmatch(param["AllowedPattern"], value), (name, value)
        if param["Type"] == "Number":
            assert param["MinValue"] <= float(value) <= param["MaxValue"], (name, value)
    assert overrides["AlarmTopicArn"] == ""
    assert int(overrides["QueueBatchSize"]) <= 10 or int(overrides["QueueBatchingWindowSeconds"]) >= 1
    # `lint = true` here would turn plain `sam validate` into lint only.
    assert "lint" not in default.get("validate", {}).get("parameters", {})


# ---- both architectures: a wheel for every requirement ----------------------------------

def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> dict[str, str]:
    """function/requirements.txt: canonical name -> pinned version."""
    pins = {}
    for line in (ROOT / "function" / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pinned = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line)
            assert pinned, f"not pinned: {line}"
            pins[canonical(pinned[1])] = pinned[2]
    return pins


# glibc of Lambda's python3.12 runtime (Amazon Linux 2023): 2.34
LAMBDA_GLIBC = (2, 34)
ALIASES = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


def runs_on_lambda(wheel: str, arch: str) -> bool:
    """A wheel's file name: CPython 3.12, and any platform or a manylinux ``arch`` one
    whose glibc Lambda has."""
    python, abi, platforms = wheel[:-len(".whl")].split("-")[-3:]
    if abi not in ("none", "abi3", "cp312") or (abi == "cp312" and "cp312" not in python.split(".")):
        return False
    if platforms == "any":
        return abi == "none"
    for platform in platforms.split("."):
        found = re.fullmatch(rf"(manylinux1|manylinux2010|manylinux2014|manylinux_(\d+)_(\d+))_{arch}", platform)
        if found:
            glibc = ALIASES.get(found[1]) or (int(found[2]), int(found[3]))
            if glibc <= LAMBDA_GLIBC:
                return True
    return False


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_every_wheel_exists_for_both_architectures(arch, tmp_path):
    """Architecture: arm64 (or x86_64) builds: pip in the image (function/Dockerfile)
    finds a wheel for every requirement and each of their dependencies, nothing to
    compile.  Resolved without installing, as that pip would for Lambda's Python."""
    report = tmp_path / "report.json"
    done = run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                "--no-input", "--timeout", "30", "--retries", "2", "--only-binary=:all:",
                "--platform", f"manylinux2014_{arch}", "--platform", f"manylinux_2_28_{arch}",
                "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
                "--target", tmp_path / "target", "--report", report,
                "-r", ROOT / "function" / "requirements.txt"], os.environ)
    unreachable = ("connection broken by", "NewConnectionError", "NameResolutionError",
                   "ConnectTimeoutError", "ProxyError", "Network is unreachable")
    if done.returncode != 0 and any(reason in done.stderr for reason in unreachable):
        why = next(line for line in done.stderr.splitlines() if any(r in line for r in unreachable))
        pytest.skip(f"the package index cannot be reached: {why.strip()[:300]}")
    assert done.returncode == 0, done.stderr[-3000:]
    installs = json.loads(report.read_text())["install"]
    wheels = {canonical(i["metadata"]["name"]): i["download_info"]["url"].rsplit("/", 1)[-1] for i in installs}
    versions = {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    for name, version in requirements().items():
        assert name in wheels, name
        assert versions[name] == version, (name, versions[name])
    assert {"numpy", "onnxruntime", "opencv-python-headless", "pillow"} <= set(wheels)
    assert not [wheel for wheel in wheels.values() if not (wheel.endswith(".whl") and runs_on_lambda(wheel, arch))]
    # the compiled ones really are for this processor (not merely "any")
    for name in ("numpy", "onnxruntime", "opencv-python-headless", "pillow", "pyyaml"):
        assert wheels[name].endswith(f"_{arch}.whl"), wheels[name]


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


def test_the_deployments_rekognition_calls_are_bounded(template):
    """FALLBACK_MAX_PER_MINUTE per container x the instances that may run: a stated most."""
    params = template["Parameters"]
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["FALLBACK_MAX_PER_MINUTE"] == {"Ref": "FallbackMaxPerMinute"}
    assert props(template, "EmotionFunction")["ReservedConcurrentExecutions"] == {
        "Fn::If": ["ReserveApiConcurrency", {"Ref": "ApiReservedConcurrency"}, {"Ref": "AWS::NoValue"}]}
    assert template["Conditions"]["ReserveApiConcurrency"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ApiReservedConcurrency"}, 0]}]}
    per_minute = params["FallbackMaxPerMinute"]["Default"] * (
        params["ApiReservedConcurrency"]["Default"] + params["QueueMaximumConcurrency"]["Default"])
    assert per_minute == 900 and f"{per_minute} calls a minute" in params["FallbackMaxPerMinute"]["Description"]
