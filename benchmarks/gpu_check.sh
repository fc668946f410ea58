#!/usr/bin/env bash
# The prepared GPU check, within 8 minutes on one H100/H200-class GPU:
# (1) inference: `pkd bench` of the ViT-B-16 student (4 x 9 prompts, projector, 100 classes) and its ViT-L-14
#     teacher, 224 px, random weights, on CUDA: eager fp32 and fp16, torch.compile bf16, CUDA graphs bf16, batch
#     1 to 256, compute and end to end, p50/p90/p99 and images/s, with the fraction of the FLOP-bound limit
#     (--peak-tflops, default 790 = H200 dense bf16: ViT-B/16 costs ~35.9 GFLOP/image -> ~22,000 images/s);
# (2) real-size distillation throughput, ViT-L-14 -> ViT-B-16, bf16, batch 64 and 256, with and without the
#     teacher-feature cache;
# (3) with PKD_TEACHER_MEMORY=1 also ViT-L-14 teacher tuning memory at 100 and 1000 classes (adds ~2 minutes).
# Records everything in $OUT (or benchmarks/results/). Needs torch with CUDA; nothing is downloaded:
# pure-Python wheels it lacks (open_clip_torch, ftfy, ...) are taken from .whl/ when present.
#
#   bash benchmarks/gpu_check.sh                    # PEAK_TFLOPS=989 for an H100 SXM
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-benchmarks/results}
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/pkd-site .whl/*.whl
    export PYTHONPATH=/tmp/pkd-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 - <<'PY'
import torch, open_clip
assert torch.cuda.is_available(), "no CUDA device"
p = torch.cuda.get_device_properties(0)
print(f"torch {torch.__version__} cuda {torch.version.cuda} open_clip {open_clip.__version__} {p.name} "
      f"{p.total_memory / 2**30:.0f} GiB sm_{p.major}{p.minor}")
PY
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv || true
timeout 360 python3 benchmarks/inference.py --device cuda --peak-tflops "${PEAK_TFLOPS:-790}" \
    --out "$OUT_DIR" || echo "inference check did not finish (exit $?)"
timeout 110 python3 benchmarks/distill_throughput.py --size real --device cuda --precision bf16 --batch-sizes 64,256 \
    --steps 100 --warmup-steps 10 --workers "$(( $(nproc) > 13 ? 12 : $(nproc) - 1 ))" --cache-views 1 \
    --out "$OUT_DIR/distill_throughput-real-cuda.json"
if [ "${PKD_TEACHER_MEMORY:-0}" = 1 ]; then
    python3 benchmarks/teacher_memory.py --size real --device cuda --precision bf16 --classes 100,1000 --chunks 0,64 \
        --batch 8 --steps 5 --out "$OUT_DIR/teacher_memory-real-cuda.json"
fi
