#!/bin/bash
# One prepared GPU check (issue 10), sized for a 15-minute lease: <= 9 minutes of command time on an H100.
#
# On the GPU machine, in the repository root, with the wheels of tests/gpu/build_wheels.sh carried as .whl:
#     bash tests/gpu/device_check.sh            (run's timeout_s: 600; everything lands in $OUT)
# Dry run here without CUDA (the GPU tests skip, the demo step is skipped, the summary is still written):
#     OUT=/tmp/dc SKIP_INSTALL=1 PY=.venv/bin/python bash tests/gpu/device_check.sh
#
# Steps, most wanted first, each with its own timeout and skipped when the budget left is too small:
#   1 videoseg trackrad (MedSAM2 512 px, never run on a GPU yet)   2 videoseg echonet (1024 px + its export)
#   3 `medtransfer demo` on CUDA for wsi, cardiac, eeg: in the background from the end of step 2's training on
#   4 the other GPU tests (cardiac, eeg, wsi, engine: they passed on 2026-11-27; their ms/step lines are then
#     taken with the demo running beside them)
# Files in $OUT (the lease returns at most 8): summary.md, setup.log, t1_trackrad.log, t2_echonet.log,
# t3_demo.log, demo_report.md, t4_rest.log.
# Env: BUDGET_S (default 530), WHL (.whl), PY (python3), SKIP_INSTALL=1, DEMO_APPS (wsi,cardiac,eeg),
#      DEMO_ARGS (extra demo flags, e.g. --no-tools), FORCE_DEMO=1 (run the demo without CUDA too).
set -o pipefail
T0=$(date +%s)
BUDGET_S=${BUDGET_S:-530}
OUT=${OUT:?set OUT to the folder for the logs}
WHL=${WHL:-.whl}
PY=${PY:-python3}
case $PY in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac # the demo runs from /tmp
DEMO_APPS=${DEMO_APPS:-wsi,cardiac,eeg}
mkdir -p "$OUT"
ROOT=$(pwd)
SUM="$OUT/summary.md"
left() { echo $((BUDGET_S - ($(date +%s) - T0))); }
note() { echo "$*" | tee -a "$SUM"; }

: >"$SUM"
note "# GPU check $(date -u +%FT%TZ) (budget ${BUDGET_S} s)"
note ""
# --- setup: carried wheels, versions, device -------------------------------------------------------
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHL"/*.whl >"$OUT/setup.log" 2>&1 || { note "- setup: pip install failed (see setup.log)"; exit 3; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
note "- setup: wheels installed at $(($(date +%s) - T0)) s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$OUT/setup.log" 2>&1
timeout 120 "$PY" - >>"$OUT/setup.log" 2>&1 <<'EOF'
import importlib, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
for m in ("medtransfer", "sam2", "monai", "braindecode", "mne", "zarr", "numcodecs", "tiffslide", "sksurv", "onnxruntime"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"), getattr(mod, "__file__", ""))
    except Exception as e:  # noqa: BLE001 - every missing module is listed, then the steps fail on it
        print(m, "MISSING", type(e).__name__, e)
EOF
CUDA=$(grep -q "cuda True" "$OUT/setup.log" && echo 1 || echo 0)
note "- device: $(grep -m1 '^python' "$OUT/setup.log") (CUDA=$CUDA)"
grep -q MISSING "$OUT/setup.log" && note "- missing modules: $(grep MISSING "$OUT/setup.log" | cut -d' ' -f1 | tr '\n' ' ')"
note ""
note "| step | result | seconds | last line |"
note "| --- | --- | --- | --- |"

# step NAME LOG MAX_S MIN_S ARGS...: pytest ARGS under min(MAX_S, budget left), skipped under MIN_S left
step() {
  local name=$1 log=$2 max=$3 min=$4
  shift 4
  local t lim rc s0 last res
  t=$(left)
  if [ "$t" -lt "$min" ]; then
    note "| $name | not run: ${t} s left < ${min} s | 0 | |"
    return
  fi
  lim=$((t < max ? t : max))
  s0=$(date +%s)
  # pytest's own per-test timeout fires first, so its report (and the failing test) reaches the log
  timeout -k 10 "$lim" "$PY" -m pytest "$@" -s -q -p no:cacheprovider -o addopts="-ra" \
    --timeout $((lim > 30 ? lim - 15 : lim)) >"$OUT/$log" 2>&1
  rc=$?
  last=$(grep -E "passed|failed|skipped|error|no tests ran" "$OUT/$log" | tail -1 | tr -d '=|' | sed 's/^ *//')
  case $rc in 0) res=ok ;; 124 | 137) res="TIMEOUT ${lim} s" ;; 5) res="no tests" ;; *) res="FAILED rc=$rc" ;; esac
  [ "$res" = ok ] && ! echo "$last" | grep -q passed && res=skipped
  note "| $name | $res | $(($(date +%s) - s0)) | ${last:0:140} |"
}

cd "${TREE:-$ROOT}" || exit 4
step "videoseg trackrad 512 px (train + export)" t1_trackrad.log 220 60 \
  -m gpu tests/gpu/test_gpu_videoseg.py -k "cuda and trackrad"

# The demo starts in the background once the echonet test has printed its training ms/step (its export and
# the later steps are CPU work; 16 cores), or when that step ends, whichever comes first.
start_demo() {
  local t
  t=$(left)
  if [ "$CUDA" != 1 ] && [ "${FORCE_DEMO:-0}" != 1 ]; then
    echo "skipped: no CUDA (FORCE_DEMO=1 runs it anyway)" >"$OUT/t3_demo.log"
  elif [ "$t" -lt 60 ]; then
    echo "not run: ${t} s left < 60 s" >"$OUT/t3_demo.log"
  else
    rm -rf /tmp/gpu_demo
    local s0
    s0=$(date +%s)
    echo "demo started at $((s0 - T0)) s with ${t} s left" >"$OUT/t3_demo.log"
    # shellcheck disable=SC2086
    (cd /tmp && timeout -k 10 "$t" "$PY" -m medtransfer.shared.cli.main demo --apps "$DEMO_APPS" $DEMO_ARGS \
      --out /tmp/gpu_demo >>"$OUT/t3_demo.log" 2>&1)
    echo "demo rc=$? after $(($(date +%s) - s0)) s" >>"$OUT/t3_demo.log"
  fi
}
rm -f "$OUT/t3_demo.log" /tmp/gpu_demo.go
(
  until [ -f /tmp/gpu_demo.go ] || grep -qs "echonet on .* ms/step" "$OUT/t2_echonet.log"; do sleep 2; done
  start_demo
) &
DEMO_PID=$!
step "videoseg echonet 1024 px (train + export)" t2_echonet.log 220 60 \
  -m gpu tests/gpu/test_gpu_videoseg.py -k "cuda and echonet"
touch /tmp/gpu_demo.go
step "gpu tests cardiac, eeg, wsi, engine (beside the demo)" t4_rest.log 400 45 \
  -m gpu tests/gpu --ignore=tests/gpu/test_gpu_videoseg.py
wait "$DEMO_PID"
rm -f /tmp/gpu_demo.go
res=$(grep -oE "^(skipped|not run).*|demo rc=[0-9]+" "$OUT/t3_demo.log" | tail -1)
case $res in "demo rc=0") res=ok ;; "demo rc=124" | "demo rc=137") res=TIMEOUT ;; "demo rc="*) res="FAILED ${res#demo }" ;; esac
last=$(grep -vE "^\s*$|^demo (rc|started)|^(skipped|not run)" "$OUT/t3_demo.log" | tail -1)
secs=$(grep -oE "^demo rc=[0-9]+ after [0-9]+" "$OUT/t3_demo.log" | grep -oE "[0-9]+$")
note "| demo $DEMO_APPS on $([ "$CUDA" = 1 ] && echo CUDA || echo CPU) $(grep -oE '^demo started at [0-9]+ s' "$OUT/t3_demo.log" | cut -c6-) | $res | ${secs:-0} | ${last:0:140} |"
cp /tmp/gpu_demo/report.md "$OUT/demo_report.md" 2>/dev/null

# --- the numbers ------------------------------------------------------------------------------------------
note ""
note "## timings printed by the tests"
note '```'
grep -hE "ms/step|ms/bag|export .* took" "$OUT"/t*_*.log 2>/dev/null | tee -a "$SUM"
note '```'
[ -f "$OUT/t3_demo.log" ] && { note "## demo"; note '```'; grep -E "done in|failed|error" "$OUT/t3_demo.log" | tail -12 | tee -a "$SUM"; note '```'; }
note "GPU memory used at the end: $(nvidia-smi --query-gpu=memory.used --format=csv,noheader 2>/dev/null || echo -)"
note "all done at $(($(date +%s) - T0)) s"
