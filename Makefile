# Two commands first: `make run` (set up, then invoke the function on a sample event)
# and `make test`.  No AWS account and no Docker needed for either.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := .tools
SAM := $(TOOLS)/bin/sam
EVENT ?= events/http-api-jpeg.json
export PYTHONPATH := $(CURDIR)/function:$(CURDIR)
# Locally the model comes from the repository; in the image it is /opt/model.
export MODEL_DIR ?= $(CURDIR)/layers/model
export AWS_DEFAULT_REGION ?= ap-northeast-2
# Never ask the EC2 metadata service for credentials: this is not EC2, and it is off-limits.
export AWS_EC2_METADATA_DISABLED := true
export POWERTOOLS_METRICS_NAMESPACE ?= EmotionService

# training knobs; empty: train.py's defaults, which are the shipped recipe
EPOCHS ?=
BATCH_SIZE ?=
SEED ?=
DATA ?= ../shared/data/fer2013/fer2013_train_val.npz
RESUME ?=
# a model directory to warm-start from (a new schedule over its weights)
INIT ?=
# the peak learning rate
LR ?=

.PHONY: setup tools browser run invoke serve analyse run-s3 run-bulk test audit image-check fuzz train evaluate quantize events bench eval-faces fer-venv build sam-invoke deploy validate clean

$(VENV)/.installed: function/requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 -r requirements-dev.txt
	touch $@

# The face detector (a third-party file, not committed): layers/detector/detector.json
# names its URL and sha256; taken from ../shared's offline copy when there is one, else
# downloaded, and refused when its sha256 differs.
DETECTOR_SPEC := layers/detector/detector.json
DETECTOR_FILE := layers/detector/$(shell sed -n 's/.*"file": "\(.*\)".*/\1/p' $(DETECTOR_SPEC))
$(DETECTOR_FILE): $(DETECTOR_SPEC) function/fetch_detector.py
	$(PYTHON) function/fetch_detector.py --spec $(DETECTOR_SPEC) --dir layers/detector --local ../shared/models/yunet

setup: $(VENV)/.installed $(DETECTOR_FILE)

# aws-sam-cli pins its own boto3, so it lives in a separate tools environment.
$(TOOLS)/.installed:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q aws-sam-cli==1.170.0
	touch $@

tools: $(TOOLS)/.installed

# The demo page's test drives Debian's Chromium with Playwright (tests/test_page.py);
# Playwright's own browser download cannot work here, so the system's is used.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for the browser test"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq chromium >/dev/null; }

run: setup
	$(PY) -m local.invoke $(EVENT)

invoke: setup
	$(PY) -m local.invoke $(EVENT)

serve: setup
	$(PY) -m local.serve --port $${PORT:-3000}

# A folder of photos through the same pipeline, no AWS: one JSON line per photo.
# make analyse PHOTOS="~/Pictures/trip" [ANALYSE_ARGS="--out results.jsonl --annotate annotated/"]
PHOTOS ?= events/images
analyse: setup
	$(PY) -m local.analyse $(PHOTOS) $(ANALYSE_ARGS)

run-s3: setup
	$(PY) -m local.run_s3

# A bulk upload through the queue: moto on 127.0.0.1, WORKERS processes as Lambda
# instances, a report (BULK_ARGS="--inject-failures 0.05" shows the retries).
N ?= 500
WORKERS ?= 2
run-bulk: setup
	$(PY) -m local.run_bulk --n $(N) --workers $(WORKERS) $(BULK_ARGS)

events: setup
	$(PY) events/generate.py

test: setup tools browser
	$(PY) -m pytest -q tests

# function/Dockerfile's own steps on CPython 3.12 without Docker, then both handlers
# through awslambdaric on the sample events (function/local/image_check.py); .ci/run runs it.
image-check: setup
	$(PY) -m local.image_check

# Hostile API Gateway events through the API handler, in process (function/local/fuzz.py):
# every answer a 200 or a 4xx of the contract, none over 3 s.  make fuzz [FUZZ_N=10000] [FUZZ_SEED=1]
FUZZ_N ?= 10000
FUZZ_SEED ?= 1
fuzz: setup
	$(PY) -m local.fuzz --n $(FUZZ_N) --seed $(FUZZ_SEED) $(FUZZ_ARGS)

# Known vulnerabilities of what the image installs, as far as the registry lets us see
# (.ci/audit.py says what it could not check); .ci/run runs it after the tests.
audit: setup
	$(PY) .ci/audit.py

train: setup
	$(PY) -m training.train $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(BATCH_SIZE),--batch-size $(BATCH_SIZE)) $(if $(SEED),--seed $(SEED)) $(if $(LR),--lr $(LR)) --data $(DATA) $(if $(RESUME),--resume) $(if $(INIT),--init $(INIT))

evaluate: setup
	$(PY) -m training.evaluate --data $(DATA)

# After training and calibrating: the int8 graph that serves, written only if it passes
# its gate against the fp32 graph on PublicTest (training/quantize.py).
quantize: setup
	$(PY) -m training.quantize --data $(DATA)

bench: setup
	$(PY) -m bench.run $(BENCH_ARGS)

# Recall, precision and time of both detectors on ../shared/data/faces (never committed).
FACES ?= ../shared/data/faces
eval-faces: setup
	$(PY) -m bench.faces --data $(FACES) $(EVAL_ARGS)

# The peer that issue #5 measures against, in its own environment (it needs TensorFlow,
# never in the runtime's).  fer's own requirements would pull facenet-pytorch and with it
# an unpinned torch (gigabytes of CUDA); its cascade path needs only these.
fer-venv: .venv-fer/.installed
.venv-fer/.installed:
	$(PYTHON) -m venv .venv-fer
	.venv-fer/bin/pip install -q tensorflow-cpu opencv-contrib-python pandas tqdm requests "setuptools<81" Pillow
	.venv-fer/bin/pip install -q --no-deps fer==25.10.3
	touch $@

# ---- machines with Docker and an AWS account -------------------------------------
validate: tools
	$(SAM) validate --region ap-northeast-2 && $(SAM) validate --lint --region ap-northeast-2

build: tools
	$(SAM) build

sam-invoke: build
	$(SAM) local invoke EmotionFunction -e $(EVENT)

deploy: build
	$(SAM) deploy

clean:
	rm -rf $(VENV) $(TOOLS) .venv-fer .aws-sam .pytest_cache
