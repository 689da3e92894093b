"""Shared set-up: the real shipped model, no AWS account, nothing on the network.

The environment is fixed before any handler module is imported, because the
handlers load their settings and the model at import, as in a Lambda container."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "function", ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

os.environ.update({
    "MODEL_DIR": str(ROOT / "layers" / "model"),
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "ap-northeast-2",
    "AWS_EC2_METADATA_DISABLED": "true",
    "POWERTOOLS_METRICS_NAMESPACE": "EmotionService",
    "POWERTOOLS_SERVICE_NAME": "emotion",
})
os.environ.pop("AWS_PROFILE", None)

IMAGES = ROOT / "events" / "images"
EVENTS = ROOT / "events"


@pytest.fixture(scope="session")
def astronaut_jpeg() -> bytes:
    return (IMAGES / "astronaut.jpg").read_bytes()


@pytest.fixture(scope="session")
def coffee_jpeg() -> bytes:
    return (IMAGES / "coffee.jpg").read_bytes()


@pytest.fixture(scope="session")
def group_jpeg() -> bytes:
    return (IMAGES / "group.jpg").read_bytes()


@pytest.fixture(scope="session")
def publictest():
    """FER2013's 3,589 PublicTest faces and labels (../shared, never committed)."""
    from training.common import DEFAULT_DATA, load_publictest
    try:
        return load_publictest(Path(os.environ.get("FER2013_NPZ") or DEFAULT_DATA))
    except (OSError, ValueError) as exc:
        pytest.fail(f"{exc} (expected ../shared/data/fer2013/fer2013_train_val.npz beside the repository, "
                    "or set FER2013_NPZ)")


@pytest.fixture(scope="session")
def publictest_logits(publictest):
    """The served logits of every PublicTest face, by precision, computed once for the
    session (the fp32 graph takes about 75 s here): ``publictest_logits("fp32")``."""
    from emotion.model import load_model
    from training.calibrate import logits_of
    model_dir = Path(os.environ.get("MODEL_UNDER_TEST") or ROOT / "layers" / "model")
    cache: dict[str, object] = {}

    def logits(precision: str):
        if precision not in cache:
            cache[precision] = logits_of(load_model(model_dir, precision=precision), publictest[0])
        return cache[precision]
    return logits


@pytest.fixture(scope="session")
def served():
    """`make serve` on a free port of 127.0.0.1, as a person would start it, with the
    Rekognition fallback off (nothing may leave this machine): its base URL."""
    import re
    import signal
    import subprocess
    import threading

    env = {**os.environ, "PORT": "0", "FALLBACK_MODE": "off", "POWERTOOLS_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(["make", "-s", "--no-print-directory", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            if found:
                break
        else:
            pytest.fail("make serve stopped before listening:\n" + "".join(lines[-30:]))
        # keep reading what it logs, so that a full pipe never blocks it
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
        yield found.group(1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
