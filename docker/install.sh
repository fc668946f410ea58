#!/bin/sh
# Install promptkd-edge by role. Every Dockerfile here calls it, and the tests run it in a venv.
#
#   docker/install.sh ROLE [SOURCE]
#
# ROLE    core     the runtime, pkd predict / doctor / bench on bundles, Triton and DeepStream entries (no torch)
#         cpu      core + OpenVINO + plots, for CPU edge boxes
#         jetson   core + cuda-python < 13 + onnx + plots, beside JetPack 6's own TensorRT 10.3 (apt
#                  python3-libnvinfer, seen through a venv made with --system-site-packages)
#         gpu      training, export and TensorRT on an x86 GPU box (an NGC PyTorch image: its torch and
#                  TensorRT are kept); cuda-python for the base's CUDA major (PKD_CUDA_MAJOR, default 12), NVML
#         train    training and export on a plain box (pip's torch)
# SOURCE  the project folder or a built wheel (default: the folder above this script)
#
# PYTHON picks the interpreter (default python3). Packages already installed that must stay (torch, torchvision,
# tensorrt, e.g. NVIDIA's builds in NGC and JetPack images) are pinned to their installed versions. PKD_DRY_RUN=1
# prints the pip commands instead of running them.
set -eu

ROLE="${1:-}"
SOURCE="${2:-$(cd "$(dirname "$0")/.." && pwd)}"
PYTHON="${PYTHON:-python3}"
CUDA_MAJOR="${PKD_CUDA_MAJOR:-12}"

case "$ROLE" in
  core)   EXTRAS="" ;;
  cpu)    EXTRAS="openvino,plot,text" ;;
  jetson) EXTRAS="jetson,plot,text" ;;
  gpu)    EXTRAS="train,export,slim,plot" ;;
  train)  EXTRAS="train,export,slim,plot" ;;
  *) echo "usage: $0 core|cpu|jetson|gpu|train [SOURCE]" >&2; exit 2 ;;
esac

TARGET="$SOURCE"
if [ -n "$EXTRAS" ]; then TARGET="${SOURCE}[${EXTRAS}]"; fi

run() {
  if [ "${PKD_DRY_RUN:-0}" = "1" ]; then echo "$*"; else "$@"; fi
}

# keep what the base image brought: its torch, torchvision and TensorRT builds are pinned as they are
KEEP="$(mktemp)"
trap 'rm -f "$KEEP"' EXIT
"$PYTHON" -m pip list --format=freeze 2>/dev/null \
  | grep -iE '^(torch|torchvision|tensorrt|tensorrt-cu12|tensorrt-cu13)==' > "$KEEP" || true

run "$PYTHON" -m pip install --no-cache-dir -c "$KEEP" "$TARGET"

if [ "$ROLE" = "gpu" ]; then
  if [ "$CUDA_MAJOR" = "13" ]; then CUDA_PYTHON="cuda-python>=13,<14"; TRT="tensorrt-cu13>=11,<12";
  else CUDA_PYTHON="cuda-python>=12.6,<13"; TRT="tensorrt-cu12>=10.3,<12"; fi
  # nvidia-ml-py: NVML, for pkd bench's GPU energy and per-process GPU memory and pkd doctor's GPU facts
  run "$PYTHON" -m pip install --no-cache-dir -c "$KEEP" "$CUDA_PYTHON" "onnx>=1.17" "nvidia-ml-py>=12.535"
  # NGC images ship TensorRT's Python bindings; elsewhere take NVIDIA's wheel (it downloads from NVIDIA's index)
  if ! "$PYTHON" -c "import tensorrt" >/dev/null 2>&1; then run "$PYTHON" -m pip install --no-cache-dir "$TRT"; fi
fi

if [ "$ROLE" = "jetson" ] && [ "${PKD_DRY_RUN:-0}" != "1" ]; then
  "$PYTHON" -c "import tensorrt" >/dev/null 2>&1 \
    || echo "note: TensorRT's Python bindings are not visible: install JetPack's python3-libnvinfer and make the venv with --system-site-packages" >&2
fi

if [ "${PKD_DRY_RUN:-0}" != "1" ]; then "$PYTHON" -m promptkd_edge --version; fi
