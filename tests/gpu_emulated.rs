//! The GPU host code (src/backend/gpu) driving the real kernels through the CPU emulator, end
//! to end: the pytorch-grad-cam parity fixtures and the CAM family against the CPU backend.
//! Tolerances as tests/parity.rs (logits 1e-4 relative, maps 1e-3).

mod common;

use common::{fixtures, rel_err};
use gradcam::backend::gpu::{ConvTile, EmuLauncher, GpuBackend, Launcher, Precision};
use gradcam::backend::{Backend, CpuBackend};
use gradcam::cam::{explain, CamRequest, ClassSel, Colormap, Method, OverlayStyle, Target};
use gradcam::explain::{explain_batch, ExplainConfig, Timings};
use gradcam::image::{load_rgb8, preprocess, InputSize, RgbImage};
use gradcam::model::synth::Rng;
use gradcam::model::{self, Network};
use gradcam::Tensor;

#[test]
fn parity_fixtures_through_the_emulated_kernels() {
    // Device-side preprocessing and overlay included (explain_batch on the GPU backend).
    let (n, _) = common::parity_end_to_end(
        |g| Network::new(g, GpuBackend::new(EmuLauncher::new())).unwrap(),
        common::F32_TOL,
        |_| true,
    );
    assert!(n >= 20, "fixture manifest lost cases");
}

/// The tensor-core paths end to end against pytorch-grad-cam's f32 results. Tolerances (TF32
/// keeps 10 of f32's 23 mantissa bits, BF16 7): TF32 logits 1e-2 relative, cam 2e-2 (observed
/// 4.9e-3); BF16 (tensors stored in bf16 too) logits 5e-2, cam 2e-1 (observed 1.1e-1, on the
/// nearly flat maps of the tiny random-weight fixtures, where min-max normalisation magnifies
/// small differences); F16 (tensors stored in f16, 10 mantissa bits) logits 1e-2, cam 3e-2
/// (observed 3.1e-3).
#[test]
fn parity_fixtures_through_the_emulated_tensor_core_paths() {
    for (precision, tol) in common::TENSOR_CORE_TOL {
        let (n, worst) = common::parity_end_to_end(
            |g| Network::new(g, GpuBackend::with_precision(EmuLauncher::new(), precision)).unwrap(),
            tol,
            |_| true,
        );
        eprintln!("{precision:?}: {n} cases, largest cam error {worst:.2e}");
        assert!(n >= 20);
    }
}

/// The selftest of one configuration of the convolution kernels through the emulator: the
/// whole of it (every op, the fragment and batch checks) when `whole`, else the convolutions
/// only (the other ops do not depend on the convolution kernels chosen), each check passing.
fn selftest_passes(be: &GpuBackend<EmuLauncher>, whole: bool, what: &str) -> String {
    use gradcam::backend::selftest;
    let mut checks = selftest::conv_checks(be).unwrap();
    if whole {
        checks.extend(selftest::op_checks(be).unwrap());
        checks.extend(selftest::device_checks(be).unwrap());
    }
    let table = selftest::table(&checks);
    assert!(checks.iter().all(|c| c.passed()), "{what}\n{table}");
    table
}

/// The NCHW tensor-core convolutions at every tile size, with and without the cp.async ring
/// (TF32: every forward conv; 16-bit: the 1x1s) and KRSC weights; the first configuration of
/// each precision runs the whole selftest. (Three tests, so the harness can run them side by
/// side: together they are the longest of the emulated tests.)
fn nchw_selftests(precision: Precision) {
    let mut whole = true;
    for tile in [ConvTile::T64, ConvTile::T128] {
        for (ring, krsc) in [(false, false), (false, true), (true, false)] {
            // F16's 128x128 ring is BF16's kernel template with the other conversion.
            if precision == Precision::F16 && tile == ConvTile::T128 && ring {
                continue;
            }
            let be = GpuBackend::with_precision(EmuLauncher::new(), precision)
                .with_conv_tile(tile)
                .with_conv_async(ring)
                .with_conv_krsc(krsc);
            let what = format!("{precision:?} {tile:?} cp.async {ring} KRSC {krsc}");
            selftest_passes(&be, whole, &what);
            whole = false;
        }
    }
}

#[test]
fn tf32_selftests_pass_through_the_emulator() {
    nchw_selftests(Precision::Tf32);
}

#[test]
fn sixteen_bit_selftests_pass_through_the_emulator() {
    nchw_selftests(Precision::Bf16);
    nchw_selftests(Precision::F16);
}

/// Channels-last convolutions (GRADCAM_CONV_NHWC=1), then the wgmma ones.
#[test]
fn channels_last_and_wgmma_selftests_pass_through_the_emulator() {
    // The selftest's convolutions mix them with NCHW ones (the stem's 3 channels, 16-channel
    // layers), so every transposition runs. F16's 128x128 tiles on 4 warps (block 128);
    // BF16's 1x1 convs in 64-channel slices.
    for (i, (precision, tile, warps, slice)) in [
        (Precision::Tf32, ConvTile::T64, 8, 32),
        (Precision::Bf16, ConvTile::T64, 8, 64),
        (Precision::Bf16, ConvTile::T128, 8, 32),
        (Precision::F16, ConvTile::T128, 4, 32),
    ]
    .into_iter()
    .enumerate()
    {
        let be = GpuBackend::with_precision(EmuLauncher::new(), precision)
            .with_conv_tile(tile)
            .with_conv_nhwc(true)
            .with_conv_warps(warps)
            .with_conv_slice(slice);
        let what =
            format!("{precision:?} {tile:?} {warps} warps {slice}-channel slices channels-last");
        selftest_passes(&be, i == 0, &what);
    }
    // The wgmma convolutions (GRADCAM_CONV_WGMMA=1) where the input is whole 128-byte slices
    // (the others stay on the kernels above); the device checks hold the wgmma instruction
    // against its twin. F16 differs from BF16 only in the instruction's type:
    // wgmma_convolutions_match_the_f32_oracle.
    for (precision, tile) in [
        (Precision::Tf32, ConvTile::T128),
        (Precision::Bf16, ConvTile::T64),
    ] {
        let be = GpuBackend::with_precision(EmuLauncher::new(), precision)
            .with_conv_tile(tile)
            .with_conv_wgmma(true);
        let table = selftest_passes(&be, true, &format!("{precision:?} {tile:?} wgmma"));
        assert!(table.contains("wgmma bf16 m64n128k16"), "{table}");
    }
}

/// Every kernel conv tuning may pick computes the same values bit for bit (see
/// common::conv_choices_agree and common::wgmma_tiles_agree), at each tensor-core precision.
#[test]
fn conv_tuning_choices_agree_bit_for_bit() {
    for precision in [Precision::Tf32, Precision::Bf16, Precision::F16] {
        assert!(common::wgmma_tiles_agree(precision, EmuLauncher::new));
        let plans = common::conv_choices_agree(precision, EmuLauncher::new);
        assert!(
            plans
                .iter()
                .all(|(key, how)| key.starts_with("conv2d_fwd_") && how.starts_with("conv2d_fwd_")),
            "{plans:?}"
        );
    }
}

/// Channels-last tensors flow through a chain of ops as the NCHW ones do, bit for bit at 16
/// bits (TF32: within the rounding of the stored activations to TF32, 2^-11 relative, i.e.
/// 2e-3 of 1 + max |value| over the chain): convs
/// (3x3 padded, 1x1 with a residual stored NCHW, a 16-channel conv that stays NCHW and so reads
/// its channels-last input transposed), VGG's and ResNet's max pools on channels-last tensors,
/// ReLU in place, `add` across layouts, and downloads of every intermediate.
#[test]
fn channels_last_chains_match_nchw_bit_for_bit() {
    use gradcam::backend::{Conv2dParams, Pool2dParams};
    let mut rng = Rng::new(11);
    let x = rng.tensor(&[2, 3, 10, 10], -1.0, 1.0);
    let w0 = rng.tensor(&[32, 3, 3, 3], -0.4, 0.4);
    let w1 = rng.tensor(&[64, 32, 3, 3], -0.2, 0.2);
    let b1 = rng.tensor(&[64], -0.1, 0.1);
    let w2 = rng.tensor(&[40, 64, 1, 1], -0.2, 0.2);
    let w3 = rng.tensor(&[16, 40, 3, 3], -0.2, 0.2);
    let res = rng.tensor(&[2, 40, 5, 5], -1.0, 1.0);
    for precision in [Precision::Tf32, Precision::Bf16, Precision::F16] {
        let run = |nhwc: bool| -> Vec<Vec<u32>> {
            let be = GpuBackend::with_precision(EmuLauncher::new(), precision)
                .with_conv_tune(false)
                .with_conv_nhwc(nhwc);
            let up = |t: &Tensor| be.upload(t.clone()).unwrap();
            let bits = |t: &<GpuBackend<EmuLauncher> as Backend>::Tensor| -> Vec<u32> {
                let t = be.download(t).unwrap();
                t.data().iter().map(|v| v.to_bits()).collect()
            };
            let (wd0, wd1, wd2, wd3) = (up(&w0), up(&w1), up(&w2), up(&w3));
            let (p1, p0) = (Conv2dParams::new(1, 1), Conv2dParams::new(1, 0));
            let prep1 = be.conv2d_prepare(&wd1, &p1).unwrap();
            let prep2 = be.conv2d_prepare(&wd2, &p0).unwrap();
            let prep3 = be.conv2d_prepare(&wd3, &p1).unwrap();
            let mut out = Vec::new();
            // A first conv (3 channels, NCHW in) writes channels-last for the convs after it.
            let y0 = be.conv2d_fwd(&up(&x), &wd0, None, None, &p1, true).unwrap();
            out.push(bits(&y0));
            let y1 = be
                .conv2d_fwd(&y0, &wd1, prep1.as_ref(), Some(&up(&b1)), &p1, true)
                .unwrap();
            out.push(bits(&y1));
            let pool = Pool2dParams::new(2, 2, 0);
            let y2 = be.max_pool2d_fwd(&y1, &pool).unwrap();
            out.push(bits(&y2));
            let y2b = be.max_pool2d_fwd(&y1, &Pool2dParams::new(3, 2, 1)).unwrap();
            out.push(bits(&y2b));
            let y3 = be
                .conv2d_fwd_add_relu(&y2, &wd2, prep2.as_ref(), None, &p0, &up(&res))
                .unwrap();
            out.push(bits(&y3));

            let y4 = be
                .conv2d_fwd(&y3, &wd3, prep3.as_ref(), None, &p1, false)
                .unwrap();
            // Which ran channels-last: the 32- and 64-channel inputs, not the 40-channel one.
            let layouts = [&y0, &y1, &y2, &y2b, &y3, &y4].map(|t| t.is_channels_last());
            assert_eq!(layouts, [nhwc, nhwc, nhwc, nhwc, nhwc, false]);
            out.push(bits(&y4));
            let y5 = be
                .add(be.relu_fwd(be.duplicate(&y3).unwrap()).unwrap(), &up(&res))
                .unwrap();
            out.push(bits(&y5));
            let y6 = be.add(up(&res), &y3).unwrap();
            out.push(bits(&y6));
            out
        };
        let (nchw, nhwc) = (run(false), run(true));
        for (i, (a, b)) in nchw.iter().zip(&nhwc).enumerate() {
            if precision == Precision::Tf32 {
                let f = |v: &[u32]| {
                    Tensor::new(
                        vec![v.len()],
                        v.iter().map(|&u| f32::from_bits(u)).collect(),
                    )
                };
                let err = rel_err(&f(b), &f(a));
                assert!(err < 2e-3, "TF32: step {i} channels-last off by {err}");
            } else {
                assert!(a == b, "{precision:?}: step {i} differs channels-last");
            }
        }
    }
}

/// A channels-last TF32 conv reads its input by cp.async, which does not round: an input that
/// is channels-last already but not TF32-exact (a sum from `add`, not a conv's rounded output)
/// is rounded before it, so the products are the NCHW kernels' (which round on the fly), and
/// the output is theirs rounded to TF32, bit for bit (truncating instead changes the bits).
#[test]
fn tf32_channels_last_conv_rounds_an_unrounded_input() {
    use gradcam::backend::Conv2dParams;
    // cvt.rna.tf32.f32: to 10 mantissa bits, nearest, ties away from zero (finite values).
    let tf32 = |v: f32| f32::from_bits((v.to_bits() + 0x1000) & 0xffff_e000);
    let mut rng = Rng::new(23);
    let x = rng.tensor(&[2, 32, 6, 6], -1.0, 1.0);
    let w1 = rng.tensor(&[32, 32, 3, 3], -0.2, 0.2);
    let w2 = rng.tensor(&[24, 32, 3, 3], -0.2, 0.2);
    let b2 = rng.tensor(&[24], -0.1, 0.1);
    let p = Conv2dParams::new(1, 1);
    let be = |nhwc| {
        GpuBackend::with_precision(EmuLauncher::new(), Precision::Tf32)
            .with_conv_tune(false)
            .with_conv_tile(ConvTile::T64)
            .with_conv_nhwc(nhwc)
    };
    let last = be(true);
    let up = |t: &Tensor| last.upload(t.clone()).unwrap();
    let (wd1, wd2) = (up(&w1), up(&w2));
    let prep1 = last.conv2d_prepare(&wd1, &p).unwrap();
    let prep2 = last.conv2d_prepare(&wd2, &p).unwrap();
    let y1 = last
        .conv2d_fwd(&up(&x), &wd1, prep1.as_ref(), None, &p, false)
        .unwrap();
    // y1 + x: channels-last (y1's layout) and not TF32-exact.
    let sum = last.add(y1, &up(&x)).unwrap();
    assert!(sum.is_channels_last());
    let sum_host = last.download(&sum).unwrap();
    assert!(sum_host.data().iter().any(|&v| tf32(v) != v));
    let y2 = last
        .conv2d_fwd(&sum, &wd2, prep2.as_ref(), Some(&up(&b2)), &p, true)
        .unwrap();
    assert!(y2.is_channels_last());
    let got = last.download(&y2).unwrap();

    let nchw = be(false);
    let up = |t: &Tensor| nchw.upload(t.clone()).unwrap();
    let wd2 = up(&w2);
    let prep2 = nchw.conv2d_prepare(&wd2, &p).unwrap();
    let want = nchw
        .conv2d_fwd(
            &up(&sum_host),
            &wd2,
            prep2.as_ref(),
            Some(&up(&b2)),
            &p,
            true,
        )
        .unwrap();
    let want = nchw.download(&want).unwrap();
    let differing = got
        .data()
        .iter()
        .zip(want.data())
        .filter(|(g, w)| g.to_bits() != tf32(**w).to_bits())
        .count();
    assert_eq!(differing, 0, "of {} outputs", got.data().len());
}

/// Every element of `got` within `ulp` of `want`'s (relative: one unit in the last place of
/// the stored type) plus 1e-5 of `want`'s largest magnitude (the summation order).
fn assert_within_ulp(got: &Tensor, want: &Tensor, ulp: f32, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}");
    let big = want.data().iter().fold(0f32, |m, v| m.max(v.abs()));
    for (g, e) in got.data().iter().zip(want.data()) {
        let tol = ulp * e.abs() + 1e-5 * big;
        assert!((g - e).abs() <= tol, "{what}: {g} vs {e}");
    }
}

/// 16-bit linear layers run on the tensor cores (kernels/linear.cu): on inputs exact in the
/// storage type every product is exact in f32, so each output is the f32 oracle's rounded to
/// that type, up to the summation order: within one unit in the last place of the 16-bit
/// result (bf16 2^-7, f16 2^-10 relative) plus 1e-5 of the largest output for the order.
/// Shapes with partial tiles, a depth cut into chunks (split K), and a batch past one tile.
#[test]
fn sixteen_bit_linear_layers_match_the_f32_oracle() {
    use gradcam::backend::cpu::naive;
    let mut rng = Rng::new(29);
    for (precision, ulp) in [
        (Precision::Bf16, 2f32.powi(-7)),
        (Precision::F16, 2f32.powi(-10)),
    ] {
        let dtype = precision.storage();
        let exact = |t: Tensor| Tensor::new(t.shape(), dtype.decode(&dtype.encode(t.data())));
        let be = GpuBackend::with_precision(EmuLauncher::new(), precision);
        let up = |t: &Tensor| be.upload(t.clone()).unwrap();
        for (n, fin, fout) in [(3, 70, 19), (5, 1100, 130), (67, 40, 66)] {
            let x = exact(rng.tensor(&[n, fin], -1.0, 1.0));
            let w = exact(rng.tensor(&[fout, fin], -1.0, 1.0));
            let b = exact(rng.tensor(&[fout], -1.0, 1.0));
            let dy = exact(rng.tensor(&[n, fout], -1.0, 1.0));
            let y = be.linear_fwd(&up(&x), &up(&w), Some(&up(&b))).unwrap();
            let dx = be.linear_bwd_data(&up(&dy), &up(&w)).unwrap();
            for (name, got, want) in [
                ("linear_fwd", y, naive::linear_fwd(&x, &w, Some(&b))),
                ("linear_bwd_data", dx, naive::linear_bwd_data(&dy, &w)),
            ] {
                let got = be.download(&got).unwrap();
                let what = format!("{precision:?} {name} {n}x{fin}->{fout}");
                assert_within_ulp(&got, &want, ulp, &what);
            }
        }
    }
}

/// The wgmma convolutions (kernels/conv_wgmma.cu, through the instruction's twin) against the
/// f32 oracle, on inputs exact in the storage type (TF32-rounded for TF32), so every product is
/// exact and only the summation order and the output's rounding differ: within one unit in the
/// last place of the stored result (TF32 2^-10, BF16 2^-7, F16 2^-10 relative) plus 1e-5 of the
/// largest output. Shapes: partial tiles both ways, several channel blocks (two 64-channel
/// slices), a 1x1 with a residual and ReLU, strides, paddings and dilations per axis; every
/// tile (64, 128 and 256 output channels; 128 with 4 and 6 stages). The profile shows the
/// wgmma kernels ran; at 16 bits a 96-channel input (not whole 64-channel slices) stays on the
/// mma.sync kernels.
#[test]
fn wgmma_convolutions_match_the_f32_oracle() {
    use gradcam::backend::cpu::naive;
    use gradcam::backend::Conv2dParams;
    let mut rng = Rng::new(31);
    let dilated = Conv2dParams {
        stride: (2, 1),
        padding: (1, 2),
        dilation: (2, 1),
        groups: 1,
    };
    let shapes = [
        (
            [2, 64, 9, 11],
            [72, 64, 3, 3],
            Conv2dParams::new(1, 1),
            false,
        ),
        (
            [3, 128, 8, 6],
            [136, 128, 1, 1],
            Conv2dParams::new(1, 0),
            true,
        ),
        ([2, 64, 11, 10], [40, 64, 3, 3], dilated, false),
        (
            [1, 96, 6, 6],
            [16, 96, 3, 3],
            Conv2dParams::new(1, 1),
            false,
        ),
    ];
    for (precision, ulp) in [
        (Precision::Tf32, 2f32.powi(-10)),
        (Precision::Bf16, 2f32.powi(-7)),
        (Precision::F16, 2f32.powi(-10)),
    ] {
        let dtype = precision.storage();
        let exact = |t: Tensor| {
            let v = if precision == Precision::Tf32 {
                t.data()
                    .iter()
                    .map(|v| f32::from_bits((v.to_bits() + 0x1000) & 0xffff_e000))
                    .collect()
            } else {
                dtype.decode(&dtype.encode(t.data()))
            };
            Tensor::new(t.shape(), v)
        };
        let t = if precision == Precision::Tf32 {
            "tf32"
        } else {
            dtype.name()
        };
        for (m, stages) in [(64, 4), (128, 4), (128, 6), (256, 4)] {
            let be = GpuBackend::with_precision(EmuLauncher::new(), precision)
                .with_wgmma_tile(m, stages)
                .with_conv_wgmma(true);
            be.set_kernel_profiling(true);
            let up = |t: &Tensor| be.upload(t.clone()).unwrap();
            for (xs, ws, p, residual) in &shapes {
                let x = exact(rng.tensor(xs, -1.0, 1.0));
                let w = exact(rng.tensor(ws, -0.5, 0.5));
                let b = exact(rng.tensor(&[ws[0]], -0.5, 0.5));
                let (xd, wd) = (up(&x), up(&w));
                let prep = be.conv2d_prepare(&wd, p).unwrap();
                let plain = naive::conv2d_fwd(&x, &w, Some(&b), p);
                let (got, want) = if *residual {
                    let res = exact(rng.tensor(plain.shape(), -1.0, 1.0));
                    let y = be
                        .conv2d_fwd_add_relu(&xd, &wd, prep.as_ref(), Some(&up(&b)), p, &up(&res))
                        .unwrap();
                    (y, naive::relu_fwd(&naive::add(&plain, &res)))
                } else {
                    let y = be
                        .conv2d_fwd(&xd, &wd, prep.as_ref(), Some(&up(&b)), p, false)
                        .unwrap();
                    (y, plain)
                };
                let got = be.download(&got).unwrap();
                let what = format!("{precision:?} m{m} {stages} stages {xs:?} * {ws:?}");
                assert_within_ulp(&got, &want, ulp, &what);
            }
            let ran: Vec<String> = be.kernel_times().into_iter().map(|(k, _, _)| k).collect();
            let s = if stages == 4 {
                String::new()
            } else {
                format!("_s{stages}")
            };
            let wanted = format!("conv2d_fwd_wgmma_{t}_m{m}{s} ");
            let wgmma = ran.iter().filter(|k| k.starts_with(&wanted)).count();
            // 96 channels are not whole 128-byte slices at 16 bits (TF32: they are).
            let expect = if precision == Precision::Tf32 { 4 } else { 3 };
            assert_eq!(wgmma, expect, "{precision:?} m{m}{s}: {ran:?}");
        }
    }
}

/// A plan serves a kind of layer, not one exact shape: images of other sizes (within a factor
/// of 2 of output pixels) reuse it instead of timing the candidates again, with the kernel
/// that fits their shape.
#[test]
fn conv_plans_serve_similar_shapes() {
    let tuned =
        GpuBackend::with_precision(EmuLauncher::new(), Precision::Bf16).with_conv_tune(true);
    let cpu = CpuBackend::reference();
    let mut rng = Rng::new(7);
    let w = rng.tensor(&[72, 32, 3, 3], -0.5, 0.5);
    let wd = tuned.upload(w.clone()).unwrap();
    let p = gradcam::backend::Conv2dParams::new(1, 1);
    let prep = tuned.conv2d_prepare(&wd, &p).unwrap();
    assert!(prep.is_some(), "tuning makes the KRSC weights");
    // 2·8·8 = 128 and 2·8·12 = 192 output pixels: one octave (2^8), rows of 8 and 12 both go
    // by vectors: one plan. 2·7·9 = 126 (2^7, rows of 9 not by vectors) and 2·16·16 = 512
    // (2^10): a plan each. Tolerance: BF16 outputs, 288-deep sums (the selftest's 1e-2).
    for (hw, plans) in [((8, 8), 1), ((8, 12), 1), ((7, 9), 2), ((16, 16), 3)] {
        let x = rng.tensor(&[2, 32, hw.0, hw.1], -1.0, 1.0);
        let xd = tuned.upload(x.clone()).unwrap();
        let y = tuned
            .conv2d_fwd(&xd, &wd, prep.as_ref(), None, &p, false)
            .unwrap();
        let want = cpu.conv2d_fwd(&x, &w, None, None, &p, false).unwrap();
        let err = rel_err(&tuned.download(&y).unwrap(), &want);
        assert!(err < 1e-2, "{hw:?}: {err}");
        assert_eq!(
            tuned.conv_plans().len(),
            plans,
            "{hw:?}: {:?}",
            tuned.conv_plans()
        );
    }
}

/// Tuning compares each candidate's output with the first choice's, bit for bit, and passes
/// over one that differs however fast it is: here the TF32 cp.async ring, which reads its
/// input truncated to TF32 rather than rounded (so it is never a candidate of its own), given
/// as an extra candidate to stand for a kernel broken on a GPU. The tuned output is then the
/// untuned kernel's, bit for bit.
#[test]
fn tuning_passes_over_a_candidate_that_differs() {
    let mut rng = Rng::new(17);
    let p = gradcam::backend::Conv2dParams::new(1, 1);
    let x = rng.tensor(&[2, 32, 8, 8], -1.0, 1.0);
    let w = rng.tensor(&[64, 32, 3, 3], -0.5, 0.5);
    let run = |be: &GpuBackend<EmuLauncher>| -> Vec<u32> {
        let wd = be.upload(w.clone()).unwrap();
        let prep = be.conv2d_prepare(&wd, &p).unwrap();
        let xd = be.upload(x.clone()).unwrap();
        let y = be
            .conv2d_fwd(&xd, &wd, prep.as_ref(), None, &p, false)
            .unwrap();
        be.download(&y)
            .unwrap()
            .data()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    let backend = || GpuBackend::with_precision(EmuLauncher::new(), Precision::Tf32);
    let want = run(&backend().with_conv_tune(false));
    // The premise: the ring's bits are not the others'.
    let ring = run(&backend().with_conv_krsc(true).with_conv_async(true));
    assert!(
        ring != want,
        "the TF32 ring gave the rounding kernels' bits"
    );
    // 3 stages of A (64 rows of 32 + 4 words) and B (32 rows of 64 + 8), as conv_choices.
    let shared = 3 * (64 * 36 + 32 * (64 + 8)) * 4;
    let tuned = backend().with_conv_tune(true).with_extra_conv_candidate(
        "conv2d_fwd_tf32_async",
        64,
        true,
        shared,
    );
    assert!(
        run(&tuned) == want,
        "the tuned output is not the first choice's"
    );
    let rejected = tuned.conv_rejected();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].0, "conv2d_fwd_tf32_async");
    assert!(
        rejected[0].1.contains("differ from conv2d_fwd_tf32"),
        "{rejected:?}"
    );
    let plans = tuned.conv_plans();
    assert!(
        plans.len() == 1 && !plans[0].1.contains("async"),
        "{plans:?}"
    );
}

/// Images of several sizes in one batch (runs of equal sizes share an overlay launch).
#[test]
fn device_preprocess_and_overlays_match_the_cpu() {
    let gpu = GpuBackend::new(EmuLauncher::new());
    let cpu = CpuBackend::fast();
    let sizes = [(37u32, 53u32), (37, 53), (64, 48), (19, 200), (64, 48)];
    let imgs: Vec<RgbImage> = sizes
        .iter()
        .enumerate()
        .map(|(i, &(h, w))| {
            RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 7 + i as u32) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8])
            })
        })
        .collect();
    let refs: Vec<&RgbImage> = imgs.iter().collect();
    // ImageNet's normalisation, and a model's own (metadata `mean`/`std`, --mean/--std).
    let own = gradcam::image::Normalization::new([0.5; 3], [0.5, 0.25, 0.125]).unwrap();
    for (hw, norm) in [((32, 32), Default::default()), ((41, 29), own)] {
        let ours = gpu
            .download(
                &gpu.preprocess(&gpu.upload_images(&refs).unwrap(), hw, &norm)
                    .unwrap(),
            )
            .unwrap();
        let want = cpu
            .preprocess(&cpu.upload_images(&refs).unwrap(), hw, &norm)
            .unwrap();
        // Same float operations; only the order of the bilinear sums may differ.
        assert!(ours.max_abs_diff(&want) < 1e-5, "preprocess {hw:?}");
    }
    let mut rng = Rng::new(5);
    let maps = Tensor::new(
        [imgs.len(), 5, 6],
        (0..imgs.len() * 30)
            .map(|_| rng.uniform(0.0, 2.0))
            .collect::<Vec<f32>>(),
    );
    // pytorch-grad-cam's default style, and another colormap and image weight.
    let viridis = Colormap::by_name("viridis").unwrap();
    for style in [
        OverlayStyle::default(),
        OverlayStyle::new(viridis, 0.3).unwrap(),
    ] {
        overlays_agree(&gpu, &cpu, &refs, &maps, &style);
    }
    // A black image under a colormap that starts at black, image weight 0, a flat map: every
    // blended value is 0, and the overlay black, not 0/0.
    let black = RgbImage::new(9, 4);
    let flat = Tensor::new([1, 2, 2], vec![1.0f32; 4]);
    let bone = OverlayStyle::new(Colormap::by_name("bone").unwrap(), 0.0).unwrap();
    for (name, got) in [
        (
            "gpu",
            gpu.overlays(&gpu.upload_images(&[&black]).unwrap(), &flat, &bone),
        ),
        (
            "cpu",
            cpu.overlays(&cpu.upload_images(&[&black]).unwrap(), &flat, &bone),
        ),
    ] {
        let got = got.and_then(|o| o.wait()).unwrap();
        assert!(got[0].as_raw().iter().all(|&b| b == 0), "{name}");
    }
    // An image weight outside [0, 1] is refused by both, as show_cam_on_image does.
    let bad = OverlayStyle {
        image_weight: 1.5,
        ..Default::default()
    };
    let e = gpu.overlays(&gpu.upload_images(&refs).unwrap(), &maps, &bad);
    assert!(e.err().unwrap().to_string().contains("[0, 1]"));
    let e = cpu.overlays(&cpu.upload_images(&refs).unwrap(), &maps, &bad);
    assert!(e.err().unwrap().to_string().contains("[0, 1]"));
}

fn overlays_agree(
    gpu: &GpuBackend<EmuLauncher>,
    cpu: &CpuBackend,
    refs: &[&RgbImage],
    maps: &Tensor,
    style: &OverlayStyle,
) {
    let ours = gpu
        .overlays(&gpu.upload_images(refs).unwrap(), maps, style)
        .and_then(|o| o.wait())
        .unwrap();
    let want = cpu
        .overlays(&cpu.upload_images(refs).unwrap(), maps, style)
        .and_then(|o| o.wait())
        .unwrap();
    for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
        assert_eq!(a.dimensions(), b.dimensions(), "overlay {i} size");
        // Same operations in the same order: equal bytes but for a pixel on a truncation
        // boundary (a neighbouring JET entry, see tests/parity.rs).
        let differing = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .filter(|(x, y)| x != y)
            .count();
        let worst = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap();
        assert!(
            worst <= 4 && differing * 100 <= a.as_raw().len(),
            "overlay {i}: worst {worst}, {differing} differ"
        );
    }
}

/// A device too small for the batch: it is split and the results do not change; a device
/// too small for one image gives an out-of-memory error, not a panic.
#[test]
fn batches_too_big_for_the_device_are_split() {
    let g = || model::load(fixtures().join("resnet_tiny.safetensors"), None).unwrap();
    let img = load_rgb8(&fixtures().join("images/a.png")).unwrap();
    let imgs = vec![&img; 6];
    let cfg = ExplainConfig {
        size: InputSize::Square(64),
        ..Default::default()
    };
    let free = Network::new(g(), GpuBackend::new(EmuLauncher::new())).unwrap();
    let weights = free.backend().launcher().memory().in_use();
    free.backend().reset_device_memory_peak();
    let want = explain_batch(&free, &imgs[..1], &cfg, &mut Timings::default()).unwrap();
    let one_image = free.backend().device_memory_peak().unwrap() - weights;
    assert_eq!(free.batch_cap(), usize::MAX);

    // Room for the weights and about two images' working set.
    let tight = Network::new(
        g(),
        GpuBackend::new(EmuLauncher::with_memory_limit(weights + one_image * 5 / 2)),
    )
    .unwrap();
    let got = explain_batch(&tight, &imgs, &cfg, &mut Timings::default()).unwrap();
    assert_eq!(got.len(), 6);
    assert!(
        (1..6).contains(&tight.batch_cap()),
        "cap {}",
        tight.batch_cap()
    );
    for e in &got {
        assert_eq!(e.class, want[0].class);
        let err = e
            .cam
            .iter()
            .zip(&want[0].cam)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-5, "split batch changed the map by {err}");
        assert_eq!(e.overlay, want[0].overlay);
    }
    // One class per image: each piece of the split batch gets its own images' classes.
    let classes = ExplainConfig {
        classes: ClassSel::PerImage(vec![0, 1, 2, 3, 4, 5]),
        ..cfg.clone()
    };
    let got = explain_batch(&tight, &imgs, &classes, &mut Timings::default()).unwrap();
    assert_eq!(got.len(), 6);
    for (c, e) in got.iter().enumerate() {
        let alone = ExplainConfig {
            classes: ClassSel::All(c),
            ..cfg.clone()
        };
        let want = explain_batch(&free, &imgs[..1], &alone, &mut Timings::default()).unwrap();
        assert_eq!(e.class, c);
        let err = (e.cam.iter().zip(&want[0].cam))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            err < 1e-5,
            "class {c}: the split batch changed the map by {err}"
        );
    }

    let tiny = Network::new(
        g(),
        GpuBackend::new(EmuLauncher::with_memory_limit(weights + 1024)),
    )
    .unwrap();
    match explain_batch(&tiny, &imgs[..2], &cfg, &mut Timings::default()) {
        Err(gradcam::Error::OutOfMemory(_)) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("fitted in 1 KiB"),
    }
}

/// `aug_smooth` on a device with room for about two images: the six copies of one image do
/// not fit as one batch, so they run one copy at a time, with the same result.
#[test]
fn aug_smooth_runs_copy_by_copy_when_six_do_not_fit() {
    let g = || model::load(fixtures().join("resnet_tiny.safetensors"), None).unwrap();
    let img = load_rgb8(&fixtures().join("images/a.png")).unwrap();
    let cfg = ExplainConfig {
        size: InputSize::Square(64),
        ..Default::default()
    };
    let free = Network::new(g(), GpuBackend::new(EmuLauncher::new())).unwrap();
    let weights = free.backend().launcher().memory().in_use();
    free.backend().reset_device_memory_peak();
    explain_batch(&free, &[&img], &cfg, &mut Timings::default()).unwrap();
    let one_image = free.backend().device_memory_peak().unwrap() - weights;
    let aug = ExplainConfig {
        aug_smooth: true,
        ..cfg
    };
    let want = explain_batch(&free, &[&img], &aug, &mut Timings::default()).unwrap();
    let tight = Network::new(
        g(),
        GpuBackend::new(EmuLauncher::with_memory_limit(weights + one_image * 5 / 2)),
    )
    .unwrap();
    let got = explain_batch(&tight, &[&img], &aug, &mut Timings::default()).unwrap();
    assert_eq!(got[0].class, want[0].class);
    assert_eq!(got[0].map_hw, (64, 64));
    let err = (got[0].cam.iter().zip(&want[0].cam))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-5, "copy by copy changed the map by {err}");
}

/// Batches queued before earlier ones are collected, collected on another thread (as the CLI
/// pipelines them): each batch's own results. The emulator reads a download when it is waited
/// for, so the overlays in flight still hold their device buffers.
#[test]
fn batches_in_flight_keep_their_own_results() {
    let g = || model::load(fixtures().join("resnet_tiny.safetensors"), None).unwrap();
    common::batches_in_flight_keep_their_own_results(
        || Network::new(g(), GpuBackend::new(EmuLauncher::new())).unwrap(),
        |queued, before| assert!(queued > before, "{queued} bytes in use, {before} before"),
    );
}

/// Every CAM method and guided backprop through the GPU code path against the CPU backend:
/// f32 at the parity tolerances (logits 1e-4, maps/weights/guided 1e-3 relative; observed
/// ≤ 3.4e-7); bf16 storage and tensor cores (casts, bf16 CAM ops, Score-CAM's uploaded weights):
/// logits 3e-2, maps and weights 5e-2 (observed 9.4e-3, 1.8e-2, 2.6e-3), the guided gradient
/// at the input 4e-1 (observed 0.20: a guided ReLU zeroes every negative gradient, so bf16
/// rounding near zero flips whole paths of the gradient through the network); f16 (10 mantissa
/// bits): logits 5e-3, maps and weights 3e-2, guided 1e-1 (observed 6.5e-4, 1.1e-2, 2.3e-3,
/// 2.5e-2). FullGrad's maps get the guided tolerances at 16 bits (observed 1.0e-1 bf16,
/// 1.6e-2 f16): it normalises every channel of every bias layer on its own.
#[test]
fn cam_family_and_guided_match_the_cpu_backend() {
    let cpu = Network::new(
        model::load(fixtures().join("resnet_tiny.safetensors"), None).unwrap(),
        CpuBackend::fast(),
    )
    .unwrap();
    let img = load_rgb8(&fixtures().join("images/a.png")).unwrap();
    let x = preprocess(&[&img, &img], (64, 64));
    let classes = ClassSel::PerImage(vec![1, 4]);
    for (precision, tol_logits, tol, tol_guided) in [
        (Precision::F32, 1e-4, 1e-3, 1e-3),
        (Precision::Bf16, 3e-2, 5e-2, 4e-1),
        (Precision::F16, 5e-3, 3e-2, 1e-1),
    ] {
        // FullGrad normalises every channel of every bias layer on its own, so a channel
        // whose gradient is nearly flat has its rounding noise stretched to [0, 1]. FEM counts
        // the positions above a threshold: 16-bit activations move some across it (its
        // kernel is checked exactly in tests/emu_kernels.rs).
        let tol_fullgrad = if precision == Precision::F32 {
            tol
        } else {
            tol_guided
        };
        let g = model::load(fixtures().join("resnet_tiny.safetensors"), None).unwrap();
        let gpu =
            Network::new(g, GpuBackend::with_precision(EmuLauncher::new(), precision)).unwrap();
        for method in Method::ALL {
            let req = CamRequest {
                method,
                guided: method == Method::GradCam,
                score_batch: 16,
                ..CamRequest::grad_cam("layer3", &classes)
            };
            let a = explain(&gpu, gpu.backend().upload(x.clone()).unwrap(), &req).unwrap();
            let b = explain(&cpu, x.clone(), &req).unwrap();
            let name = format!("{precision:?} {}", method.name());
            let e = |p: &Tensor, q: &Tensor| rel_err(p, q);
            assert!(
                e(&a.logits, &b.logits) < tol_logits,
                "{name}: logits {}",
                e(&a.logits, &b.logits)
            );
            let tol_maps = match method {
                Method::FullGrad | Method::Fem => tol_fullgrad,
                _ => tol,
            };
            let tol_weights = match method {
                Method::Fem => tol_fullgrad,
                _ => tol,
            };
            assert!(
                e(&a.maps, &b.maps) < tol_maps,
                "{name}: maps {}",
                e(&a.maps, &b.maps)
            );
            assert!(
                e(&a.weights, &b.weights) < tol_weights,
                "{name}: weights {}",
                e(&a.weights, &b.weights)
            );
            eprintln!(
                "{name}: logits {:.1e}, maps {:.1e}, weights {:.1e}",
                e(&a.logits, &b.logits),
                e(&a.maps, &b.maps),
                e(&a.weights, &b.weights)
            );
            if let (Some(ga), Some(gb)) = (&a.guided, &b.guided) {
                eprintln!("{name}: guided gradient {:.1e}", e(ga, gb));
                assert!(
                    e(ga, gb) < tol_guided,
                    "{name}: guided gradient {}",
                    e(ga, gb)
                );
            }
        }
    }
}

/// ShapleyCAM's forward-mode pass on the GPU path (convs and linear layers without bias,
/// ReLU masks, `max_pool2d_tangent` in VGG's pool) and the other targets' scores, against the
/// CPU backend: f32 within 1e-3 relative (maps and weights), BF16 within 5e-2 (as the
/// cam_family test). ResNet's layer3 runs the tangent through two residual blocks, two layers
/// at once take a pass each, layer4.0.conv2 starts before a folded BatchNorm inside a block.
#[test]
fn shapley_cam_and_targets_match_the_cpu_backend() {
    let img = load_rgb8(&fixtures().join("images/b.png")).unwrap();
    let x = preprocess(&[&img, &img], (64, 64));
    let classes = ClassSel::PerImage(vec![3, 6]);
    for (model_file, layer, method, target, precision, tol) in [
        (
            "vgg_bn_tiny",
            "features.27",
            Method::ShapleyCam,
            Target::Softmax,
            Precision::F32,
            1e-3,
        ),
        (
            "resnet_tiny",
            "layer3",
            Method::ShapleyCam,
            Target::Rest,
            Precision::F32,
            1e-3,
        ),
        (
            "resnet_tiny",
            "layer3,layer4",
            Method::ShapleyCam,
            Target::Rest,
            Precision::F32,
            1e-3,
        ),
        // Before a folded BatchNorm inside a block (the direction scale · A; a shortcut).
        (
            "resnet_tiny",
            "layer4.0.conv2",
            Method::ShapleyCam,
            Target::Rest,
            Precision::F32,
            1e-3,
        ),
        (
            "vgg_bn_tiny",
            "features.27",
            Method::ShapleyCam,
            Target::Rest,
            Precision::Bf16,
            5e-2,
        ),
        (
            "resnet_tiny",
            "layer4",
            Method::AblationCam,
            Target::Softmax,
            Precision::F32,
            1e-3,
        ),
        (
            "vgg_bn_tiny",
            "features.27",
            Method::GradCamPlusPlus,
            Target::Softmax,
            Precision::F32,
            1e-3,
        ),
    ] {
        let load =
            || model::load(fixtures().join(format!("{model_file}.safetensors")), None).unwrap();
        let cpu = Network::new(load(), CpuBackend::fast()).unwrap();
        let gpu = Network::new(
            load(),
            GpuBackend::with_precision(EmuLauncher::new(), precision),
        )
        .unwrap();
        let req = CamRequest {
            method,
            target,
            score_batch: 16,
            ..CamRequest::grad_cam(layer, &classes)
        };
        let a = explain(&gpu, gpu.backend().upload(x.clone()).unwrap(), &req).unwrap();
        let b = explain(&cpu, x.clone(), &req).unwrap();
        let name = format!(
            "{model_file} {layer} {} {target:?} {precision:?}",
            method.name()
        );
        let (em, ew) = (rel_err(&a.maps, &b.maps), rel_err(&a.weights, &b.weights));
        eprintln!("{name}: maps {em:.1e}, weights {ew:.1e}");
        assert!(em < tol && ew < tol, "{name}: maps {em}, weights {ew}");
        // What is tested matters here: the logit's weights differ, and ShapleyCAM's from
        // Grad-CAM's under the same score (its Hessian term).
        let logit = CamRequest {
            target: Target::Logit,
            ..req.clone()
        };
        let c = explain(&cpu, x.clone(), &logit).unwrap();
        assert!(
            rel_err(&c.weights, &b.weights) > 1e-2,
            "{name}: the target changed nothing"
        );
        if method == Method::ShapleyCam {
            let grad_cam = CamRequest {
                method: Method::GradCam,
                ..req.clone()
            };
            let d = explain(&cpu, x.clone(), &grad_cam).unwrap();
            let gap = rel_err(&d.weights, &b.weights);
            assert!(gap > 1e-3, "{name}: no Hessian term ({gap})");
        }
    }
}

/// SESS on the GPU path (the preprocessed batch downloaded, the windows cut on the host and
/// explained on the device, three scales to keep the emulator quick) against the CPU backend:
/// f32, two images, maps within 1e-3 relative; and the target reaching the windows' scores.
#[test]
fn sess_matches_the_cpu_backend() {
    let load = || model::load(fixtures().join("resnet_tiny.safetensors"), None).unwrap();
    let cpu = Network::new(load(), CpuBackend::fast()).unwrap();
    let gpu = Network::new(load(), GpuBackend::new(EmuLauncher::new())).unwrap();
    let img = load_rgb8(&fixtures().join("images/b.png")).unwrap();
    let x = preprocess(&[&img, &img], (48, 40));
    let classes = ClassSel::PerImage(vec![2, 7]);
    let sess = gradcam::cam::sess::Sess { num_scales: 3 };
    for target in [Target::Logit, Target::Softmax] {
        let req = CamRequest {
            sess: Some(sess),
            target,
            score_batch: 8,
            ..CamRequest::grad_cam("layer4", &classes)
        };
        let a = explain(&gpu, gpu.backend().upload(x.clone()).unwrap(), &req).unwrap();
        let b = explain(&cpu, x.clone(), &req).unwrap();
        assert_eq!(a.maps.shape(), &[2, 48, 40]);
        let e = rel_err(&a.maps, &b.maps);
        eprintln!("sess {target:?}: maps {e:.1e}");
        assert!(e < 1e-3, "sess {target:?}: maps {e}");
        assert_eq!(a.classes, [2, 7]);
    }
}

/// `aug_smooth` on the GPU path (the six copies made on the device by aug_copy, one batch)
/// against the CPU backend, f32: the mean maps within 1e-3 relative, the plain copy's logits
/// within 1e-4. Eigen-smoothed Grad-CAM (its component comes from downloaded activations), two
/// target layers at once (one backward pass), and Ablation-CAM inside a block (the run on
/// from the layer repeats the block's shortcut by aug_copy; weights within 1e-3) ride along,
/// the last with layer4 beside it (its weights from the backward pass: the head is affine).
#[test]
fn smoothing_and_several_layers_match_the_cpu_backend() {
    let load = || model::load(fixtures().join("resnet_tiny.safetensors"), None).unwrap();
    let cpu = Network::new(load(), CpuBackend::fast()).unwrap();
    let gpu = Network::new(load(), GpuBackend::new(EmuLauncher::new())).unwrap();
    let img = load_rgb8(&fixtures().join("images/c.png")).unwrap();
    let x = preprocess(&[&img, &img], (48, 40));
    let classes = ClassSel::PerImage(vec![2, 7]);
    for (aug, eigen, layer, method) in [
        (true, false, "layer3", Method::GradCam),
        (false, true, "layer3", Method::GradCam),
        (false, false, "layer2,layer3", Method::GradCam),
        (false, false, "layer3.1.conv2", Method::AblationCam),
        // Passes for the first, the affine head's closed form for layer4, in one request.
        (false, false, "layer3.1.conv2,layer4", Method::AblationCam),
    ] {
        let req = CamRequest {
            aug_smooth: aug,
            eigen_smooth: eigen,
            method,
            score_batch: 16,
            ..CamRequest::grad_cam(layer, &classes)
        };
        let a = explain(&gpu, gpu.backend().upload(x.clone()).unwrap(), &req).unwrap();
        let b = explain(&cpu, x.clone(), &req).unwrap();
        assert_eq!(a.maps.shape(), b.maps.shape());
        if aug || layer.contains(',') {
            assert_eq!(a.maps.shape(), [2, 48, 40]);
        }
        let (lm, lw) = (rel_err(&a.logits, &b.logits), rel_err(&a.maps, &b.maps));
        let ww = rel_err(&a.weights, &b.weights);
        assert!(
            lm < 1e-4 && lw < 1e-3 && ww < 1e-3,
            "aug {aug} eigen {eigen} {layer}: {lm} {lw} {ww}"
        );
        assert_eq!(a.classes, [2, 7]);
    }
}

/// Finer-CAM on the GPU path (its seed, ∂f/∂logits, made on the host from the downloaded
/// logits and uploaded) against the CPU backend at f32, over Grad-CAM and FullGrad: the same
/// compared classes, maps within 1e-3 relative, logits within 1e-4.
#[test]
fn finer_cam_matches_the_cpu_backend() {
    let load = || model::load(fixtures().join("resnet_tiny.safetensors"), None).unwrap();
    let cpu = Network::new(load(), CpuBackend::fast()).unwrap();
    let gpu = Network::new(load(), GpuBackend::new(EmuLauncher::new())).unwrap();
    let img = load_rgb8(&fixtures().join("images/b.png")).unwrap();
    let x = preprocess(&[&img, &img], (48, 40));
    let classes = ClassSel::PerImage(vec![2, 7]);
    let finer = gradcam::cam::Finer {
        alpha: 0.7,
        ranks: vec![1, 2, 4],
    };
    for method in [Method::GradCam, Method::FullGrad] {
        let req = CamRequest {
            method,
            finer: Some(&finer),
            ..CamRequest::grad_cam("layer3", &classes)
        };
        let a = explain(&gpu, gpu.backend().upload(x.clone()).unwrap(), &req).unwrap();
        let b = explain(&cpu, x.clone(), &req).unwrap();
        assert_eq!(a.compared, b.compared, "{method:?}");
        assert_eq!(b.compared[0].len(), 3);
        let (lm, mm) = (rel_err(&a.logits, &b.logits), rel_err(&a.maps, &b.maps));
        assert!(lm < 1e-4 && mm < 1e-3, "{method:?}: logits {lm}, maps {mm}");
    }
}

/// ReLU keeps NaN (as torch's) in every kernel with one: `relu_fwd`, the conv epilogues of
/// each precision, NCHW, channels-last and wgmma, and the CAM kernels (see
/// `common::relu_keeps_nan`).
#[test]
fn relu_keeps_nan_in_the_kernels() {
    for precision in [
        Precision::F32,
        Precision::Tf32,
        Precision::Bf16,
        Precision::F16,
    ] {
        let be = GpuBackend::with_precision(EmuLauncher::new(), precision);
        common::relu_keeps_nan(&be, &format!("{precision:?}"));
        if precision != Precision::F32 {
            let be = GpuBackend::with_precision(EmuLauncher::new(), precision).with_conv_nhwc(true);
            common::relu_keeps_nan(&be, &format!("{precision:?} channels-last"));
        }
    }
    for precision in [Precision::Tf32, Precision::Bf16] {
        let be = GpuBackend::with_precision(EmuLauncher::new(), precision).with_conv_wgmma(true);
        common::relu_keeps_nan(&be, &format!("{precision:?} wgmma"));
    }
}

/// Activations that overflow (each conv's filters ×1e4, past f32's range at the tenth conv)
/// fail the image through the kernels as on the CPU (tests/bad_input.rs), the error naming
/// the layer that first went wrong: at F32, and at BF16 (f32's range, bf16 storage).
#[test]
fn activations_that_overflow_fail_the_image_through_the_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loud.safetensors");
    let mut d = model::synth::state_dict("resnet18", 16, 10, 3).unwrap();
    for (name, t) in d.iter_mut() {
        if name.contains("conv") || name.ends_with("downsample.0.weight") {
            let v = t.data().iter().map(|x| x * 1e4).collect();
            *t = Tensor::new(t.shape().to_vec(), v);
        }
    }
    model::synth::write(&path, &d, safetensors::Dtype::F32).unwrap();
    let img = load_rgb8(&fixtures().join("images/a.png")).unwrap();
    let cfg = ExplainConfig {
        size: InputSize::Square(64),
        ..ExplainConfig::default()
    };
    for precision in [Precision::F32, Precision::Bf16] {
        let g = model::load(&path, None).unwrap();
        let be = GpuBackend::with_precision(EmuLauncher::new(), precision);
        let net = Network::new(g, be).unwrap();
        match explain_batch(&net, &[&img], &cfg, &mut Timings::default()) {
            Err(e @ gradcam::Error::NonFinite { .. }) => {
                let msg = e.to_string();
                let first = "first in the output of `layer3.0.conv1`, `layer3.0.bn1` (conv)";
                assert!(
                    msg.contains("logits") && msg.contains(first),
                    "{precision:?}: {msg}"
                );
            }
            other => panic!("{precision:?}: {:?}", other.map(|e| e[0].top5.clone())),
        }
    }
}

/// Logits beyond f16's range (±65504) fail the batch with an error naming the overflow, not a
/// blank map; the same model at TF32 (f32's range) explains the image. The fully connected
/// layer is scaled so the largest logit is 1e6 in exact arithmetic.
#[test]
fn f16_overflow_is_an_error_not_a_blank_map() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loud.safetensors");
    let img = load_rgb8(&fixtures().join("images/a.png")).unwrap();
    let cfg = ExplainConfig {
        size: InputSize::Square(64),
        ..ExplainConfig::default()
    };
    let mut dict = model::synth::state_dict("resnet18", 16, 10, 1).unwrap();
    let logits = |dict: &[(String, Tensor)], precision: Option<Precision>| {
        model::synth::write(&path, dict, safetensors::Dtype::F32).unwrap();
        let g = model::load(&path, None).unwrap();
        let r = match precision {
            None => explain_batch(
                &Network::new(g, CpuBackend::fast()).unwrap(),
                &[&img],
                &cfg,
                &mut Timings::default(),
            ),
            Some(p) => explain_batch(
                &Network::new(g, GpuBackend::with_precision(EmuLauncher::new(), p)).unwrap(),
                &[&img],
                &cfg,
                &mut Timings::default(),
            ),
        };
        r.map(|e| e[0].top5[0].1.abs())
    };
    let largest = logits(&dict, None).unwrap();
    for (name, t) in dict.iter_mut() {
        if name.starts_with("fc.") {
            let v = t.data().iter().map(|x| x * 1e6 / largest).collect();
            *t = Tensor::new(t.shape().to_vec(), v);
        }
    }
    match logits(&dict, Some(Precision::F16)) {
        Err(e @ gradcam::Error::NonFinite { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("logits") && msg.contains("65504"), "{msg}");
        }
        other => panic!("f16 logits of 1e6: {:?}", other.map_err(|e| e.to_string())),
    }
    let tf32 = logits(&dict, Some(Precision::Tf32)).unwrap();
    assert!((tf32 / 1e6 - 1.0).abs() < 1e-2, "largest TF32 logit {tf32}");
}

/// Deep Feature Factorization and ROAD through the emulated kernels (activations at the layer
/// downloaded, the network run on from the layer for the concepts' classes, ROAD's copies
/// through the network) against the CPU backend, at f32: the NMF and the imputation run on
/// the host, so only the network's rounding differs (activations and logits within 1e-4,
/// hence concepts within 1e-3 and ROAD's probability changes within 1e-4).
#[test]
fn dff_and_road_match_the_cpu_backend() {
    let load = || model::load(fixtures().join("resnet_tiny.safetensors"), None).unwrap();
    let cpu = Network::new(load(), CpuBackend::fast()).unwrap();
    let gpu = Network::new(load(), GpuBackend::new(EmuLauncher::new())).unwrap();
    let imgs: Vec<RgbImage> = ["a", "b"]
        .iter()
        .map(|n| load_rgb8(&fixtures().join(format!("images/{n}.png"))).unwrap())
        .collect();
    let refs: Vec<&RgbImage> = imgs.iter().collect();
    let x = preprocess(&refs, (64, 64));
    let factorise = |act: Tensor| gradcam::dff::factorize(vec![act], 3).unwrap();
    let (ac, _) = gradcam::dff::activations(&cpu, x.clone(), "layer4").unwrap();
    let (ag, _) =
        gradcam::dff::activations(&gpu, gpu.backend().upload(x.clone()).unwrap(), "layer4")
            .unwrap();
    assert!(
        rel_err(&ag, &ac) < 1e-4,
        "activations {}",
        rel_err(&ag, &ac)
    );
    let (fc, fg) = (factorise(ac), factorise(ag));
    assert!(rel_err(&fg.concepts, &fc.concepts) < 1e-3);
    let sc = gradcam::dff::concept_scores(&cpu, "layer4", &fc.concepts, (64, 64)).unwrap();
    let sg = gradcam::dff::concept_scores(&gpu, "layer4", &fc.concepts, (64, 64)).unwrap();
    let (sc, sg) = (sc.unwrap(), sg.unwrap());
    assert!(
        rel_err(&sg, &sc) < 1e-4,
        "concept scores {}",
        rel_err(&sg, &sc)
    );

    let one = preprocess(&refs[..1], (64, 64));
    let map: Vec<f32> = (0..64 * 64)
        .map(|i| ((i % 64) as f32 / 63.0).powi(2))
        .collect();
    let cfg = gradcam::eval::road::RoadConfig::default();
    use gradcam::eval::road::road_scores;
    let rc = road_scores(&cpu, &one, &map, 2, 0.5, &cfg, 7)
        .unwrap()
        .unwrap();
    let rg = road_scores(&gpu, &one, &map, 2, 0.5, &cfg, 7)
        .unwrap()
        .unwrap();
    assert!(
        (rc.morf - rg.morf).abs() < 1e-4 && (rc.lerf - rg.lerf).abs() < 1e-4,
        "{rc:?} {rg:?}"
    );
}

/// Filters prepared (the KRSC copy) for one conv, or in another precision, and handed to
/// another conv are refused, not read past their end or misread by the kernel.
#[test]
fn prepared_filters_of_another_conv_are_refused() {
    use gradcam::backend::Conv2dParams;
    let be = GpuBackend::with_precision(EmuLauncher::new(), Precision::Tf32).with_conv_krsc(true);
    let mut rng = Rng::new(3);
    let up = |s: &[usize], rng: &mut Rng| be.upload(rng.tensor(s, -1.0, 1.0)).unwrap();
    let p = Conv2dParams::new(1, 1);
    let (w32, w64) = (up(&[8, 32, 3, 3], &mut rng), up(&[8, 64, 3, 3], &mut rng));
    let prepared = be.conv2d_prepare(&w32, &p).unwrap().expect("KRSC filters");
    let x = up(&[1, 64, 4, 4], &mut rng);
    let e = be
        .conv2d_fwd(&x, &w64, Some(&prepared), None, &p, false)
        .err()
        .expect("refused");
    assert!(e.to_string().contains("conv2d_fwd"), "{e}");
    // Filters of the right shape prepared in another precision (BF16 for TF32).
    let bf16 = GpuBackend::with_precision(EmuLauncher::new(), Precision::Bf16).with_conv_krsc(true);
    let w16 = bf16.upload(rng.tensor(&[8, 64, 3, 3], -1.0, 1.0)).unwrap();
    let other = bf16
        .conv2d_prepare(&w16, &p)
        .unwrap()
        .expect("KRSC filters");
    let e = be
        .conv2d_fwd(&x, &w64, Some(&other), None, &p, false)
        .err()
        .expect("refused");
    assert!(e.to_string().contains("prepared filters are Bf16"), "{e}");
    let fits = be.conv2d_prepare(&w64, &p).unwrap().expect("KRSC filters");
    be.conv2d_fwd(&x, &w64, Some(&fits), None, &p, false)
        .unwrap();
}
