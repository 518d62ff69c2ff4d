#!/usr/bin/env bash
# Run the GPU tests and benchmarks on a bare GPU machine whose python3 has torch and triton.
# Wheels for packages that machine lacks (diffusers, importlib_metadata, ...) are taken from
# .whl/ when present. Logs go to $OUT (or ./gpu_logs). Steps: tests scoring variants profile trace kernels
# wan wan_quick wan_floor scoring_tests videomae.
#   bash benchmarks/run_on_h200.sh tests scoring wan
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_logs}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# An editable install maps kernels/, data/, callbacks/ to psa_train.kernels/data/callbacks.
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$out/install.log" 2>&1 || {
    cat "$out/install.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$out/gpu.txt"
status=0
for step in "$@"; do
    echo "=== $step $(date -u +%H:%M:%S)"
    case "$step" in
        tests) python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_triton_kernels.py \
            tests/test_triton_block_scores.py tests/test_psa_layer.py tests/test_triton_assign.py 2>&1 \
            | tee "$out/gpu_tests.log" ;;
        scoring) python3 benchmarks/kernel_bench.py --scoring-only 2>&1 | tee "$out/scoring.log" ;;
        variants) python3 benchmarks/kernel_bench.py --variants --json "$out/variants.json" 2>&1 \
            | tee "$out/variants.log" ;;
        trace) (cd benchmarks && python3 kernel_trace.py && python3 kernel_trace.py --host) 2>&1 \
            | grep -v Warning | tee "$out/kernel_trace.log" ;;
        kernels) python3 benchmarks/kernel_bench.py --json "$out/kernel_bench.json" 2>&1 | tee "$out/kernel_bench.log" ;;
        wan) python3 benchmarks/wan_step_bench.py --variants dense-cudnn dense-flash psa psa-forced no-attention 2>&1 \
            | tee "$out/wan_step.log" ;;
        wan_quick) python3 benchmarks/wan_step_bench.py --variants dense-cudnn psa --skip-attention 2>&1 \
            | tee "$out/wan_step_quick.log" ;;
        profile) ncu --profile-from-start off --clock-control none -k regex:'_pyramid_fwd|_bwd_dq|_bwd_dkdv' \
            --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
            --section LaunchStats python3 benchmarks/profile_stages.py >"$out/ncu.txt" 2>&1; tail -c 20000 "$out/ncu.txt" ;;
        wan_floor) python3 benchmarks/wan_step_bench.py --variants dense-cudnn psa no-attention --skip-attention \
            2>&1 | tee "$out/wan_step_floor.log" ;;
        scoring_tests) python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_triton_block_scores.py 2>&1 \
            | tee "$out/scoring_tests.log" ;;
        videomae) python3 benchmarks/videomae_step_bench.py 2>&1 | tee "$out/videomae_step.log" ;;
        *) echo "unknown step $step"; status=2 ;;
    esac
    [ "${PIPESTATUS[0]:-0}" -eq 0 ] || status=1
done
exit "$status"
