#!/usr/bin/env bash
# The GPU check of issue 16 as one prepared command: tests, CPU-vs-CUDA equality, paper-scale training speed,
# an epoch loop and GPU inference, with results in OUT_DIR (summary.md, results.json, *.log; no checkpoints).
#
#   benchmarks/gpu_check.sh OUT_DIR [--device cuda|cpu] [--minutes N] [--quick] [--only PARTS]
#                                   [--deadline-minutes M] [--data-dir DIR] [--python PY]
#   benchmarks/gpu_check.sh --prepare          # here, before a device call: data and wheels to carry
#
# Parts, in this order (each in its own process, each under its own time limit; a failing or late part is
# recorded in summary.md and the next one runs):
#   setup      is the package importable? if not: wheels from .whl/ into a temporary directory, then
#              `pip install --no-deps --no-build-isolation --no-index -e .` (SELFISH_NO_KERNELS=1: the CPU kernels
#              are not compiled there; the CPU side falls back to the PyTorch reference kernels)
#   tests      pytest -m gpu on every tests/test_*.py holding a gpu mark
#   equality   benchmarks/gpu_equality.py: one training step and the runtime's log-probabilities, CPU vs device
#   steps      benchmarks/gpu_train_bench.py steps: median step time dense vs selfish (+ SNT-ASGD), 2x1500
#   inference  benchmarks/gpu_inference_bench.py: sparse (cuSPARSE) vs dense (cuDNN), densities 0.33 and 0.1
#   epochs     benchmarks/gpu_train_bench.py epochs: ptb-stacked-lstm for --minutes (default 3), or less if the
#              deadline is nearer, then the projected time of all 100 epochs
# The whole command ends within --deadline-minutes (default 7.5): parts that would start too late are skipped.
# --quick (with --device cpu: the dry run) trains ptb-tiny and a 2x32 model and uses a 2x32 reference model.
#
# OUT_DIR gets at most 8 files (what a device call brings back): summary.md, results.json, check.log,
# tests.log, equality.log, train.log, inference.log. Run directories, checkpoints and exports go to a
# temporary directory that is removed at the end.
#
# On the device machine (Python 3.12, PyTorch with CUDA, no FastAPI/uvicorn: the GPU parts never import the
# server; everything else they import is already there, see .library/device/KINDS.md): first, here,
#   benchmarks/gpu_check.sh --prepare
# which copies ptb/ and ptb-tiny/ into .gpu_inputs/data (ignored through .git/info/exclude) and downloads a
# setuptools wheel (pyproject needs setuptools >= 77 for `pip install -e .`) into .whl/; then one device call:
#   run(command="bash benchmarks/gpu_check.sh $OUT --device cuda --minutes 3", carry=[".gpu_inputs", ".whl"],
#       timeout_s=540)
# and the results come back under the call's files_at. Paste summary.md into benchmarks/RESULTS.md.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2

usage() { sed -n '4,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "gpu_check.sh: error: $*" >&2; exit 2; }

prepare() {
    local shared="${SELFISH_DATA_DIR:-$REPO/../shared/data}" exclude
    [[ -f "$shared/ptb/ptb.train.txt" && -f "$shared/ptb-tiny/train.txt" ]] || die "no ptb/ and ptb-tiny/ in $shared"
    exclude="$(git rev-parse --git-path info/exclude)"
    mkdir -p "$(dirname "$exclude")" .gpu_inputs/data .whl
    grep -qxF '/.gpu_inputs/' "$exclude" 2>/dev/null || echo '/.gpu_inputs/' >>"$exclude"
    rm -rf .gpu_inputs/data/ptb .gpu_inputs/data/ptb-tiny
    cp -r "$shared/ptb" "$shared/ptb-tiny" .gpu_inputs/data/
    "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl 'setuptools==84.2.1' \
        || die "could not download the setuptools wheel"
    # the device copy has no .git: the commit travels as a file (and says it was read at --prepare)
    echo "$(git rev-parse --short HEAD)$([[ -n "$(git status --porcelain --untracked-files=no)" ]] && echo '+changes') (at --prepare)" \
        >.gpu_inputs/COMMIT
    du -sh .gpu_inputs .whl
    echo "ready: run(command=\"bash benchmarks/gpu_check.sh \$OUT --device cuda --minutes 3\", carry=[\".gpu_inputs\", \".whl\"], timeout_s=540)"
}

[[ $# -ge 1 ]] || usage
if [[ "$1" == "--prepare" ]]; then prepare; exit $?; fi
[[ "$1" == -* ]] && usage
OUT="$1"; shift
DEVICE=cuda; MINUTES=3; QUICK=0; ONLY=""; DEADLINE_MIN=7.5; DATA_DIR=""; PY="${PYTHON:-}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) DEVICE="${2:?}"; shift 2 ;;
        --minutes) MINUTES="${2:?}"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --only) ONLY="${2:?}"; shift 2 ;;
        --deadline-minutes) DEADLINE_MIN="${2:?}"; shift 2 ;;
        --data-dir) DATA_DIR="${2:?}"; shift 2 ;;
        --python) PY="${2:?}"; shift 2 ;;
        -h|--help) usage ;;
        *) die "unknown option $1" ;;
    esac
done
for p in ${ONLY//,/ }; do
    [[ " setup tests equality steps inference epochs " == *" $p "* ]] || die "--only: unknown part $p (setup, tests, equality, steps, inference, epochs)"
done
[[ "$DEVICE" =~ ^(cpu|cuda(:[0-9]+)?)$ ]] || die "--device must be cpu, cuda or cuda:N, got $DEVICE"
[[ "$MINUTES" =~ ^[0-9]+([.][0-9]+)?$ && "$DEADLINE_MIN" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--minutes and --deadline-minutes take numbers"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi
if [[ -z "$DATA_DIR" ]]; then
    for d in "${SELFISH_DATA_DIR:-}" "$REPO/.gpu_inputs/data" "$REPO/shared/data" "$REPO/../shared/data"; do
        if [[ -n "$d" && -f "$d/ptb-tiny/train.txt" ]]; then DATA_DIR="$(cd "$d" && pwd)"; break; fi
    done
fi
[[ -n "$DATA_DIR" && -f "$DATA_DIR/ptb-tiny/train.txt" ]] || die "no corpora (ptb-tiny/, ptb/) found: pass --data-dir or run --prepare"
[[ $QUICK == 1 || -f "$DATA_DIR/ptb/ptb.train.txt" || -f "$DATA_DIR/ptb/train.txt" ]] || die "no ptb/ in $DATA_DIR"
if [[ -e "$OUT" && -n "$(ls -A "$OUT" 2>/dev/null)" ]]; then die "$OUT is not empty"; fi
mkdir -p "$OUT" || die "cannot create $OUT"
OUT="$(cd "$OUT" && pwd)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
PARTS="$WORK/parts"; mkdir -p "$PARTS"
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1 SELFISH_DATA_DIR="$DATA_DIR" MPLBACKEND=Agg
COMMAND="benchmarks/gpu_check.sh $OUT --device $DEVICE --minutes $MINUTES$([[ $QUICK == 1 ]] && echo ' --quick')${ONLY:+ --only $ONLY}"
START=$(date +%s)
seconds_of() { awk -v m="$1" 'BEGIN { printf "%d", m * 60 }'; }  # minutes (may be fractional) -> seconds
DEADLINE=$(( START + $(seconds_of "$DEADLINE_MIN") ))
QFLAG=(); [[ $QUICK == 1 ]] && { QFLAG=(--quick); export OMP_NUM_THREADS=1; }  # tiny models: one thread
LOG="$OUT/check.log"

say() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
wanted() { [[ -z "$ONLY" || ",$ONLY," == *",$1,"* ]]; }
summarize() { "$PY" benchmarks/gpu_summary.py summary --parts "$PARTS" --out "$OUT" --command "$COMMAND" >>"$LOG" 2>&1; }
status() {  # NAME STATUS RC SECONDS
    printf '{"part": "%s", "status": "%s", "rc": %s, "seconds": %s}\n' "$1" "$2" "$3" "$4" >"$PARTS/$1.status.json"
}

# run_part NAME CAP_SECONDS LOGFILE CMD...: the part under `timeout`, never past the deadline.
FAILED=0
run_part() {
    local name="$1" cap="$2" logfile="$3" left t0 rc st
    shift 3
    wanted "$name" || return 0
    left=$(( DEADLINE - $(date +%s) - 15 ))
    if (( left < 20 )); then
        say "$name: skipped, ${left}s left before the deadline"
        status "$name" "skipped: no time left" null 0; summarize; FAILED=1; return 0
    fi
    (( cap > left )) && cap=$left
    say "$name: starting (at most ${cap}s)"
    echo "=== $(date -u +%H:%M:%S) $name: $*" >>"$logfile"
    t0=$(date +%s)
    timeout --signal=TERM --kill-after=15 "$cap" "$@" >>"$logfile" 2>&1
    rc=$?
    case $rc in
        0) st=ok ;;
        124|137) st="timed out after ${cap}s" ;;
        *) st="failed (exit $rc)" ;;
    esac
    [[ $rc == 0 ]] || FAILED=1
    status "$name" "$st" "$rc" $(( $(date +%s) - t0 ))
    say "$name: $st in $(( $(date +%s) - t0 ))s"
    summarize
}

say "gpu check: device $DEVICE, data $DATA_DIR, python $PY, work $WORK, deadline $(date -u -d "@$DEADLINE" +%H:%M:%S)"
command -v nvidia-smi >/dev/null && nvidia-smi >>"$LOG" 2>&1

setup() {
    local probe="import selfish_deploy.training.trainer, selfish_deploy.runtime, selfish_deploy.export.writer"
    "$PY" -c "$probe" && { echo "selfish_deploy already importable"; return 0; }
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
            .whl/*.whl || return 1
        export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"  # setuptools for the editable install
    fi
    SELFISH_NO_KERNELS=1 "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . || return 1
    "$PY" -c "$probe"
}
if wanted setup; then
    t0=$(date +%s)
    echo "=== setup" >>"$LOG"
    if setup >>"$LOG" 2>&1; then st=ok; rc=0; else st="failed: selfish_deploy not importable (see check.log)"; rc=1; FAILED=1; fi
    status setup "$st" "$rc" $(( $(date +%s) - t0 ))
    say "setup: $st"
fi
if COMMIT="$(git rev-parse --short HEAD 2>/dev/null)"; then
    [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]] && COMMIT="$COMMIT+changes"
else
    COMMIT="$(cat .gpu_inputs/COMMIT 2>/dev/null || echo unknown)"
fi
"$PY" benchmarks/gpu_summary.py env --device "$DEVICE" --commit "$COMMIT" --out "$PARTS/env.json" >>"$LOG" 2>&1 \
    || say "env: could not read the device (see check.log)"
summarize

GPU_TESTS=$(grep -l 'mark\.gpu' tests/test_*.py | tr '\n' ' ')
# shellcheck disable=SC2086
run_part tests 150 "$OUT/tests.log" "$PY" -m pytest -m gpu -p no:cacheprovider -q --continue-on-collection-errors \
    --junitxml="$PARTS/tests.xml" $GPU_TESTS
run_part equality 120 "$OUT/equality.log" "$PY" benchmarks/gpu_equality.py --device "$DEVICE" --data-dir "$DATA_DIR" \
    --work "$WORK/equality" --out-json "$PARTS/equality.json" --budget-s 90 "${QFLAG[@]}"
STEP_FLAGS=(); [[ $QUICK == 1 ]] && STEP_FLAGS=(--max-batches 5 --rounds 1)
run_part steps 170 "$OUT/train.log" "$PY" benchmarks/gpu_train_bench.py steps --device "$DEVICE" --data-dir "$DATA_DIR" \
    --work "$WORK/steps" --out-json "$PARTS/steps.json" --budget-s 120 "${STEP_FLAGS[@]}" "${QFLAG[@]}"
run_part inference 150 "$OUT/inference.log" "$PY" benchmarks/gpu_inference_bench.py --device "$DEVICE" \
    --work "$WORK/inference" --out-json "$PARTS/inference.json" --budget-s 110 "${QFLAG[@]}"

# The epoch loop gets --minutes, or what is left before the deadline (minus the trainer's stop and the summary).
LEFT=$(( DEADLINE - $(date +%s) - 45 ))
EPOCH_S=$(seconds_of "$MINUTES")
(( EPOCH_S > LEFT )) && EPOCH_S=$LEFT
EPOCH_FLAGS=(); [[ $QUICK == 1 ]] && EPOCH_FLAGS=(--epochs 3)
if (( EPOCH_S >= 30 )); then
    run_part epochs $(( EPOCH_S + 40 )) "$OUT/train.log" "$PY" benchmarks/gpu_train_bench.py epochs --device "$DEVICE" \
        --data-dir "$DATA_DIR" --work "$WORK/epochs" --out-json "$PARTS/epochs.json" \
        --minutes "$(awk -v s="$EPOCH_S" 'BEGIN { printf "%.3f", s / 60 }')" --log "$OUT/train.log" "${EPOCH_FLAGS[@]}" "${QFLAG[@]}"
elif wanted epochs; then
    status epochs "skipped: ${EPOCH_S}s left" null 0; say "epochs: skipped, ${EPOCH_S}s left"; FAILED=1
fi
summarize
say "done in $(( $(date +%s) - START ))s: $OUT/summary.md"
exit $FAILED
