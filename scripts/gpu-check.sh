#!/usr/bin/env bash
# Everything the CUDA backend must show on a real GPU, in one go (for the lent H100; see GPU.md):
# the selftest at each precision, the parity fixtures end to end (tests/cuda.rs),
# `gradcam bench --device cuda` on ResNet-50 and VGG16 (batch 64, with the per-kernel profile)
# and the PyTorch peers on the same card. Needs gpu-kit/ from scripts/make-gpu-kit.sh; no Rust,
# no network. Results go to $OUT (else gpu-check-out/) as three files (the device tool returns
# at most 8): summary.txt, all.log (every step's output, appended as it finishes) and logs.tgz
# (one file per step). Steps run most important first and share a time budget (BUDGET seconds,
# default 520), so one call always returns its logs.
#   device run: bash scripts/gpu-check.sh [N_IMAGES, default 1024]     carry: ["gpu-kit"]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check-out}
n=${1:-1024}
budget=${BUDGET:-520}
work=/tmp/gpu-check
mkdir -p "$out" "$work"
kit=gpu-kit
sum=$out/summary.txt
last_rc=0
step() { # name limit command... : runs within the budget, logs to $out/name.txt
  local name=$1 limit=$2; shift 2
  local left=$((budget - SECONDS))
  if [ "$left" -lt 15 ]; then echo "$name: skipped (budget spent)" | tee -a "$sum"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  # -k: a process stuck in the driver that ignores the TERM is killed 10 s later.
  timeout -k 10 "$limit" "$@" >"$work/$name.txt" 2>&1
  local rc=$?
  last_rc=$rc
  echo "$name: exit $rc, $((SECONDS - t0)) s" | tee -a "$sum"
  { echo "=== $name (exit $rc) ==="; cat "$work/$name.txt"; } >>"$out/all.log"
}

{ echo "commit $(cat $kit/commit 2>/dev/null)  $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } | tee "$sum"

# NVRTC: the CUDA toolkit's, else PyTorch's pip package.
nvrtc=$(ls /usr/local/cuda/lib64/libnvrtc.so.1[0-9] 2>/dev/null | head -1)
[ -n "$nvrtc" ] || nvrtc=$(find / -xdev -name 'libnvrtc.so.1[0-9]' 2>/dev/null | head -1)
export GRADCAM_NVRTC=$nvrtc GRADCAM_CACHE_DIR=/tmp/gradcam-kernels RAYON_NUM_THREADS=16
echo "nvrtc $nvrtc" | tee -a "$sum"

python3 -m pip install -q --no-index --no-deps --target /tmp/site $kit/whl/*.whl &&
  export PYTHONPATH=/tmp/site
for arch in resnet50 vgg16; do
  $kit/gradcam random-weights --arch $arch -o /tmp/$arch.safetensors >/dev/null 2>&1
done
bench() { # arch precision [tile: 64|128, else chosen per layer] [extra env]
  for f in $hung; do
    if [[ "${4:-}" == *"$f"* ]]; then
      echo "bench-$1-$2${3:+-t$3}${4:+-$4}: skipped ($f hung in its selftest)" | tee -a "$sum"
      return
    fi
  done
  step bench-$1-$2${3:+-t$3}${4:+-$4} 120 env GRADCAM_CONV_TILE=${3:-auto} ${4:-X=} \
    $kit/gradcam bench --device cuda --precision $2 -m /tmp/$1.safetensors --batch 64 \
    --images "$n" --size 224 --profile
}

step selftest-tf32 90 $kit/gradcam selftest --device cuda --precision tf32
step selftest-bf16 45 $kit/gradcam selftest --device cuda --precision bf16
# Hopper's warpgroup MMA (GRADCAM_CONV_WGMMA=1, channels-last): the wgmma rows check the
# instruction against its twin (the swizzled shared-memory layout and descriptors), the conv
# rows the kernels against the CPU. First, as the newest and least proven path.
# A path whose selftest hangs (timeout: exit 124, or 137 once killed) is not benched: each
# bench would hang too, and spend the budget. `hung` lists their flags.
hung=
for p in tf32 bf16 f16; do
  step selftest-$p-wgmma 45 env GRADCAM_CONV_WGMMA=1 $kit/gradcam selftest --device cuda \
    --precision $p
  case $last_rc in 124 | 137) hung="$hung GRADCAM_CONV_WGMMA"; break ;; esac
done
# Channels-last convolutions on mma.sync (GRADCAM_CONV_NHWC=1).
for p in tf32 bf16 f16; do
  step selftest-$p-nhwc 45 env GRADCAM_CONV_NHWC=1 $kit/gradcam selftest --device cuda \
    --precision $p
  case $last_rc in 124 | 137) hung="$hung GRADCAM_CONV_NHWC"; break ;; esac
done
# Each default (kernels tuned per layer; the profile names each layer's choice) beside
# channels-last on mma.sync and on wgmma, then the peers on the same card; the other
# experiments after.
bench resnet50 tf32
bench resnet50 tf32 "" GRADCAM_CONV_NHWC=1
bench resnet50 tf32 "" GRADCAM_CONV_WGMMA=1
step peers-resnet50 150 python3 tools/bench_gpu_peers.py --arch resnet50 --batch 64 --images "$n"
bench resnet50 bf16
bench resnet50 bf16 "" GRADCAM_CONV_NHWC=1
bench resnet50 bf16 "" GRADCAM_CONV_WGMMA=1
bench vgg16 tf32
bench vgg16 tf32 "" GRADCAM_CONV_NHWC=1
bench vgg16 tf32 "" GRADCAM_CONV_WGMMA=1
step peers-vgg16 150 python3 tools/bench_gpu_peers.py --arch vgg16 --batch 64 --images "$n"
bench vgg16 bf16
bench vgg16 bf16 "" GRADCAM_CONV_NHWC=1
bench vgg16 bf16 "" GRADCAM_CONV_WGMMA=1
# tests/cuda.rs (the selftest's configurations, tuning choices bit for bit, the parity
# fixtures at every precision and on wgmma): after the benches, as the selftests above already
# run every kernel and the fixtures end to end.
# Tests of a path whose selftest hung are left out: tests on wgmma have it in their names;
# channels-last on mma.sync runs in the selftest, tuning-choice and wgmma tests (the wgmma
# backends keep inputs under 64 channels at 16 bits on mma.sync).
skip=()
[[ "$hung" == *WGMMA* ]] && skip+=(--skip wgmma)
[[ "$hung" == *NHWC* ]] && skip+=(--skip selftest_passes --skip conv_tuning_choices --skip wgmma)
step parity 120 env GRADCAM_FIXTURES="$PWD/tests/fixtures" GRADCAM_REQUIRE_GPU=1 \
  $kit/cuda-tests --nocapture --test-threads 1 ${skip[@]+"${skip[@]}"}
step selftest-f32 45 $kit/gradcam selftest --device cuda --precision f32
step selftest-f16 45 $kit/gradcam selftest --device cuda --precision f16
bench resnet50 f16 "" GRADCAM_CONV_WGMMA=1
bench resnet50 tf32 "" GRADCAM_CONV_TUNE=0
bench resnet50 bf16 "" GRADCAM_CONV_TUNE=0
# The older experimental paths: KRSC weights (GRADCAM_CONV_KRSC=1) at each tensor-core
# precision, and the cp.async ring (GRADCAM_CONV_ASYNC=1: every TF32 forward conv; BF16 and
# F16 1x1 ones, where tuning may also pick it).
for p in tf32 bf16 f16; do
  step selftest-$p-krsc 45 env GRADCAM_CONV_KRSC=1 $kit/gradcam selftest --device cuda \
    --precision $p
done
for p in tf32 bf16 f16; do
  step selftest-$p-async 45 env GRADCAM_CONV_ASYNC=1 $kit/gradcam selftest --device cuda \
    --precision $p
done
bench resnet50 tf32 "" GRADCAM_CONV_KRSC=1
bench resnet50 tf32 "" GRADCAM_CONV_ASYNC=1
bench resnet50 bf16 "" GRADCAM_CONV_KRSC=1
bench resnet50 bf16 "" GRADCAM_CONV_ASYNC=1
bench resnet50 f16
bench resnet50 f16 "" GRADCAM_CONV_NHWC=1
bench vgg16 tf32 "" GRADCAM_CONV_TUNE=0
bench vgg16 tf32 "" GRADCAM_CONV_ASYNC=1
bench vgg16 bf16 "" GRADCAM_CONV_TUNE=0
bench vgg16 f16
bench vgg16 f16 "" GRADCAM_CONV_TUNE=0
# The CLI end to end: `--device auto` must pick the GPU; f32 outputs must match the CPU's.
step explain-demo 60 bash -c "set -o pipefail
  $kit/gradcam explain assets/demo/images -o /tmp/demo-gpu --precision f32 2>&1 | tee /tmp/demo.log &&
  grep -q 'running on cuda' /tmp/demo.log &&
  $kit/gradcam explain assets/demo/images -o /tmp/demo-cpu --device cpu &&
  python3 - <<'PY'
import json, pathlib
for f in sorted(pathlib.Path('/tmp/demo-cpu').glob('*.json')):
    a, b = json.loads(f.read_text()), json.loads((pathlib.Path('/tmp/demo-gpu') / f.name).read_text())
    ok = a['class'] == b['class'] and abs(a['probability'] - b['probability']) < 1e-4
    print(f.name, a['class'], b['class'], a['probability'], b['probability'], 'ok' if ok else 'DIFFERS')
    assert ok
PY"
# Hardware counters (Nsight Compute) of the first 24 forward convs of one ResNet-50 batch
# (stem, layer1, most of layer2: the 1x1 convs that run at 13-25 TFLOP/s and the 3x3s), at
# BF16, default beside channels-last (mma.sync, wgmma): occupancy, stall reasons, memory and tensor-pipe throughput.
ncu_bin=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
ncu_convs() { # name [env] (untuned: tuning would launch every candidate)
  step ncu-$1 100 env GRADCAM_CONV_TUNE=0 ${2:-X=} "$ncu_bin" --clock-control none --kernel-name regex:'^conv2d_fwd' \
    --launch-count 24 --section SpeedOfLight --section Occupancy --section LaunchStats \
    --section WarpStateStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    $kit/gradcam bench --device cuda --precision bf16 -m /tmp/resnet50.safetensors --batch 64 \
    --images 64 --size 224
}
if [ -n "$ncu_bin" ]; then
  ncu_convs resnet50-bf16
  [[ "$hung" == *NHWC* ]] || ncu_convs resnet50-bf16-nhwc GRADCAM_CONV_NHWC=1
  [[ "$hung" == *WGMMA* ]] || ncu_convs resnet50-bf16-wgmma GRADCAM_CONV_WGMMA=1
else
  echo "ncu: not found" | tee -a "$sum"
fi
bench resnet50 f32
bench vgg16 f32
bench resnet50 tf32 "" GRADCAM_PINNED=0   # plain (pageable) copies, for comparison
# Data-set mode (`explain --outputs cam,json`): no overlays drawn, copied back or encoded.
step bench-resnet50-tf32-no-overlay 120 $kit/gradcam bench --device cuda --precision tf32 \
  -m /tmp/resnet50.safetensors --batch 64 --images "$n" --size 224 --no-overlay
# The methods with host work or more passes (GPU.md run 6, item 6): Eigen-CAM's component on
# the host, Ablation-CAM (at layer4 from one backward pass, the head being affine; at layer3
# a run on from the layer per channel), FullGrad's per-layer terms (one min-max, sum and
# resize per bias layer), aug_smooth's six copies.
for m in eigencam ablationcam fullgrad; do
  step bench-resnet50-tf32-$m 90 $kit/gradcam bench --device cuda --precision tf32 \
    -m /tmp/resnet50.safetensors --batch 64 --images 256 --size 224 --method $m
done
step bench-resnet50-tf32-ablationcam-layer3 90 $kit/gradcam bench --device cuda \
  --precision tf32 -m /tmp/resnet50.safetensors --batch 16 --images 16 --size 224 \
  --method ablationcam --layer layer3
step bench-resnet50-tf32-aug-smooth 90 $kit/gradcam bench --device cuda --precision tf32 \
  -m /tmp/resnet50.safetensors --batch 64 --images 256 --size 224 --aug-smooth
# ShapleyCAM under ReST (a forward-mode pass from the layer, then Grad-CAM's backward pass;
# VGG16's runs max_pool2d_tangent and the classifier again) and FEM (no backward pass).
step bench-resnet50-tf32-shapleycam-rest 90 $kit/gradcam bench --device cuda --precision tf32 \
  -m /tmp/resnet50.safetensors --batch 64 --images 256 --size 224 --method shapleycam --target rest
step bench-vgg16-tf32-shapleycam-rest 90 $kit/gradcam bench --device cuda --precision tf32 \
  -m /tmp/vgg16.safetensors --batch 64 --images 256 --size 224 --method shapleycam --target rest
step bench-resnet50-tf32-fem 90 $kit/gradcam bench --device cuda --precision tf32 \
  -m /tmp/resnet50.safetensors --batch 64 --images 256 --size 224 --method fem
# SESS over Grad-CAM: 122 windows per image, cut and pasted on the host.
step bench-resnet50-tf32-sess 90 $kit/gradcam bench --device cuda --precision tf32 \
  -m /tmp/resnet50.safetensors --batch 8 --images 16 --size 224 --sess
# Deep Feature Factorization: the layer's activations on the device, downloaded a batch at a
# time; the NMF, the concepts' classes and the overlays on the host (96 images).
step dff-resnet50-tf32 60 bash -c "time $kit/gradcam dff assets/demo/heldout --device cuda \
  --precision tf32 -m /tmp/resnet50.safetensors --size 224 -k 16 -o $work/dff-out"
# A data set of photographs, whole process: 1024 JPEGs of 500x375 (ImageNet's size, 4:2:0)
# decoded on the host (libjpeg-turbo's C code, rayon over the cores; the image crate's SIMD
# decoder beside it), explained at 224 with maps and JSON only.
step jpeg-set 60 python3 tools/make_bench_images.py /tmp/jpegs 1024 --size 500x375 --format jpg
for d in libjpeg image; do
  step explain-jpegs-$d 60 bash -c "GRADCAM_JPEG_DECODER=$d $kit/gradcam explain /tmp/jpegs \
    --device cuda --precision tf32 -m /tmp/resnet50.safetensors --outputs cam,json -o /tmp/jpeg-out-$d 2>&1 | tail -2"
done
# Tile sizes forced, per layer in the profile (TILES=1; what the 64/128 rule was fitted on).
if [ "${TILES:-0}" = 1 ]; then
  for p in tf32 bf16; do for t in 64 128; do
    bench resnet50 $p $t GRADCAM_CONV_TUNE=0; bench vgg16 $p $t GRADCAM_CONV_TUNE=0
  done; done
  # The same with KRSC weights (their kernels use fewer registers: the rule may move).
  for p in tf32 bf16; do for t in 64 128; do
    bench resnet50 $p $t GRADCAM_CONV_KRSC=1; bench vgg16 $p $t GRADCAM_CONV_KRSC=1
  done; done
fi
grep -H "images/s\|peak device" "$work"/bench-*.txt | sed 's|.*/bench-||; s|\.txt:| |' | tee -a "$sum"
grep -h "tool=" "$work"/peers-*.txt 2>/dev/null | tee -a "$sum"
grep -H "explained" "$work"/explain-jpegs-*.txt 2>/dev/null | sed 's|.*/||' | tee -a "$sum"
tar czf "$out/logs.tgz" -C "$work" .
