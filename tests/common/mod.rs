//! Shared by the parity tests: fixture paths, expected-value files, overlay comparison.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gradcam::backend::CpuBackend;
use gradcam::model::{self, Network};
use gradcam::Tensor;
use serde_json::Value;

/// tests/fixtures, or GRADCAM_FIXTURES (a test binary run on another machine, see
/// scripts/gpu-check.sh).
pub fn fixtures() -> PathBuf {
    std::env::var_os("GRADCAM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
}

pub use gradcam::parity::{Expected, ParityTol};

/// A fixture's reference tensors.
pub fn expected(path: &Path) -> Expected {
    Expected::load(path).unwrap()
}

pub fn manifest(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

/// One network per model of manifest.json.
pub fn networks() -> HashMap<String, Network<CpuBackend>> {
    manifest("manifest.json")["models"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, m)| {
            let path = fixtures().join(m["file"].as_str().unwrap());
            let g = model::load(&path, None).unwrap();
            (name.clone(), Network::new(g, CpuBackend::fast()).unwrap())
        })
        .collect()
}

/// Largest |ours - theirs| relative to max(1, max |theirs|).
pub fn rel_err(ours: &Tensor, theirs: &Tensor) -> f32 {
    let scale = theirs.data().iter().fold(1f32, |m, v| m.max(v.abs()));
    ours.max_abs_diff(theirs) / scale
}

/// show_cam_on_image bytes by gradcam::parity::overlay_mismatches' rule: within ±2, or ±4
/// where the reference 255·cam lies within 1e-2 of a truncation boundary.
pub fn check_overlay(id: &str, ours: &[u8], theirs: &[u8], reference_cam: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{id}: overlay size");
    let bad = gradcam::parity::overlay_mismatches(ours, theirs, reference_cam);
    if let Some(&(i, a, b)) = bad.first() {
        panic!(
            "{id}: {} overlay bytes off, first {i}: {a} vs {b}",
            bad.len()
        );
    }
}

/// tests/parity.rs's tolerances.
pub const F32_TOL: ParityTol = ParityTol::F32;

/// The tensor-core precisions with their parity tolerances.
pub const TENSOR_CORE_TOL: [(gradcam::backend::gpu::Precision, ParityTol); 3] = [
    (gradcam::backend::gpu::Precision::Tf32, ParityTol::TF32),
    (gradcam::backend::gpu::Precision::Bf16, ParityTol::BF16),
    (gradcam::backend::gpu::Precision::F16, ParityTol::F16),
];

/// Every case of manifest.json (that `only` accepts) through `explain_batch` on any backend,
/// asserting `tol` case by case. Returns the number of cases and the largest cam error.
pub fn parity_end_to_end<B: gradcam::backend::Backend>(
    open: impl Fn(gradcam::model::Graph) -> Network<B>,
    tol: ParityTol,
    only: impl Fn(&str) -> bool,
) -> (usize, f32) {
    let results = gradcam::parity::run_fixtures(&fixtures(), |g| Ok(open(g)), only).unwrap();
    for r in &results {
        assert!(tol.passes(r), "{}: {r:?} outside {tol:?}", r.id);
    }
    let worst = results.iter().map(|r| r.cam_err).fold(0f32, f32::max);
    (results.len(), worst)
}

/// Convolutions (1x1 and 3x3, stride 1 and 2, partial tiles, with and without the fused
/// residual) through backends that differ only in the kernel they pick: each tile side, plain
/// or KRSC weights (with the input by vectors where the shape allows), and tuned. The outputs
/// must agree bit for bit, so tuning changes speed, never results; the tuned backend keeps one
/// plan per shape and epilogue. Returns the tuned plans.
pub fn conv_choices_agree<L: gradcam::backend::gpu::Launcher>(
    precision: gradcam::backend::gpu::Precision,
    launcher: impl Fn() -> L,
) -> Vec<(String, String)> {
    use gradcam::backend::gpu::{ConvTile, GpuBackend};
    let (run, convs) = conv_runner::<L>();
    let forced = |tile, krsc, ring| {
        GpuBackend::with_precision(launcher(), precision)
            .with_conv_tile(tile)
            .with_conv_krsc(krsc)
            .with_conv_async(ring)
            .with_conv_tune(false)
    };
    let want = run(&forced(ConvTile::T64, false, false));
    // Channels-last (every shape here qualifies): at 16 bits the same bits, output transposed
    // back by download; at TF32 (outputs stored TF32-rounded) the two tiles agree.
    // The 128x128 tiles with 3 and with 4 stages, and on 4 warps; 64-channel slices (the 1x1
    // shape). 16-bit; TF32 keeps 8 warps and 32 channels.
    let nhwc = |tile, stages, warps, slice| {
        run(&forced(tile, false, false)
            .with_conv_nhwc(true)
            .with_conv_stages(stages)
            .with_conv_warps(warps)
            .with_conv_slice(slice))
    };
    let nhwc_want = if precision != gradcam::backend::gpu::Precision::Tf32 {
        want.clone()
    } else {
        nhwc(ConvTile::T64, 3, 8, 32)
    };
    for (tile, stages, warps, slice) in [
        (ConvTile::T64, 3, 8, 32),
        (ConvTile::T128, 3, 8, 32),
        (ConvTile::T128, 4, 8, 32),
        (ConvTile::T128, 3, 4, 32),
        (ConvTile::T64, 3, 8, 64),
        (ConvTile::T128, 3, 8, 64),
    ] {
        assert!(
            nhwc(tile, stages, warps, slice) == nhwc_want,
            "{precision:?}: {tile:?} {stages} stages {warps} warps {slice}-channel slices \
             channels-last differs"
        );
    }
    // The 16-bit cp.async ring (on the 1x1 shape) is a tuning choice too; TF32's is not.
    let sixteen = precision != gradcam::backend::gpu::Precision::Tf32;
    for (tile, krsc, ring) in [
        (ConvTile::T128, false, false),
        (ConvTile::T64, true, false),
        (ConvTile::T128, true, false),
        (ConvTile::T64, false, sixteen),
        (ConvTile::T128, false, sixteen),
    ] {
        assert!(
            run(&forced(tile, krsc, ring)) == want,
            "{precision:?}: {tile:?} KRSC {krsc} cp.async {ring} differs from 64x64 plain"
        );
    }
    // Tuned, the KRSC setting left to it (GRADCAM_CONV_KRSC unset in the tests).
    let tuned = GpuBackend::with_precision(launcher(), precision)
        .with_conv_tile(ConvTile::Auto)
        .with_conv_tune(true);
    assert!(
        run(&tuned) == want,
        "{precision:?}: the tuned kernels differ"
    );
    let plans = tuned.conv_plans();
    assert_eq!(plans.len(), 2 * convs, "{plans:?}");
    // No candidate was passed over for giving other bits than the first choice.
    let rejected = tuned.conv_rejected();
    assert!(rejected.is_empty(), "{precision:?}: {rejected:?}");
    plans
}

/// The convolutions of [`conv_choices_agree`] through a backend, their outputs' bits.
/// Returns the runner and how many convolutions it runs (each twice: alone, and with a residual).
fn conv_runner<L: gradcam::backend::gpu::Launcher>() -> (
    impl Fn(&gradcam::backend::gpu::GpuBackend<L>) -> Vec<Vec<u32>>,
    usize,
) {
    use gradcam::backend::{Backend, Conv2dParams};
    let shapes = [
        ([3, 64, 8, 6], [72, 64, 1, 1], Conv2dParams::new(1, 0)),
        ([2, 32, 8, 8], [136, 32, 3, 3], Conv2dParams::new(1, 1)),
        ([2, 32, 7, 7], [80, 32, 3, 3], Conv2dParams::new(1, 1)),
        ([2, 64, 9, 8], [80, 64, 3, 3], Conv2dParams::new(2, 1)),
    ];
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut random = |shape: &[usize]| {
        let n = shape.iter().product();
        let v = (0..n)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect();
        Tensor::new(shape.to_vec(), v)
    };
    let inputs: Vec<_> = shapes
        .iter()
        .map(|(xs, ws, p)| {
            let (x, w, b) = (random(xs), random(ws), random(&ws[..1]));
            let (oh, ow) = p.out_hw((xs[2], xs[3]), (ws[2], ws[3])).unwrap();
            let res = random(&[xs[0], ws[0], oh, ow]);
            (x, w, b, res, *p)
        })
        .collect();
    let run = move |be: &gradcam::backend::gpu::GpuBackend<L>| -> Vec<Vec<u32>> {
        let mut outs = Vec::new();
        for (x, w, b, res, p) in &inputs {
            let (xd, wd, bd) = (
                be.upload(x.clone()).unwrap(),
                be.upload(w.clone()).unwrap(),
                be.upload(b.clone()).unwrap(),
            );
            let prep = be.conv2d_prepare(&wd, p).unwrap();
            let y = be
                .conv2d_fwd(&xd, &wd, prep.as_ref(), Some(&bd), p, true)
                .unwrap();
            let rd = be.upload(res.clone()).unwrap();
            let z = be
                .conv2d_fwd_add_relu(&xd, &wd, prep.as_ref(), Some(&bd), p, &rd)
                .unwrap();
            for t in [y, z] {
                let t = be.download(&t).unwrap();
                outs.push(t.data().iter().map(|v| v.to_bits()).collect());
            }
        }
        outs
    };
    (run, shapes.len())
}

/// The wgmma tiles of 64, 128 (with 4 and 6 stages) and 256 output channels on
/// [`conv_choices_agree`]'s convolutions give one another's bits (each output is the same sequence of m64n128 k-steps; not the
/// mma.sync kernels' bits, the hardware sums in its own order), so tuning between them is
/// safe. False (nothing checked) where the device has no wgmma.
pub fn wgmma_tiles_agree<L: gradcam::backend::gpu::Launcher>(
    precision: gradcam::backend::gpu::Precision,
    launcher: impl Fn() -> L,
) -> bool {
    use gradcam::backend::gpu::GpuBackend;
    let (run, _) = conv_runner::<L>();
    let wgmma = |rows, stages| {
        GpuBackend::with_precision(launcher(), precision)
            .with_conv_tune(false)
            .with_wgmma_tile(rows, stages)
            .with_conv_wgmma(true)
    };
    if !wgmma(64, 4).uses_wgmma() {
        return false;
    }
    let w64 = run(&wgmma(64, 4));
    for (rows, stages) in [(128, 4), (128, 6), (256, 4)] {
        assert!(
            run(&wgmma(rows, stages)) == w64,
            "{precision:?}: the wgmma tile of {rows} rows, {stages} stages differs from 64"
        );
    }
    true
}

/// A pipeline's order of work: the device halves of three batches queued first, then their
/// explanations collected on another thread, last batch first. Each must equal the batch run
/// alone (bit for bit: the same kernels), and once all are collected the device must hold no
/// more memory than before. The images (480x400, 576 KB each) make batches of 1.2 and 1.7 MB,
/// which a GPU's page-locked pool serves, and one of 576 KB, which it does not.
/// `in_flight(queued, before)` sees the device memory in use with the batches queued.
pub fn batches_in_flight_keep_their_own_results<L: gradcam::backend::gpu::Launcher>(
    open: impl Fn() -> Network<gradcam::backend::gpu::GpuBackend<L>>,
    in_flight: impl FnOnce(usize, usize),
) {
    use gradcam::explain::{explain_batch, explain_batch_device, ExplainConfig, Timings};
    use gradcam::image::{InputSize, RgbImage};
    let imgs: Vec<RgbImage> = (0..4u32)
        .map(|k| {
            RgbImage::from_fn(480, 400, |x, y| {
                let (u, v) = (x * (k + 1) / 7, y * (4 - k) / 5);
                image::Rgb([(u + v) as u8, (u ^ v) as u8, (x * y / 97 + 40 * k) as u8])
            })
        })
        .collect();
    let batches: Vec<Vec<&RgbImage>> = vec![
        vec![&imgs[0], &imgs[1]],
        vec![&imgs[2]],
        vec![&imgs[3], &imgs[0], &imgs[2]],
    ];
    let cfg = ExplainConfig {
        size: InputSize::Square(64),
        ..Default::default()
    };
    let alone = open();
    let want: Vec<_> = (batches.iter())
        .map(|b| explain_batch(&alone, b, &cfg, &mut Timings::default()).unwrap())
        .collect();

    let piped = open();
    let mut t = Timings::default();
    // One batch first: the weights and what the backend keeps once made (the colormap's
    // table).
    explain_batch(&piped, &batches[1], &cfg, &mut t).unwrap();
    let memory = || piped.backend().launcher().memory().in_use();
    let before = memory();
    let queued: Vec<_> = (batches.iter())
        .map(|b| explain_batch_device(&piped, b, &cfg, &mut t).unwrap())
        .collect();
    in_flight(memory(), before);
    let got = std::thread::scope(|s| {
        let host = s.spawn(|| {
            let mut t = Timings::default();
            let mut got: Vec<_> = (queued.into_iter().enumerate().rev())
                .map(|(i, db)| (i, db.finish(&batches[i], &cfg, &mut t).unwrap()))
                .collect();
            got.reverse();
            got
        });
        host.join().unwrap()
    });
    for (i, got) in got {
        assert_eq!(got.len(), want[i].len());
        for (j, (a, b)) in got.iter().zip(&want[i]).enumerate() {
            assert_eq!(a.class, b.class, "batch {i} image {j}");
            assert_eq!(a.cam, b.cam, "batch {i} image {j}");
            let dims = a.overlay.as_ref().map(|o| o.dimensions());
            assert_eq!(dims, Some((480, 400)), "batch {i} image {j}");
            assert!(
                a.overlay == b.overlay,
                "batch {i} image {j}: overlays differ"
            );
        }
    }
    assert_eq!(memory(), before, "device memory left held after collecting");
}

/// ReLU keeps NaN on every path of a backend, as torch's `F.relu` and numpy's `maximum(x, 0)`
/// do: the plain op, a conv's fused bias + ReLU and bias + residual + ReLU epilogues (through
/// the filters prepared as the network prepares them, and not), and the CAM ops' ReLUs. A NaN
/// born inside the network (activations that overflowed) must reach the logits' check rather
/// than turn into zeros. Where the NaNs are is checked exactly; the other outputs only for
/// being finite (their values are checked against the naive ops elsewhere).
pub fn relu_keeps_nan<B: gradcam::backend::Backend>(be: &B, what: &str) {
    use gradcam::backend::{Conv2dParams, ElementRule};
    let nan = f32::NAN;
    let up = |t: Tensor| be.upload(t).unwrap();
    let down = |t: &B::Tensor| be.download(t).unwrap();
    // F.relu(torch.tensor([nan, -inf, inf, -1., 2., 0.])) → [nan, 0, inf, 0, 2, 0]
    let x = Tensor::new(
        [1, 1, 2, 3],
        vec![nan, f32::NEG_INFINITY, f32::INFINITY, -1.0, 2.0, 0.0],
    );
    let y = down(&be.relu_fwd(up(x)).unwrap());
    let d = y.data();
    assert!(
        d[0].is_nan() && d[1..] == [0.0, f32::INFINITY, 0.0, 2.0, 0.0],
        "{what}: relu_fwd gave {d:?}"
    );
    // Every output must be NaN exactly where `nan_at` says.
    let pattern = |name: &str, t: &Tensor, nan_at: &dyn Fn(&[usize]) -> bool| {
        let s = t.shape().to_vec();
        for (i, v) in t.data().iter().enumerate() {
            let mut idx = vec![0; s.len()];
            let mut r = i;
            for (d, len) in idx.iter_mut().zip(&s).rev() {
                *d = r % len;
                r /= len;
            }
            let want = nan_at(&idx);
            assert!(
                v.is_nan() == want && (want || v.is_finite()),
                "{what}: {name} at {idx:?} is {v} ({})",
                if want {
                    "want NaN"
                } else {
                    "want a finite value"
                }
            );
        }
    };
    let mut rng = gradcam::model::synth::Rng::new(11);
    // (n, c, h, w, k, kernel, stride, padding): a 3×3 conv (Winograd on the CPU, at the
    // network's map size), a 1×1 one (a GEMM) and a 7×7/2 stem (im2col).
    let cases = [
        (2, 16, 12, 12, 32, 3, 1, 1),
        (2, 64, 7, 7, 64, 1, 1, 0),
        (1, 3, 16, 16, 16, 7, 2, 3),
    ];
    for (n, c, h, w, k, r, s, pd) in cases {
        let p = Conv2dParams::new(s, pd);
        let (oh, ow) = p.out_hw((h, w), (r, r)).unwrap();
        let x = up(rng.tensor(&[n, c, h, w], -1.0, 1.0));
        let wt = up(rng.tensor(&[k, c, r, r], -1.0, 1.0));
        // Bias NaN in output channel 1: that whole channel is NaN after the ReLU.
        let mut b = rng.tensor(&[k], -1.0, 1.0);
        b.data_mut()[1] = nan;
        let b = up(b);
        // The residual NaN at one element of channel 2: that output alone.
        let mut res = rng.tensor(&[n, k, oh, ow], -1.0, 1.0);
        let hole = [n - 1, 2, oh / 2, ow - 1];
        res.data_mut()[((hole[0] * k + hole[1]) * oh + hole[2]) * ow + hole[3]] = nan;
        let res = up(res);
        let preps = [
            be.conv2d_prepare_for(&wt, &p, Some((oh, ow))).unwrap(),
            be.conv2d_prepare(&wt, &p).unwrap(),
            None,
        ];
        for (j, prep) in preps.iter().enumerate() {
            let case = format!("{r}x{r}/{s} conv, preparation {j}");
            let y = be.conv2d_fwd(&x, &wt, prep.as_ref(), Some(&b), &p, true);
            pattern(&format!("{case}, bias + ReLU"), &down(&y.unwrap()), &|i| {
                i[1] == 1
            });
            let z = be.conv2d_fwd_add_relu(&x, &wt, prep.as_ref(), Some(&b), &p, &res);
            pattern(
                &format!("{case}, bias + residual + ReLU"),
                &down(&z.unwrap()),
                &|i| i[1] == 1 || i == hole,
            );
        }
    }
    // The CAM ops: a NaN channel weight of image 0 makes its whole map NaN
    // (np.maximum((w[:, :, None, None] * a).sum(1), 0)); a NaN gradient at one position of
    // image 1 makes that position's map NaN, for each element-wise rule.
    let (n, k, h, w) = (2, 5, 4, 3);
    let a = up(rng.tensor(&[n, k, h, w], -1.0, 1.0));
    let mut alpha = rng.tensor(&[n, k], -1.0, 1.0);
    alpha.data_mut()[3] = nan;
    let m = be.weighted_sum_relu(&a, &up(alpha)).unwrap();
    pattern("weighted_sum_relu", &down(&m), &|i| i[0] == 0);
    let mut g = rng.tensor(&[n, k, h, w], -1.0, 1.0);
    g.data_mut()[((k + 4) * h + 2) * w + 1] = nan;
    let g = up(g);
    for rule in [
        ElementRule::HiResCam,
        ElementRule::LayerCam,
        ElementRule::GradCamElementWise,
    ] {
        let m = be.elementwise_cam_relu(rule, &a, &g).unwrap();
        pattern(&format!("elementwise_cam_relu {rule:?}"), &down(&m), &|i| {
            i == [1, 2, 1]
        });
    }
}
