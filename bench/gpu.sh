#!/usr/bin/env bash
# The ViT-B-32 rows on a CUDA machine, in one prepared run of under 8 minutes: raw (decode +
# forward), raylens bulk (`raylens ingest`), the Ray Data peer, raylens HTTP (32 clients), with
# JPEG decode on the GPU (RAYLENS_DECODE_DEVICE=cuda) and fp16; then what bounds each row
# (bench/bounds.py). Without a GPU it runs the same rows at a small size, so it is known to
# work before a GPU machine is lent.
#
#   bash bench/gpu.sh                     # OUT=folder for the JSON (default: a temp folder)
#   BENCH_IMAGES=3000 bash bench/gpu.sh   # another image count
#   PYTHON=python3 bash bench/gpu.sh      # an interpreter that has raylens's packages (no uv)
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir=${OUT:-$(mktemp -d)}
mkdir -p "$out_dir"
read -r -a py <<<"${PYTHON:-uv run --frozen python}"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  export RAYLENS_DECODE_DEVICE=cuda RAYLENS_CLIP_PRECISION=fp16
  images=${BENCH_IMAGES:-2000}
  nvidia-smi -L
else
  echo "no CUDA GPU: the same rows at a small size, on the CPU" >&2
  images=${BENCH_IMAGES:-24}
fi
export PYTHONUNBUFFERED=1
start=$(date +%s)
# Faces, video and the 10,000-point search fill are other sections of `make bench`: left out
# to keep inside the time budget.
timeout 450 "${py[@]}" bench/bench_http.py --images "$images" --peers ray_data \
  --face-jobs 0 --index-points 1000 --search-queries 50 --json >"$out_dir/gpu-bench.json"
"${py[@]}" bench/bounds.py "$out_dir/gpu-bench.json" | tee "$out_dir/gpu-bounds.txt"
echo "took $(($(date +%s) - start)) s; JSON in $out_dir/gpu-bench.json" >&2
