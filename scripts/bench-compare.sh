#!/usr/bin/env bash
# Side-by-side CPU benchmark: `gradcam explain` against pytorch-grad-cam 1.5.7, TorchCAM 0.5,
# Captum 0.9 and torch's bare forward pass, same images, same weights, same thread count, one run.
# Whole process timed from outside (start-up and model load included): 64 image files in,
# 64 overlay PNGs out, batch 8. Needs the tools venv (python -m venv .venv-tools &&
# .venv-tools/bin/pip install -r tools/requirements.txt) and a release build.
#
#   scripts/bench-compare.sh [N_IMAGES] [THREADS] [REPEATS]    → bench-out/results.txt
#   BENCH_FORMAT=jpg BENCH_SIZE=500x375 scripts/bench-compare.sh ...   photographs' format and size
#   BENCH_BF16=1 scripts/bench-compare.sh ...   also in bf16: gradcam --precision bf16 (AMX
#                                               convolutions) and every peer under torch's CPU
#                                               bf16 autocast (tools/bench_peers.py --bf16)
# (every tool resizes to 224x224; the peers decode with cv2, gradcam with libjpeg-turbo's C code).
# VGG16 also runs gradcam at its own default CPU batch (32), beside batch 8 for every tool.
# Each command runs REPEATS times (default 3) in turn with the others; the median time and the
# largest peak RSS are reported (this shared machine's speed drifts by ±10 % between runs).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-64}
threads=${2:-$(nproc)}
repeats=${3:-3}
py=.venv-tools/bin/python
bin=target/release/gradcam
work=bench-out
fmt=${BENCH_FORMAT:-png} size=${BENCH_SIZE:-224}
images=$work/images
[ "$fmt/$size" = png/224 ] || images=$work/images-$fmt-$size
mkdir -p "$work"
[ -x "$bin" ] || cargo build --release
[ -d "$images" ] || $py tools/make_bench_images.py "$images" "$n" --format "$fmt" --size "$size" >/dev/null
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads RAYON_NUM_THREADS=$threads
results=$work/results.txt
{
  echo "# $(date -u +%F) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $threads threads, $n $fmt images $size resized to 224x224, batch 8"
  echo "# median of $repeats runs; tool arch seconds images_per_s peak_rss_mb"
} >"$results"

timed() { # label arch command...
  local label=$1 arch=$2; shift 2
  local times=() kb=0
  for _ in $(seq "$repeats"); do
    /usr/bin/time -f "%e %M" "$@" >/dev/null 2>"$work/last.err" || { tail -5 "$work/last.err"; return 1; }
    local t; t=$(tail -1 "$work/last.err")
    times+=("${t% *}")
    [ "${t#* }" -gt "$kb" ] && kb=${t#* }
  done
  local secs; secs=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (repeats + 1) / 2 ))p")
  printf '%-16s %-9s %7.2f %7.2f %7.0f\n' "$label" "$arch" "$secs" "$(echo "$n / $secs" | bc -l)" "$(echo "$kb / 1024" | bc -l)" | tee -a "$results"
}

for spec in resnet50:layer4 vgg16:features.29; do
  arch=${spec%%:*} layer=${spec#*:}
  model=$work/$arch.safetensors
  [ -f "$model" ] || $py tools/export_torchvision.py "$arch" "$model" --weights NONE --seed 0 >/dev/null
  rm -rf "$work/out-"*
  timed gradcam-rs "$arch" $bin --threads "$threads" explain "$images" -m "$model" --layer "$layer" --batch 8 -o "$work/out-rs"
  if [ "$arch" = vgg16 ]; then
    timed gradcam-rs-b32 "$arch" $bin --threads "$threads" explain "$images" -m "$model" --layer "$layer" -o "$work/out-rs"
  fi
  # On a CPU with AVX-512, also without gradcam's AVX-512 GEMM (the gemm crate's AVX2 kernels).
  if grep -qw avx512f /proc/cpuinfo; then
    timed gradcam-avx2 "$arch" env GRADCAM_AVX512=0 $bin --threads "$threads" explain "$images" -m "$model" --layer "$layer" --batch 8 -o "$work/out-rs"
  fi
  for tool in gradcam torchcam captum forward; do
    timed "py-$tool" "$arch" $py tools/bench_peers.py --arch "$arch" --images "$images" --batch 8 --out "$work/out-$tool" --tool "$tool" --threads "$threads"
  done
  if [ "${BENCH_BF16:-0}" = 1 ]; then
    timed gradcam-rs-bf16 "$arch" $bin --threads "$threads" explain "$images" -m "$model" --layer "$layer" --batch 8 --precision bf16 -o "$work/out-rs"
    for tool in gradcam torchcam captum forward; do
      timed "py-$tool-bf16" "$arch" $py tools/bench_peers.py --arch "$arch" --images "$images" --batch 8 --out "$work/out-$tool" --tool "$tool" --threads "$threads" --bf16
    done
  fi
done
