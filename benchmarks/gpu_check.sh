#!/usr/bin/env bash
# The GPU checks of issue 12 (item 5) as one call of the device tool, prepared for a session that is lent a GPU:
#
#     run(command="bash benchmarks/gpu_check.sh", timeout_s=540)
#
# It needs nothing beyond the device image (torch, torchvision, timm, pytest, hypothesis are there; pycocotools and
# deflate are not, and neither is imported by these checks). Everything it prints also lands in $OUT: the GPU,
# the CUDA tests' log, and the batched table of `fusion_speed.py --device cuda` (text and JSON) for docs/benchmarks.md.
set -uo pipefail
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# The C kernels are CPU-only; build them anyway so that the CPU halves of the tests run as in CI (torch fallback if not).
python3 setup.py -q build_ext --inplace >"$out/build.txt" 2>&1 || echo "C extensions not built (torch fallback), see build.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
    | tee -a "$out/gpu.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider -k cuda tests/test_upsnet_rules.py tests/test_upsnet_training.py \
    tests/test_heuristic.py tests/test_export.py 2>&1 | tee "$out/cuda_tests.txt" | tail -20
timeout 280 python3 benchmarks/fusion_speed.py --device cuda --repeats 5 --json "$out/fusion_cuda.json" 2>&1 \
    | tee "$out/fusion_cuda.txt"
