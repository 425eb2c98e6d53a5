# gradsentry — the two commands a user needs: `make serve` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# The CPU build of torch; installed first so nothing later can pull a CUDA wheel.
TORCH  ?= torch==2.13.0

.PHONY: install serve test lint demo report bench clean protos system-deps

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (gradsentry needs Python 3.11)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[test]"
	# pytorch-ood is only the benchmark's point of comparison; its declared torchvision
	# dependency would pull a CUDA build, so it is installed without dependencies.
	$(PIP) install --quiet --no-deps "pytorch-ood==0.4.0"
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/gradsentry serve

# Debian packages the tests run for real: prometheus + promtool (metrics), openssl (TLS certs).
SYSTEM_PKGS := prometheus openssl
system-deps:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null \
	  && command -v openssl >/dev/null; then exit 0; fi; \
	  if [ "$$(id -u)" -ne 0 ]; then \
	    echo "error: prometheus/promtool/openssl missing; as root run:"; \
	    echo "  apt-get update && apt-get install -y --no-install-recommends $(SYSTEM_PKGS)"; \
	    exit 2; \
	  fi; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
	    $(SYSTEM_PKGS)

test: $(STAMP) system-deps
	$(VENV)/bin/ruff check .
	# pytest exits 5 when it collects no tests; that is a failure here too.
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: no tests were collected"; exit 1; fi; exit $$rc

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

# Python stubs for protos/ into service/_proto/ (committed; a test fails when they are stale).
# -Iservice/_proto=protos makes generated imports read `from service._proto.gradsentry.v1 ...`.
PROTOS := protos/gradsentry/v1/reliability.proto
protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iservice/_proto=protos --python_out=. --pyi_out=. \
	  --grpc_python_out=. $(PROTOS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
