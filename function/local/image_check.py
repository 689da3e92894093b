"""``make image-check``: function/Dockerfile's own steps, run without Docker on the
image's Python (CPython 3.12), then both handlers through the real runtime interface
client on the sample events.

The Dockerfile is read and its instructions carried out here: COPY copies from the
repository, RUN runs in bash, ENV sets the environment, with the image's paths moved
into a scratch folder (``/opt`` -> ``<scratch>/opt``, ``/tmp`` -> ``<scratch>/tmp``,
``${LAMBDA_TASK_ROOT}`` -> ``<scratch>/task``) and ``python3`` a fresh CPython 3.12
virtual environment's.  So the check and the image cannot drift: a step that fails in
the Dockerfile fails here (a missing import after the trimming, a wrong sha256, a
requirement without a cp312 wheel).  pip downloads once into ``.image-check/wheels``
(the RUN steps then install from there, with no index), so later runs work offline.

Then awslambdaric (the runtime interface client the Lambda base image runs) starts each
handler as Lambda's bootstrap would, against a local Runtime API (local.runtime_api):
the API handler on the sample requests, the S3 handler on events/sqs-s3-put.json with
moto's S3 on 127.0.0.1 in place of the bucket.

CPython 3.12: ``PYTHON312``, else ``python3.12`` on PATH, else pyenv's.

    python -m local.image_check [--keep]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "function" / "Dockerfile"
WORK = ROOT / ".image-check"
NO_PYTHON = 3  # exit status when there is no CPython 3.12 to check with
API_EVENTS = ["http-api-jpeg.json", "http-api-group.json", "http-api-prototype-form.json", "bad-not-an-image.json"]


def python312() -> str:
    for candidate in [os.environ.get("PYTHON312"), shutil.which("python3.12"),
                      *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")), reverse=True)]:
        if candidate and Path(candidate).exists():
            version = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                                     capture_output=True, text=True).stdout.strip()
            if version == "True":
                return candidate
    print("image-check: no CPython 3.12 found (set PYTHON312, or put python3.12 on PATH); nothing was checked",
          file=sys.stderr)
    raise SystemExit(NO_PYTHON)


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(current)
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def run_dockerfile(scratch: Path, venv: Path, wheels: Path) -> dict:
    """Carry out the Dockerfile in ``scratch``; returns the environment its ENV set."""
    moved = {"${LAMBDA_TASK_ROOT}": str(scratch / "task"), "$LAMBDA_TASK_ROOT": str(scratch / "task"),
             "/opt/": f"{scratch}/opt/", "/tmp/": f"{scratch}/tmp/"}

    def move(text: str) -> str:
        for old, new in moved.items():
            text = text.replace(old, new)
        return re.sub(r"(?<![\w/])/opt\b", f"{scratch}/opt", text)

    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": "",
           "VIRTUAL_ENV": str(venv), "PIP_FIND_LINKS": str(wheels), "PIP_NO_INDEX": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "LAMBDA_TASK_ROOT": str(scratch / "task")}
    for folder in ("task", "opt", "tmp"):
        (scratch / folder).mkdir(parents=True, exist_ok=True)
    for op, args in instructions():
        if op in ("FROM", "CMD"):
            continue
        if op == "COPY":
            *sources, target = move(args).split()
            for source in sources:
                src = ROOT / source
                dst = Path(target)
                if src.is_dir():
                    shutil.copytree(src, dst if target.endswith("/") else dst, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    dst.mkdir(parents=True, exist_ok=True) if target.endswith("/") else dst.parent.mkdir(
                        parents=True, exist_ok=True)
                    shutil.copy2(src, dst / src.name if target.endswith("/") else dst)
        elif op == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", args):
                env[name] = move(value)
        elif op == "RUN":
            print(f"RUN {args[:100]}...", file=sys.stderr)
            subprocess.run(["bash", "-ec", move(args)], env=env, check=True, cwd=scratch)
        else:
            raise SystemExit(f"image-check: the Dockerfile uses {op}, which this check does not carry out")
    return env


def invoke(python: str, task_root: Path, handler: str, events: list[dict], env: dict) -> list[tuple[str, object]]:
    from local.runtime_api import RuntimeAPI

    api = RuntimeAPI()
    client = api.start_client(handler, env, python=python, task_root=task_root)
    try:
        return [api.invoke(event) for event in events]
    finally:
        client.terminate()
        client.wait(10)
        api.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = p.parse_args(argv)
    py312 = python312()
    scratch, wheels = WORK / "scratch", WORK / "wheels"
    shutil.rmtree(scratch, ignore_errors=True)
    wheels.mkdir(parents=True, exist_ok=True)
    # What the RUN steps will install, downloaded once for CPython 3.12 on this machine's platform.
    subprocess.run([py312, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "-d", str(wheels),
                    "-r", str(ROOT / "function" / "requirements.txt"), "awslambdaric==4.2.2"], check=True)
    venv = scratch / "venv"
    subprocess.run([py312, "-m", "venv", str(venv)], check=True)
    env = run_dockerfile(scratch, venv, wheels)
    python = str(venv / "bin" / "python3")
    # The base image's runtime interface client.
    subprocess.run([python, "-m", "pip", "install", "--quiet", "awslambdaric==4.2.2"], env=env, check=True)
    run_env = {k: env[k] for k in ("MODEL_DIR", "DETECTOR_DIR", "POWERTOOLS_SERVICE_NAME",
                                   "POWERTOOLS_METRICS_NAMESPACE")}
    run_env.update(PYTHONPATH="", FALLBACK_MODE="off", AWS_REGION="ap-northeast-2", AWS_DEFAULT_REGION="ap-northeast-2",
                   POWERTOOLS_METRICS_DISABLED="true", POWERTOOLS_LOG_LEVEL="WARNING")
    failures = []
    events = [json.loads((ROOT / "events" / name).read_text()) for name in API_EVENTS]
    from local.events import http_api_event
    events.append(http_api_event("GET", "/openapi.json", {}))
    for name, (kind, answer) in zip(API_EVENTS + ["GET /openapi.json"],
                                    invoke(python, scratch / "task", "handlers.api.lambda_handler", events, run_env)):
        status = answer.get("statusCode") if isinstance(answer, dict) else None
        expected = 400 if name.startswith("bad-") else 200
        print(f"api  {name}: {kind} {status}", file=sys.stderr)
        if kind != "response" or status != expected:
            failures.append((name, kind, answer))
    failures += s3_check(python, scratch / "task", run_env)
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    if failures:
        print(json.dumps(failures, indent=1, default=str)[:4000], file=sys.stderr)
        return 1
    print(f"image-check: the Dockerfile's steps ran on {py312}; both handlers answered through awslambdaric",
          file=sys.stderr)
    return 0


def s3_check(python: str, task_root: Path, env: dict) -> list:
    """The S3 handler on events/sqs-s3-put.json, its bucket on moto's server."""
    import boto3

    from local.run_s3 import start_moto
    server, endpoint = start_moto()  # sets this process's AWS settings to moto's
    try:
        event = json.loads((ROOT / "events" / "sqs-s3-put.json").read_text())
        [rec] = json.loads(event["Records"][0]["body"])["Records"]
        bucket, key = rec["s3"]["bucket"]["name"], rec["s3"]["object"]["key"]
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "ap-northeast-2"})
        s3.put_object(Bucket=bucket, Key=key, Body=(ROOT / "events" / "images" / "astronaut.jpg").read_bytes())
        aws = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                          "AWS_ENDPOINT_URL", "AWS_EC2_METADATA_DISABLED")}
        [(kind, answer)] = invoke(python, task_root, "handlers.s3.lambda_handler", [event], {**env, **aws})
        result = json.loads(s3.get_object(Bucket=bucket, Key=f"results/{key}.json")["Body"].read())
    except Exception as exc:  # noqa: BLE001
        return [("sqs-s3-put.json", "error", repr(exc))]
    finally:
        server.stop()
    print(f"s3   sqs-s3-put.json: {kind} {answer}; result {result['status']}, {len(result['faces'])} face(s)",
          file=sys.stderr)
    ok = kind == "response" and answer == {"batchItemFailures": []} and result["status"] == "ok"
    return [] if ok else [("sqs-s3-put.json", kind, answer)]


if __name__ == "__main__":
    raise SystemExit(main())
