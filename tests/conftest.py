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
