#!/usr/bin/env bash
# Every GPU figure from one device loan, in one command (under 10 minutes on one H100/H200):
# the full-size transformer (load, memory per mode, step speed), lip-sync batching with a
# generator whose inference dominates, and the gRPC and REST overheads. Run from the repo root
# with the venv built (make setup); each part is bounded so one slow part cannot eat the rest.
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no nvidia-smi"
echo "== full-size transformer (benchmarks/gpu_full_size.py)"
timeout 330 "$PY" benchmarks/gpu_full_size.py --steps 2 --pairs 3 || echo "gpu_full_size: failed or timed out ($?)"
echo "== lip-sync batching, unet generator (benchmarks/lipsync.py)"
timeout 150 "$PY" benchmarks/lipsync.py --generator unet || echo "lipsync: failed or timed out ($?)"
echo "== gRPC overhead (benchmarks/grpc_overhead.py)"
timeout 60 "$PY" benchmarks/grpc_overhead.py || echo "grpc_overhead: failed or timed out ($?)"
echo "== REST overhead (benchmarks/rest_overhead.py)"
timeout 60 "$PY" benchmarks/rest_overhead.py || echo "rest_overhead: failed or timed out ($?)"
