#!/usr/bin/env bash
# One prepared run of every GPU path, for a machine with a GPU (a few minutes; see bench/device_check.py).
#   bench/device_check.sh            uses the machine's python3 and whatever torch / onnxruntime it has
# Wheels the machine lacks (transformers, tokenizers, safetensors, huggingface-hub, onnx, pydantic, ...) can
# travel in .whl/ at the repository root: they are installed into a private folder first. Results print as
# they come and go to $OUT/device_check.json when OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/llm2clip-site \
    .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/llm2clip-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
exec timeout 480 "$PY" bench/device_check.py
