#!/usr/bin/env bash
# Everything the CUDA backend must show on a real GPU, in one go (for the lent H100; see the
# developers' guide): the selftest at each precision, the parity fixtures end to end
# (tests/cuda.rs), `gradcam bench --device cuda` on ResNet-50 and VGG16 (batch 64, with a
# per-kernel profile) and the PyTorch peers on the same card. Needs gpu-kit/ from
# scripts/make-gpu-kit.sh; no Rust, no network. Logs go to $OUT (else gpu-check-out/).
#   device run: bash scripts/gpu-check.sh [N_IMAGES]     carry: ["gpu-kit"]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check-out}
n=${1:-256}
mkdir -p "$out"
kit=gpu-kit
sum=$out/summary.txt
step() { # name timeout command... : runs, logs to $out/name.txt, records the exit status
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  local rc=$?
  echo "$name: exit $rc, $((SECONDS - t0)) s" | tee -a "$sum"
}

{ echo "commit $(cat $kit/commit 2>/dev/null)  $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } | tee "$sum"

# NVRTC: the CUDA toolkit's, else PyTorch's pip package.
nvrtc=$(ls /usr/local/cuda/lib64/libnvrtc.so.1[0-9] 2>/dev/null | head -1)
[ -n "$nvrtc" ] || nvrtc=$(find / -xdev -name 'libnvrtc.so.1[0-9]' 2>/dev/null | head -1)
export GRADCAM_NVRTC=$nvrtc GRADCAM_CACHE_DIR=/tmp/gradcam-kernels RAYON_NUM_THREADS=16
echo "nvrtc $nvrtc" | tee -a "$sum"

for p in f32 tf32 bf16; do
  step selftest-$p 120 $kit/gradcam selftest --device cuda --precision $p
done
step parity 180 env GRADCAM_FIXTURES="$PWD/tests/fixtures" GRADCAM_REQUIRE_GPU=1 \
  $kit/cuda-tests --nocapture --test-threads 1

for arch in resnet50 vgg16; do
  $kit/gradcam random-weights --arch $arch -o /tmp/$arch.safetensors >/dev/null
  for p in tf32 bf16 f32; do
    step bench-$arch-$p 240 $kit/gradcam bench --device cuda --precision $p \
      -m /tmp/$arch.safetensors --batch 64 --images "$n" --size 224 --profile
  done
done

python3 -m pip install -q --no-index --no-deps --target /tmp/site $kit/whl/*.whl &&
  export PYTHONPATH=/tmp/site
for arch in resnet50 vgg16; do
  step peers-$arch 300 python3 tools/bench_gpu_peers.py --arch $arch --batch 64 --images "$n"
done
grep -h "images/s\|peak device\|tool=" "$out"/bench-*.txt "$out"/peers-*.txt | tee -a "$sum"
