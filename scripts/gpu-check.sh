#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the same model on ONNX Runtime's CPU and CUDA providers, timed side by
# side with `radstream bench alerts` (critical-finding latency, p50/p99). Both runs load the same GPU
# build of libonnxruntime, so only the provider differs; preprocessing is the CPU reference in both.
# Then the figures of issue 14 (BENCHMARKS.md, "On a GPU"): `bench preprocess` (the WGSL path vs the CPU
# reference per output size; the card's name and the GB/s a batch moves, to set against its memory
# bandwidth) and `bench load` end to end with the realistic 256² CNN on each provider, with the WGSL
# preprocessing (series in explicit, JPEG-LS and RLE: JPEG 2000 needs the Python encoder).
#
#   scripts/gpu-check.sh [MODEL_DIR]     default: the built-in model
#
# The GPU build comes from $RADSTREAM_CACHE/onnxruntime-gpu (scripts/setup.sh --cuda, which is run if it
# is missing and then needs the network once). NVIDIA runtime libraries already installed as Python
# wheels (nvidia-*, e.g. beside PyTorch) are used where that directory lacks them. RADSTREAM_BIN names a
# prebuilt binary; otherwise a release build is made (cargo).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'gpu-check: %s\n' "$*" >&2; }

nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || { say "no NVIDIA driver here (nvidia-smi)"; exit 1; }
CACHE="${RADSTREAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/radstream}"
GPU_DIR="$CACHE/onnxruntime-gpu"
if [ -f "$GPU_DIR/libonnxruntime.so.1.31.1" ]; then
  export RADSTREAM_ORT_LIB="$GPU_DIR/libonnxruntime.so.1.31.1"
  export LD_LIBRARY_PATH="$GPU_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  eval "$(scripts/setup.sh --cuda)"
fi
wheel_libs="$(python3 -c 'import glob, site, sys
dirs = {d for p in site.getsitepackages() + [site.getusersitepackages()] for d in glob.glob(p + "/nvidia/**/lib", recursive=True)}
print(":".join(sorted(dirs)))' 2>/dev/null || true)"
[ -n "$wheel_libs" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$wheel_libs"

BIN="${RADSTREAM_BIN:-}"
if [ -z "$BIN" ]; then
  cargo build --release --quiet
  BIN="${CARGO_TARGET_DIR:-target}/release/radstream"
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
model=()
[ $# -ge 1 ] && model=(--model-dir "$1")
for p in cpu cuda; do
  printf '[inference]\nprovider = "%s"\n' "$p" >"$tmp/$p.toml"
  say "bench on provider = \"$p\""
  # `cuda` fails the start, saying what is missing, rather than timing the CPU twice.
  RADSTREAM_LOG=warn "$BIN" bench alerts --config "$tmp/$p.toml" --preprocess cpu "${model[@]}" \
    --pushers 8 --studies 2 --alone 8 | grep ' alerts ' | sed "s/^ */$(printf '%-5s' "$p") /" >"$tmp/$p.txt"
done
paste -d'\n' "$tmp/cpu.txt" "$tmp/cuda.txt"

say "issue 14: WGSL preprocessing vs the CPU reference (batch 64)"
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv,noheader
RADSTREAM_LOG=warn "$BIN" bench preprocess --backend cpu,gpu --sizes 64,256,512 --batch 64 --seconds 2
for p in cpu cuda; do
  say "issue 14: end to end, realistic 256² CNN, provider = \"$p\", WGSL preprocessing"
  RADSTREAM_INFERENCE__PROVIDER="$p" RADSTREAM_LOG=warn "$BIN" bench load --model realistic \
    --preprocess gpu --slices 96 --streams 1,8 --syntax explicit,jpeg-ls,rle --keep "$tmp/bench" | tail -7
done
