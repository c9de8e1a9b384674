#!/usr/bin/env bash
# A candidate against a baseline on the same GPU in one call, for kernel changes between full
# gpu-check runs (card-to-card and run-to-run drift is larger than most changes): the selftest
# at each precision and the parity fixtures with the candidate, then `gradcam bench` of both
# binaries, interleaved, on ResNet-50 (TF32, BF16) and VGG16 (TF32).
#   here: cp gpu-kit/gradcam gpu-kit/gradcam-base (and commit → commit-base) before
#         scripts/make-gpu-kit.sh builds the candidate
#   device run: bash scripts/gpu-ab.sh [N_IMAGES, default 1024]     carry: ["gpu-kit"]
# NEW_ENV="VAR=value ..." is set for the candidate's runs only: with gradcam-base a copy of the
# same binary, it compares a switch (e.g. NEW_ENV=GRADCAM_CONV_ASYNC=1).
# Output under $OUT (else gpu-ab-out/): summary.txt and logs.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-ab-out}
n=${1:-1024}
work=/tmp/gpu-ab
kit=gpu-kit
mkdir -p "$out" "$work"
sum=$out/summary.txt
{ echo "candidate $(cat $kit/commit)  baseline $(cat $kit/commit-base 2>/dev/null)"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee "$sum"
nvrtc=$(ls /usr/local/cuda/lib64/libnvrtc.so.1[0-9] 2>/dev/null | head -1)
[ -n "$nvrtc" ] || nvrtc=$(find / -xdev -name 'libnvrtc.so.1[0-9]' 2>/dev/null | head -1)
export GRADCAM_NVRTC=$nvrtc RAYON_NUM_THREADS=16
run() { # name limit command...
  local t0=$SECONDS
  timeout "$2" "${@:3}" >"$work/$1.txt" 2>&1
  echo "$1: exit $?, $((SECONDS - t0)) s" | tee -a "$sum"
}
new_env=${NEW_ENV:-X=}
for p in tf32 f32 bf16 f16; do
  run selftest-$p 90 env GRADCAM_CACHE_DIR=/tmp/k-new $new_env $kit/gradcam selftest \
    --device cuda --precision $p
done
run parity 90 env GRADCAM_FIXTURES="$PWD/tests/fixtures" GRADCAM_REQUIRE_GPU=1 \
  GRADCAM_CACHE_DIR=/tmp/k-new $new_env $kit/cuda-tests --test-threads 1
for arch in resnet50 vgg16; do
  $kit/gradcam random-weights --arch $arch -o /tmp/$arch.safetensors >/dev/null 2>&1
done
for case in "resnet50 tf32" "resnet50 bf16" "vgg16 tf32"; do
  set -- $case
  for who in base new; do
    bin=$kit/gradcam; envs=$new_env; [ $who = base ] && bin=$kit/gradcam-base envs=X=
    run bench-$1-$2-$who 60 env GRADCAM_CACHE_DIR=/tmp/k-$who $envs $bin bench --device cuda \
      --precision $2 -m /tmp/$1.safetensors --batch 64 --images "$n" --size 224
    echo "  $(grep images/s $work/bench-$1-$2-$who.txt)" | tee -a "$sum"
  done
done
tar czf "$out/logs.tgz" -C "$work" .
