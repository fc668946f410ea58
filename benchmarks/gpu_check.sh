#!/usr/bin/env bash
# The prepared GPU check: nine independent steps in priority order, each in its own process under its own time
# limit, each writing one JSON into $OUT (N-name.json: step, name, status ok|failed|skipped|timeout, reason,
# seconds, figures); a step that fails, hangs or dies is recorded as such and the next one runs. The steps
# (benchmarks/gpu_steps.py):
#   1 preflight     versions, imports, nvidia-smi, `pkd doctor --json`; what is missing and which steps skip
#   2 trt_runtime   TensorRTBackend over the real cuda-bindings with a CuPy-backed stand-in engine (trt_standin.py):
#                   profile switches, buffer growth, 8 threads, stage/run_staged, against numpy
#   3 numerics      the ViT-B-16 student on CUDA: FP32 vs TF32 (real and emulated) vs FP16 vs bf16 at logit scale 100
#   4 latency       the student at batch 1, 8, 32: eager FP16 and bf16, CUDA graphs; p50/p99, first call
#   5 text_encoder  the ViT-L-14 text tower on CUDA, FP16 vs FP32, names/s
#   6 bundle        a tiny run exported on the CPUs, `pkd predict --backend torch` on CUDA from files vs ONNX Runtime
#   7 distill       distill_throughput.py --size real: ViT-L-14 -> ViT-B-16 bf16 with and without the teacher cache
#   8 tensorrt      where `tensorrt` imports: `pkd export BUNDLE --trt` FP16 and INT8 with the gate, trtexec, latency
#   9 decode        1080p JPEGs to the crop: PIL reference, DCT-domain downscale, torch's decoder on CUDA (nvJPEG)
# The whole run stays within PKD_GPU_CHECK_BUDGET seconds (default 480: 8 minutes, 2 minutes of slack in a
# 10-minute call): each step's limit is cut to what is left, and a step with under 10 s left is skipped.
# Without a network, carry open_clip_torch, ftfy and wcwidth as wheels in .whl/ (docs/gpu-check.md).
#
#   bash benchmarks/gpu_check.sh                        # on the GPU box; JSONs in $OUT (default benchmarks/results/gpu-check)
#   bash benchmarks/gpu_check.sh --steps 2,3            # rerun some steps
#   OUT=/tmp/x bash benchmarks/gpu_check.sh --dry-run   # every step on this CPU with tiny models (CI runs it)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
DRY=() STEPS="" PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=(--dry-run) ;;
        --steps) STEPS=",$2,"; shift ;;
        --steps=*) STEPS=",${1#--steps=}," ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "unknown argument $1 (--dry-run, --steps 1,2,...)" >&2; exit 2 ;;
    esac
    shift
done
START=$SECONDS BUDGET=${PKD_GPU_CHECK_BUDGET:-480}
OUT_DIR=${OUT:-benchmarks/results/gpu-check}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd) || exit 2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pkd-gpu-check-XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT
if [ ${#DRY[@]} -eq 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
    # pure-Python wheels the box lacks; --no-deps: name every one (docs/gpu-check.md)
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
            .whl/*.whl; then
        export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "installing .whl/*.whl failed; the steps that need them will say so" >&2
    fi
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export PKD_CACHE_DIR=$WORK/pkd-cache
PLAN=$("$PY" benchmarks/gpu_steps.py plan "${DRY[@]}") || { echo "cannot read the step table" >&2; exit 2; }

while read -r INDEX NAME LIMIT; do
    case "$STEPS" in ""|*",$INDEX,"*) ;; *) continue ;; esac
    JSON=$OUT_DIR/$INDEX-$NAME.json LOG=$WORK/$INDEX-$NAME.log
    rm -f "$JSON"
    LEFT=$(( BUDGET - (SECONDS - START) ))
    if [ "$LEFT" -lt 10 ]; then
        "$PY" benchmarks/gpu_steps.py record "$INDEX" skipped "no time left in the ${BUDGET} s budget" 0 \
            --out "$OUT_DIR" "${DRY[@]}"
        continue
    fi
    [ "$LIMIT" -gt "$LEFT" ] && LIMIT=$LEFT
    echo "== step $INDEX $NAME (limit ${LIMIT} s)"
    T0=$SECONDS
    timeout -k 10 "$LIMIT" "$PY" benchmarks/gpu_steps.py run "$INDEX" --out "$OUT_DIR" --work "$WORK/$NAME" \
        "${DRY[@]}" >"$LOG" 2>&1
    RC=$?
    ELAPSED=$(( SECONDS - T0 ))
    if [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then
        "$PY" benchmarks/gpu_steps.py record "$INDEX" timeout "ran past its ${LIMIT} s limit" "$ELAPSED" \
            --out "$OUT_DIR" --log "$LOG" "${DRY[@]}"
    elif ! grep -qE '"status": "(ok|failed|skipped)"' "$JSON" 2>/dev/null; then
        "$PY" benchmarks/gpu_steps.py record "$INDEX" failed "exited with status $RC before writing its result" \
            "$ELAPSED" --out "$OUT_DIR" --log "$LOG" "${DRY[@]}"
    fi
    tail -n 3 "$LOG" | sed 's/^/   /'
done <<<"$PLAN"

rm -f "$OUT_DIR"/*.tmp  # a step killed while writing its JSON leaves its temporary file
echo "== $(( SECONDS - START )) s; results in $OUT_DIR"
"$PY" benchmarks/gpu_steps.py summary --out "$OUT_DIR"
exit 0
