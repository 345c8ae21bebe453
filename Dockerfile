# syntax=docker/dockerfile:1
# LLM2CLIP retrieval images, one target each:
#   cpu    (default) the serving image: `llm2clip serve` and `llm2clip index build` on ONNX Runtime (CPU) and
#          faiss-cpu. No torch.
#   cuda   the same commands on an NVIDIA CUDA runtime: onnxruntime-gpu (TensorRT and CUDA execution
#          providers) and faiss on the GPU.
#   tools  training, export, evaluation and index building: the cpu image plus torch and the `train` extra.
# Python packages come from deploy/requirements/*.txt, pinned exactly and generated from pyproject.toml
# (deploy/requirements/lock.sh). Models, indexes and corpora are never in an image: mount them (compose mounts
# its named volumes at /models, /indexes and /corpus). Every target runs as the unprivileged user llm2clip.
#
#   docker build -t llm2clip-retrieval:cpu .
#   docker build --target cuda -t llm2clip-retrieval:cuda .
#   docker build --target tools -t llm2clip-retrieval:tools .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------------------
# the project's wheel, built once: every target installs it with --no-deps over its locked packages
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY llm2clip ./llm2clip
COPY llm2clip_cli ./llm2clip_cli
COPY service ./service
COPY index_builder ./index_builder
COPY training ./training
COPY research ./research
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------------------
# the serving virtualenv (core dependencies + cpu extra)
FROM ${PYTHON_IMAGE} AS cpu-venv
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY deploy/requirements/cpu.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --no-cache-dir --require-virtualenv -r /tmp/requirements.txt
COPY --from=wheel /wheels /wheels
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/*.whl \
    && /opt/venv/bin/pip check

# ---------------------------------------------------------------------------------------------------------
# what every Python-slim target shares: the user, the volume mount points it owns, the server's defaults
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    LLM2CLIP_HOST=0.0.0.0 \
    LLM2CLIP_PORT=8000
# the mount points exist and belong to llm2clip, so that a fresh named volume mounted there is writable by it
RUN groupadd --system --gid 10001 llm2clip \
    && useradd --system --uid 10001 --gid llm2clip --create-home --home-dir /home/llm2clip llm2clip \
    && mkdir -p /models /indexes /corpus /cache \
    && chown llm2clip:llm2clip /models /indexes /corpus /cache
WORKDIR /home/llm2clip
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=6s --start-period=120s --retries=3 \
    CMD ["python", "-m", "service.healthcheck"]
CMD ["llm2clip", "serve"]

# ---------------------------------------------------------------------------------------------------------
# tools: the serving venv plus torch (CPU build; pass --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# for a CUDA one) and the train extra
FROM cpu-venv AS tools-venv
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY deploy/requirements/tools.txt /tmp/tools-requirements.txt
RUN /opt/venv/bin/pip install --no-cache-dir --require-virtualenv --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
    && /opt/venv/bin/pip install --no-cache-dir --require-virtualenv -r /tmp/tools-requirements.txt \
    && /opt/venv/bin/pip check

FROM runtime AS tools
COPY --from=tools-venv /opt/venv /opt/venv
USER 10001:10001
CMD ["llm2clip", "--help"]

# ---------------------------------------------------------------------------------------------------------
# cuda: Ubuntu's python3 on the CUDA + cuDNN runtime, onnxruntime-gpu and faiss-gpu-cu12. TensorRT's libraries
# (pip, ~2 GB) are in by default; --build-arg TENSORRT_LIBS= leaves them out and the service runs on the CUDA EP.
FROM ${CUDA_IMAGE} AS cuda
ARG TENSORRT_LIBS=tensorrt-cu12-libs==10.16.1.11
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# Ubuntu's archive drops superseded package versions, so pins would break the build within weeks; the CUDA
# image's tag fixes the distribution release instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
COPY deploy/requirements/cuda.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --no-cache-dir --require-virtualenv -r /tmp/requirements.txt \
    && if [ -n "${TENSORRT_LIBS}" ]; then /opt/venv/bin/pip install --no-cache-dir --require-virtualenv "${TENSORRT_LIBS}"; fi
COPY --from=wheel /wheels /wheels
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/*.whl \
    && /opt/venv/bin/pip check \
    && rm -rf /wheels /tmp/requirements.txt
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.12/site-packages/tensorrt_libs:${LD_LIBRARY_PATH} \
    LLM2CLIP_HOST=0.0.0.0 \
    LLM2CLIP_PORT=8000 \
    LLM2CLIP_TRT_CACHE=/cache/trt
# Ubuntu 24.04's images carry a user `ubuntu` at uid 1000; ours is 10001 as in the slim targets
RUN groupadd --system --gid 10001 llm2clip \
    && useradd --system --uid 10001 --gid llm2clip --create-home --home-dir /home/llm2clip llm2clip \
    && mkdir -p /models /indexes /corpus /cache/trt \
    && chown -R llm2clip:llm2clip /models /indexes /corpus /cache
WORKDIR /home/llm2clip
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=6s --start-period=300s --retries=3 \
    CMD ["python", "-m", "service.healthcheck"]
CMD ["llm2clip", "serve"]

# ---------------------------------------------------------------------------------------------------------
# cpu, the default target: last, so that a plain `docker build .` builds it
FROM runtime AS cpu
COPY --from=cpu-venv /opt/venv /opt/venv
USER 10001:10001
