#!/usr/bin/env bash
# Prepares gpu-kit/ (ignored by git) for scripts/gpu-check.sh on a machine with a GPU but no
# Rust toolchain: the release binary and the tests/cuda.rs test binary (stripped, x86-64) and
# the wheels of pytorch-grad-cam 1.5.7 and ttach for the side-by-side benchmark.
#   scripts/make-gpu-kit.sh        then: device run `bash scripts/gpu-check.sh`, carry gpu-kit
set -euo pipefail
cd "$(dirname "$0")/.."
kit=gpu-kit
mkdir -p "$kit/whl"
cargo build --release
test_bin=$(cargo test --release --test cuda --no-run 2>&1 | grep -o 'target/release/deps/cuda-[0-9a-f]*' | tail -1)
[ -x "$test_bin" ] || { echo "no tests/cuda.rs binary" >&2; exit 1; }
strip -o "$kit/gradcam" target/release/gradcam
strip -o "$kit/cuda-tests" "$test_bin"
[ -f "$kit/whl/ttach-0.0.3-py3-none-any.whl" ] ||
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$kit/whl" ttach==0.0.3
ls "$kit"/whl/grad_cam-1.5.7-*.whl >/dev/null 2>&1 ||
  python3 -m pip wheel -q --no-deps -w "$kit/whl" grad-cam==1.5.7
git rev-parse HEAD >"$kit/commit"
du -sh "$kit"
