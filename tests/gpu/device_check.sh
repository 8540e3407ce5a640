#!/bin/bash
# One prepared GPU check (issue 10): install carried wheels, GPU tests at paper sizes, GPU demo of videoseg + wsi.
set -o pipefail
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpuwhl/*.whl > $OUT/pip.log 2>&1 || { tail -20 $OUT/pip.log; exit 3; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 MPLBACKEND=Agg
echo "pip done in $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, medtransfer, sam2, monai, braindecode, mne; print('torch', torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())" 2>&1 | tail -3
cd "${TREE:-.}" || exit 4
timeout ${GPU_TEST_S:-300} python3 -m pytest -m gpu tests/gpu -s -q -p no:cacheprovider -o addopts="" --timeout 240 --junitxml=$OUT/gpu_junit.xml 2>&1 | tee $OUT/gpu_tests.log | grep -vE "^\s*$" | tail -60
echo "tests done at $(( $(date +%s) - T0 )) s"
cd /tmp
timeout ${GPU_DEMO_S:-150} python3 -m medtransfer.shared.cli.main demo --apps videoseg,wsi --out /tmp/gd > $OUT/gpu_demo.log 2>&1; echo "demo rc=$?"
tail -25 $OUT/gpu_demo.log
cp /tmp/gd/report.md $OUT/gpu_demo_report.md 2>/dev/null
nvidia-smi --query-gpu=memory.used --format=csv,noheader
echo "all done at $(( $(date +%s) - T0 )) s"
