#!/usr/bin/env bash
# The prepared GPU check: (1) real-size distillation, ViT-L-14 teacher -> ViT-B-16 student, 224 px, random
# weights, CUDA bf16, batch 64 and 256, 100 steps each, with and without the teacher-feature cache: images/s
# and peak GPU memory; (2) ViT-L-14 teacher tuning (stage I) at 100 and 1000 classes, batch 8, bf16, text
# tower in one pass and in checkpointed chunks of 64: peak GPU memory and step time.
# Records everything in $OUT (or benchmarks/results/). Needs torch with CUDA; nothing is
# downloaded: pure-Python wheels it lacks (open_clip_torch, ftfy, ...) are taken from .whl/ when present.
#
#   bash benchmarks/gpu_check.sh            # about 5 minutes on one H100/H200-class GPU
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
python3 benchmarks/distill_throughput.py --size real --device cuda --precision bf16 --batch-sizes 64,256 \
    --steps 100 --warmup-steps 10 --workers "$(( $(nproc) > 13 ? 12 : $(nproc) - 1 ))" --cache-views 1 \
    --out "$OUT_DIR/distill_throughput-real-cuda.json"
python3 benchmarks/teacher_memory.py --size real --device cuda --precision bf16 --classes 100,1000 --chunks 0,64 \
    --batch 8 --steps 5 --out "$OUT_DIR/teacher_memory-real-cuda.json"
