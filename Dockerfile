# syntax=docker/dockerfile:1.7
#
# lamini-serve images, one multi-stage build:
#   runtime (default)  serves converted store entries with CTranslate2; no torch in the image.
#   convert            transformers + torch (CPU wheel) + optimum: turns hub checkpoints into store
#                      entries on the shared /data volume (`docker run ... convert MODEL`).
#   --build-arg DEVICE=cuda adds the CUDA 12 / cuDNN 9 libraries CTranslate2's wheel loads on GPUs
#   (pair it with TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 for the convert stage).
#
#   docker build -t lamini-serve .
#   docker build --target convert -t lamini-serve-convert .
#   docker build --build-arg DEVICE=cuda -t lamini-serve:cuda .
#
# The base image is pinned to an exact Python patch release and Debian suite; bump it on purpose.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/lamini \
    PATH=/opt/lamini/bin:$PATH \
    LD_LIBRARY_PATH=/opt/lamini/cuda-lib
# Everything a deployment keeps lives under /data: the model store, the Hugging Face cache and
# twin checkpoints. Every LAMINI_* setting can be overridden with `docker run -e`.
ENV LAMINI_HOST=0.0.0.0 \
    LAMINI_PORT=8080 \
    LAMINI_LOG_FORMAT=json \
    LAMINI_STORE_DIR=/data/store \
    LAMINI_TWIN_CACHE_DIR=/data/twins \
    HF_HOME=/data/hf-cache
RUN groupadd --system --gid 10001 lamini \
    && useradd --system --uid 10001 --gid lamini --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin lamini \
    && mkdir -p /data/store /data/twins /data/hf-cache \
    && chown -R lamini:lamini /data
WORKDIR /src

# The project sources, without tests or deploy files (see .dockerignore).
FROM base AS source
COPY pyproject.toml README.md ./
COPY app ./app
COPY conversion ./conversion
COPY model_store ./model_store
COPY benchmarks ./benchmarks

# The serving dependency set: the project's base dependencies, nothing from the extras.
FROM source AS serve-venv
ARG DEVICE=cpu
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/lamini \
    && pip install . \
    && mkdir -p /opt/lamini/cuda-lib \
    && if [ "$DEVICE" = "cuda" ]; then \
        pip install "nvidia-cublas-cu12==12.*" "nvidia-cudnn-cu12==9.*" \
        && ln -s /opt/lamini/lib/python3*/site-packages/nvidia/*/lib/*.so* /opt/lamini/cuda-lib/; \
    fi

# Conversion: the `convert` extra, torch from the CPU (or CUDA) wheel index. Versions are pinned
# in pyproject.toml, which hadolint cannot see through a local path with extras.
FROM source AS convert
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/lamini \
    && pip install --extra-index-url "$TORCH_INDEX_URL" ".[convert]"
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
ENTRYPOINT ["lamini-serve"]
CMD ["convert", "--help"]

FROM base AS runtime
COPY --from=serve-venv /opt/lamini /opt/lamini
# transformers only tokenizes here; its advice that PyTorch is missing is expected, not news.
ENV TRANSFORMERS_NO_ADVISORY_WARNINGS=1
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
# SIGTERM drains: readiness goes false, new requests get 503 (nginx retries them elsewhere) and
# in-flight ones have LAMINI_SHUTDOWN_GRACE_S (30 s) to finish; so `docker stop -t 40`, and
# compose's stop_grace_period is 40 s.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LAMINI_PORT', '8080') + '/health', timeout=4)"]
ENTRYPOINT ["lamini-serve"]
CMD ["serve"]
