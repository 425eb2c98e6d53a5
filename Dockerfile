# The gradsentry sidecar. CPU image by default; `--build-arg VARIANT=cuda` for NVIDIA GPUs.
#
# `make image` builds it from scratch without any registry:
#   - the base is a local Debian bookworm image with Python 3.11
#     (deploy/docker/make-base.sh: debootstrap + `docker import`; BASE_IMAGE names it);
#   - the runtime dependencies come as wheels from build/wheelhouse
#     (deploy/docker/wheelhouse.py: `pip download` of pyproject's dependencies, CPU torch).
# VARIANT=cuda installs torch from PyTorch's CUDA index (TORCH_CUDA_INDEX) and
# onnxruntime-gpu from PyPI instead, so that build needs network access to both. Their CUDA
# major versions must agree (CUDA_MAJOR): PyPI's onnxruntime-gpu is built for CUDA 12 and
# cuDNN 9, so the torch index is a cu12x one (cu128 by default; cu130 would be CUDA 13 and is
# refused before anything is installed). After the install deploy/docker/check_cuda.py
# checks, without a GPU, that torch is that CUDA build and that torch's cuDNN and
# onnxruntime's CUDA provider library load.
# No BuildKit-only syntax: the classic builder (Debian's docker.io 20.10) builds it too.

ARG BASE_IMAGE=gradsentry-base:bookworm
ARG VARIANT=cpu

# ---- deps: a virtual environment with every runtime dependency. Only the wheelhouse feeds
# it, so source edits never rebuild this (large) layer.
FROM ${BASE_IMAGE} AS deps
ARG VARIANT
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
ARG CUDA_MAJOR=12
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python3.11 -m venv /opt/gradsentry
COPY build/wheelhouse/ /wheels/
COPY deploy/docker/check_cuda.py /opt/check_cuda.py
# requirements.txt is the complete resolved serving set (pyproject's dependencies: no lab,
# no test tools), hence --no-deps. The torch wheel there is already slimmed for a server
# (deploy/docker/wheelhouse.py: no C++ headers or test binaries, stripped libraries); the
# CUDA variant's torch comes unslimmed from its index, so the same directories go here.
RUN set -eu; \
    pip=/opt/gradsentry/bin/pip; \
    case "$VARIANT" in \
      cpu) \
        "$pip" install --no-index --no-deps --find-links /wheels -r /wheels/requirements.txt ;; \
      cuda) \
        python3.11 /opt/check_cuda.py "$CUDA_MAJOR" "$TORCH_CUDA_INDEX" --index-only; \
        torch="$(sed -n 's/^torch==\([^+]*\).*/\1/p' /wheels/requirements.txt)"; \
        ort="$(sed -n 's/^onnxruntime==//p' /wheels/requirements.txt)"; \
        grep -v -E '^(torch|onnxruntime)==' /wheels/requirements.txt >/tmp/rest.txt; \
        "$pip" install --index-url "$TORCH_CUDA_INDEX" "torch==$torch"; \
        "$pip" install "onnxruntime-gpu==$ort"; \
        "$pip" install --no-index --no-deps --find-links /wheels -r /tmp/rest.txt; \
        /opt/gradsentry/bin/python /opt/check_cuda.py "$CUDA_MAJOR" "$TORCH_CUDA_INDEX" ;; \
      *) \
        echo "VARIANT must be cpu or cuda, got '$VARIANT'" >&2; exit 2 ;; \
    esac; \
    rm -rf /opt/gradsentry/lib/python3.11/site-packages/torch/include \
      /opt/gradsentry/lib/python3.11/site-packages/torch/test; \
    /opt/gradsentry/bin/python -c \
      'import grpc, grpc_health, grpc_reflection, numpy, onnx, onnxruntime, PIL, torch, yaml'

# ---- build: the project's own wheel (source only; the detector demo artifacts are package
# data and travel inside it).
FROM deps AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY detectors/ detectors/
COPY service/ service/
RUN /opt/gradsentry/bin/pip wheel --no-deps --no-index --no-build-isolation --wheel-dir /dist .

# ---- runtime: the base, the environment, the project; nothing else.
FROM ${BASE_IMAGE} AS runtime-cpu
FROM ${BASE_IMAGE} AS runtime-cuda
# Which GPUs a container sees is the runtime's to say (`docker run --gpus`, Kubernetes'
# device plugin set NVIDIA_VISIBLE_DEVICES per container), so it is not baked in here; the
# image only names the driver capabilities it needs. cuBLAS is deterministic only with a
# fixed workspace, read when CUDA starts (service.numerics sets it too, for other
# launchers). The CUDA JIT cache goes to /tmp, writable under a read-only root (the Helm
# chart mounts a volume there for it).
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CUBLAS_WORKSPACE_CONFIG=:4096:8 \
    CUDA_CACHE_PATH=/tmp/cuda-cache

FROM runtime-${VARIANT} AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="gradsentry" \
      org.opencontainers.image.description="Reliability sidecar for image classifiers" \
      org.opencontainers.image.licenses="Apache-2.0" \
      gradsentry.variant="${VARIANT}"
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/gradsentry \
      --shell /usr/sbin/nologin gradsentry
COPY --from=deps /opt/gradsentry /opt/gradsentry
COPY --from=build /dist/ /tmp/dist/
# The CPU image's dependency set is complete and consistent: pip check must pass. (The CUDA
# variant swaps onnxruntime for onnxruntime-gpu, the same module under another name, which
# pip check reports as missing.)
RUN PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore /opt/gradsentry/bin/pip install \
      --no-cache-dir --no-index --no-deps /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && if [ "$VARIANT" = cpu ]; then /opt/gradsentry/bin/pip check; fi

# Listen on every interface of the container (the server's own default is 127.0.0.1);
# every other setting is a GRADSENTRY_* variable or a --config file (see service/config.py).
ENV PATH=/opt/gradsentry/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GRADSENTRY_HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/gradsentry
# gRPC (Reliability, health, reflection) and Prometheus metrics.
EXPOSE 50051 9464
# `docker stop` must wait longer than grace_seconds (10 s by default): use -t 30 or more.
STOPSIGNAL SIGTERM
# The standard gRPC health service, asked on GRADSENTRY_PORT; healthy only once the model
# is loaded and warmed up. The probe imports grpc only (not torch), so it costs little.
HEALTHCHECK --interval=10s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-m", "service.health", "--timeout", "5"]
ENTRYPOINT ["gradsentry", "serve"]
