//! Every op of a backend against the naive CPU oracle on random inputs (odd sizes, strides,
//! padding, groups, batch > 1), then a whole Grad-CAM pass on a random narrowed ResNet: what
//! `gradcam selftest` runs on the CPU, on the emulated kernels, and (next) on a real GPU.
//! Tolerance: max abs diff ≤ tol · (1 + max |reference|), tol = the backend's
//! [`Backend::selftest_tolerance`] (1e-3 for f32 arithmetic, 2e-3 for TF32 tensor cores, 1e-2
//! for BF16, 5e-3 for F16). Inputs are bf16-exact, so the CPU's bf16 convolutions (which
//! round only their operands, to bf16) are held to f32's 1e-3.

use super::{Backend, Conv2dParams, CpuBackend, ElementRule, FullGradBy, Pool2dParams, WeightRule};
use crate::model::synth::Rng;
use crate::{Result, Tensor};

pub struct Check {
    pub op: String,
    pub shape: String,
    pub max_err: f32,
    pub tolerance: f32,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.max_err <= self.tolerance
    }
}

fn check<B: Backend>(
    be: &B,
    op: &str,
    shape: &str,
    got: &B::Tensor,
    want: &Tensor,
) -> Result<Check> {
    let got = be.download(got)?;
    let tolerance =
        be.selftest_tolerance() * (1.0 + want.data().iter().fold(0f32, |m, v| m.max(v.abs())));
    let max_err = if got.shape() == want.shape() {
        got.max_abs_diff(want)
    } else {
        f32::INFINITY
    };
    Ok(Check {
        op: op.into(),
        shape: shape.into(),
        max_err,
        tolerance,
    })
}

/// Random inputs are rounded to bf16 first, so a backend that stores tensors in bf16 sees the
/// same numbers as the oracle (else rounding alone could move a max-pool's argmax).
fn bf16_exact(t: Tensor) -> Tensor {
    let v = t
        .data()
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect::<Vec<_>>();
    Tensor::new(t.shape().to_vec(), v)
}

/// Every op against the naive CPU ops: [`conv_checks`], then [`op_checks`].
pub fn run<B: Backend>(be: &B) -> Result<Vec<Check>> {
    let mut out = conv_checks(be)?;
    out.extend(op_checks(be)?);
    Ok(out)
}

/// The convolutions, forward (with bias and ReLU, and with the residual add) and backward-data,
/// over shapes that reach every kernel path: the part of the selftest that depends on the
/// convolution kernels chosen (tile, ring, weight layout, channels-last), so a test of many
/// such choices can repeat this part only.
pub fn conv_checks<B: Backend>(be: &B) -> Result<Vec<Check>> {
    let oracle = CpuBackend::reference();
    let mut rng = Rng::new(2024);
    let mut out = Vec::new();
    let up = |t: &Tensor| be.upload(t.clone());
    let convs = [
        ([2, 3, 17, 13], [8, 3, 7, 7], Conv2dParams::new(2, 3)),
        ([2, 16, 9, 11], [24, 16, 3, 3], Conv2dParams::new(1, 1)),
        ([3, 32, 7, 7], [64, 32, 1, 1], Conv2dParams::new(1, 0)),
        // 1x1 over 4-pixel groups (H·W a multiple of 4), three images across the column tiles.
        ([3, 64, 8, 6], [72, 64, 1, 1], Conv2dParams::new(1, 0)),
        // 3x3 over rows of a multiple of 4, two groups of two 32-channel blocks each.
        (
            [1, 128, 8, 8],
            [64, 64, 3, 3],
            Conv2dParams {
                groups: 2,
                ..Conv2dParams::new(1, 1)
            },
        ),
        // Several tiles each way and 36 depth slices, as in a ResNet stage.
        ([2, 64, 15, 13], [72, 64, 3, 3], Conv2dParams::new(1, 1)),
        // Several 128x128 tensor-core tiles each way, the last ones partial.
        ([2, 32, 12, 12], [136, 32, 3, 3], Conv2dParams::new(1, 1)),
        ([2, 16, 9, 7], [32, 16, 1, 1], Conv2dParams::new(2, 0)),
        (
            [2, 8, 10, 9],
            [8, 2, 3, 3],
            Conv2dParams {
                groups: 4,
                ..Conv2dParams::new(2, 1)
            },
        ),
        // Dilation and unequal strides and paddings per axis.
        (
            [1, 8, 11, 10],
            [12, 8, 3, 3],
            Conv2dParams {
                stride: (1, 2),
                padding: (2, 1),
                dilation: (2, 1),
                groups: 1,
            },
        ),
        // The blocked depth order (channels per group a multiple of the 32-deep slice, both
        // ways): strides, paddings and dilations per axis, and two groups.
        (
            [2, 32, 11, 10],
            [32, 32, 3, 3],
            Conv2dParams {
                stride: (2, 1),
                padding: (1, 2),
                dilation: (2, 1),
                groups: 1,
            },
        ),
        // Two 64-channel blocks (whole 128-byte slices at 16 bits: the wgmma convs' too) with
        // strides, paddings and dilations per axis.
        (
            [2, 128, 11, 10],
            [40, 128, 3, 3],
            Conv2dParams {
                stride: (2, 1),
                padding: (1, 2),
                dilation: (2, 1),
                groups: 1,
            },
        ),
        (
            [1, 64, 8, 9],
            [64, 32, 3, 3],
            Conv2dParams {
                groups: 2,
                ..Conv2dParams::new(1, 1)
            },
        ),
    ];
    for (xs, ws, p) in convs {
        let x = bf16_exact(rng.tensor(&xs, -1.0, 1.0));
        let w = bf16_exact(rng.tensor(&ws, -1.0, 1.0));
        let b = bf16_exact(rng.tensor(&ws[..1], -1.0, 1.0));
        let shape =
            if p.stride.0 == p.stride.1 && p.padding.0 == p.padding.1 && p.dilation == (1, 1) {
                format!(
                    "{xs:?} * {ws:?} s{} p{} g{}",
                    p.stride.0, p.padding.0, p.groups
                )
            } else {
                format!(
                    "{xs:?} * {ws:?} s{:?} p{:?} d{:?}",
                    p.stride, p.padding, p.dilation
                )
            };
        let (xd, wd, bd) = (up(&x)?, up(&w)?, up(&b)?);
        let prep = be.conv2d_prepare(&wd, &p)?;
        let y = be.conv2d_fwd(&xd, &wd, prep.as_ref(), Some(&bd), &p, true)?;
        let want = oracle.conv2d_fwd(&x, &w, None, Some(&b), &p, true)?;
        out.push(check(be, "conv2d_fwd (+bias, relu)", &shape, &y, &want)?);
        let res = bf16_exact(rng.tensor(want.shape(), -1.0, 1.0));
        let y = be.conv2d_fwd_add_relu(&xd, &wd, prep.as_ref(), Some(&bd), &p, &up(&res)?)?;
        let plain = oracle.conv2d_fwd(&x, &w, None, Some(&b), &p, false)?;
        let want_res = oracle.relu_fwd(oracle.add(plain, &res)?)?;
        out.push(check(be, "conv2d_fwd_add_relu", &shape, &y, &want_res)?);
        let dy = bf16_exact(rng.tensor(want.shape(), -1.0, 1.0));
        let dx = be.conv2d_bwd_data(&up(&dy)?, &wd, (xs[2], xs[3]), &p)?;
        let want_dx = oracle.conv2d_bwd_data(&dy, &w, (xs[2], xs[3]), &p)?;
        out.push(check(be, "conv2d_bwd_data", &shape, &dx, &want_dx)?);
        // Through the filters the network prepares for a backward pass, where the backend
        // makes some (the CPU: a transposed conv, or Wᵀ packed; in bf16 on AMX).
        if let Some(bwd) = be.conv2d_prepare_bwd(&wd, &p, (xs[2], xs[3]))? {
            let dx = be.conv2d_bwd_data_with(&up(&dy)?, &wd, Some(&bwd), (xs[2], xs[3]), &p)?;
            out.push(check(
                be,
                "conv2d_bwd_data (prepared)",
                &shape,
                &dx,
                &want_dx,
            )?);
        }
    }
    Ok(out)
}

/// Every op but the convolutions: pointwise, pooling, linear and the CAM family.
pub fn op_checks<B: Backend>(be: &B) -> Result<Vec<Check>> {
    let oracle = CpuBackend::reference();
    let mut rng = Rng::new(2025);
    let mut out = Vec::new();
    let up = |t: &Tensor| be.upload(t.clone());
    let x = bf16_exact(rng.tensor(&[2, 5, 13, 11], -1.0, 1.0));
    let shape = "[2, 5, 13, 11]";
    let xr = oracle.relu_fwd(x.clone())?;
    out.push(check(be, "relu_fwd", shape, &be.relu_fwd(up(&x)?)?, &xr)?);
    let dy = bf16_exact(rng.tensor(x.shape(), -1.0, 1.0));
    for guided in [false, true] {
        let got = be.relu_bwd(&up(&xr)?, up(&dy)?, guided)?;
        let name = if guided {
            "relu_bwd (guided)"
        } else {
            "relu_bwd"
        };
        out.push(check(
            be,
            name,
            shape,
            &got,
            &oracle.relu_bwd(&xr, dy.clone(), guided)?,
        )?);
    }
    out.push(check(
        be,
        "add",
        shape,
        &be.add(up(&x)?, &up(&dy)?)?,
        &oracle.add(x.clone(), &dy)?,
    )?);
    let (s, t): (Vec<f32>, Vec<f32>) = (0..5).map(|i| (0.5 + i as f32, 0.1 * i as f32)).unzip();
    out.push(check(
        be,
        "channel_affine",
        shape,
        &be.channel_affine(up(&x)?, &s, &t)?,
        &oracle.channel_affine(x.clone(), &s, &t)?,
    )?);
    for p in [Pool2dParams::new(2, 2, 0), Pool2dParams::new(3, 2, 1)] {
        let name = format!("{shape} k{} s{} p{}", p.kernel.0, p.stride.0, p.padding.0);
        let y = oracle.max_pool2d_fwd(&xr, &p)?;
        out.push(check(
            be,
            "max_pool2d_fwd",
            &name,
            &be.max_pool2d_fwd(&up(&xr)?, &p)?,
            &y,
        )?);
        let g = bf16_exact(rng.tensor(y.shape(), -1.0, 1.0));
        out.push(check(
            be,
            "max_pool2d_bwd",
            &name,
            &be.max_pool2d_bwd(&up(&xr)?, &up(&g)?, &p)?,
            &oracle.max_pool2d_bwd(&xr, &g, &p)?,
        )?);
        let v = bf16_exact(rng.tensor(xr.shape(), -1.0, 1.0));
        out.push(check(
            be,
            "max_pool2d_tangent",
            &name,
            &be.max_pool2d_tangent(&up(&xr)?, &up(&v)?, &p)?,
            &oracle.max_pool2d_tangent(&xr, &v, &p)?,
        )?);
    }
    let y = oracle.adaptive_avg_pool2d_fwd(&x, (7, 7))?;
    out.push(check(
        be,
        "adaptive_avg_pool2d_fwd",
        "[2, 5, 13, 11] → 7x7",
        &be.adaptive_avg_pool2d_fwd(&up(&x)?, (7, 7))?,
        &y,
    )?);
    let g = bf16_exact(rng.tensor(y.shape(), -1.0, 1.0));
    out.push(check(
        be,
        "adaptive_avg_pool2d_bwd",
        "7x7 → [13, 11]",
        &be.adaptive_avg_pool2d_bwd(&up(&g)?, (13, 11))?,
        &oracle.adaptive_avg_pool2d_bwd(&g, (13, 11))?,
    )?);
    // (batch, in, out); the second is deep enough for the GPU's split-depth path both ways.
    for (n, fin, fout) in [(3, 70, 19), (5, 1100, 1030)] {
        let (xl, wl, bl) = (
            bf16_exact(rng.tensor(&[n, fin], -1.0, 1.0)),
            bf16_exact(rng.tensor(&[fout, fin], -1.0, 1.0)),
            bf16_exact(rng.tensor(&[fout], -1.0, 1.0)),
        );
        out.push(check(
            be,
            "linear_fwd",
            &format!("[{n}, {fin}] x [{fout}, {fin}]"),
            &be.linear_fwd(&up(&xl)?, &up(&wl)?, Some(&up(&bl)?))?,
            &oracle.linear_fwd(&xl, &wl, Some(&bl))?,
        )?);
        let dyl = bf16_exact(rng.tensor(&[n, fout], -1.0, 1.0));
        out.push(check(
            be,
            "linear_bwd_data",
            &format!("[{n}, {fout}] x [{fout}, {fin}]"),
            &be.linear_bwd_data(&up(&dyl)?, &up(&wl)?)?,
            &oracle.linear_bwd_data(&dyl, &wl)?,
        )?);
    }
    let a = bf16_exact(rng.tensor(&[2, 6, 7, 9], 0.0, 2.0));
    let g = bf16_exact(rng.tensor(&[2, 6, 7, 9], -1.0, 1.0));
    let shape = "[2, 6, 7, 9]";
    let alpha = oracle.grad_pool(&g)?;
    out.push(check(
        be,
        "grad_pool",
        shape,
        &be.grad_pool(&up(&g)?)?,
        &alpha,
    )?);
    out.push(check(
        be,
        "weighted_sum_relu",
        shape,
        &be.weighted_sum_relu(&up(&a)?, &up(&alpha)?)?,
        &oracle.weighted_sum_relu(&a, &alpha)?,
    )?);
    for rule in [
        WeightRule::GradCamPlusPlus,
        WeightRule::XGradCam,
        WeightRule::AffineDrop,
    ] {
        out.push(check(
            be,
            &format!("cam_weights {rule:?}"),
            shape,
            &be.cam_weights(rule, &up(&a)?, &up(&g)?)?,
            &oracle.cam_weights(rule, &a, &g)?,
        )?);
    }
    for k_sigma in [crate::cam::FEM_K, 0.5] {
        out.push(check(
            be,
            &format!("fem_weights k={k_sigma}"),
            shape,
            &be.fem_weights(&up(&a)?, k_sigma)?,
            &oracle.fem_weights(&a, k_sigma)?,
        )?);
    }
    // Negative activations too (a BatchNorm's output): there the element-wise rules differ.
    let signed = bf16_exact(rng.tensor(&[2, 6, 7, 9], -1.0, 2.0));
    for rule in [
        ElementRule::HiResCam,
        ElementRule::LayerCam,
        ElementRule::GradCamElementWise,
    ] {
        out.push(check(
            be,
            &format!("elementwise_cam_relu {rule:?}"),
            shape,
            &be.elementwise_cam_relu(rule, &up(&signed)?, &up(&g)?)?,
            &oracle.elementwise_cam_relu(rule, &signed, &g)?,
        )?);
    }
    let xi = bf16_exact(rng.tensor(&[2, 3, 21, 19], -1.0, 1.0));
    out.push(check(
        be,
        "score_cam_inputs",
        "[2, 3, 21, 19], channels 1..4",
        &be.score_cam_inputs(&up(&xi)?, &up(&a)?, (1, 4))?,
        &oracle.score_cam_inputs(&xi, &a, (1, 4))?,
    )?);
    out.push(check(
        be,
        "ablate_channels",
        "[2, 6, 7, 9], channels 2..5",
        &be.ablate_channels(&up(&a)?, (2, 5))?,
        &oracle.ablate_channels(&a, (2, 5))?,
    )?);
    let copies = [(false, 0.9), (true, 1.1)];
    out.push(check(
        be,
        "aug_copies",
        "[2, 3, 21, 19], mirrored × 1.1 and as is × 0.9",
        &be.aug_copies(&up(&xi)?, &copies)?,
        &oracle.aug_copies(&xi, &copies)?,
    )?);
    // FullGrad: a bias term resized up, then the input term added to a total of g's size.
    let bias = [0.5, -1.0, 2.0, 0.0, 1.5, -0.25];
    out.push(check(
        be,
        "full_grad_add",
        "[2, 6, 7, 9] bias term, resized to 15×20",
        &be.full_grad_add(None, &up(&g)?, FullGradBy::Bias(&bias), (15, 20))?,
        &oracle.full_grad_add(None, &g, FullGradBy::Bias(&bias), (15, 20))?,
    )?);
    let start = be.full_grad_add(None, &up(&g)?, FullGradBy::Bias(&bias), (7, 9))?;
    let want = oracle.full_grad_add(None, &g, FullGradBy::Bias(&bias), (7, 9))?;
    out.push(check(
        be,
        "full_grad_add",
        "[2, 6, 7, 9] input term, added to a bias term",
        &be.full_grad_add(
            Some(start),
            &up(&g)?,
            FullGradBy::Input(&up(&signed)?),
            (7, 9),
        )?,
        &oracle.full_grad_add(Some(want), &g, FullGradBy::Input(&signed), (7, 9))?,
    )?);
    Ok(out)
}

/// The checks as a table (columns as wide as their longest entry).
pub fn table(checks: &[Check]) -> String {
    let w_op = checks
        .iter()
        .map(|c| c.op.chars().count())
        .max()
        .unwrap_or(2)
        .max(2);
    let w_shape = checks
        .iter()
        .map(|c| c.shape.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut s = format!(
        "{:<w_op$}  {:<w_shape$} {:>11} {:>11}  result\n",
        "op", "shape", "max err", "tolerance"
    );
    for c in checks {
        let verdict = if c.passed() { "ok" } else { "MISMATCH" };
        s += &format!(
            "{:<w_op$}  {:<w_shape$} {:>11.3e} {:>11.3e}  {verdict}\n",
            c.op, c.shape, c.max_err, c.tolerance
        );
    }
    s
}

/// What only the GPU code has: the tensor-core fragment layouts (kernels/mma.cuh), TF32, BF16
/// and F16, each mma instruction against its shuffle twin (identical on the emulator, where the
/// twin stands in) and the twin against a CPU product of the rounded inputs; then the 16-bit
/// storage conversions against the `half` crate.
pub fn device_checks<L: super::gpu::Launcher>(
    be: &super::gpu::GpuBackend<L>,
) -> Result<Vec<Check>> {
    let mut out = mma_checks(be)?;
    out.extend(ldmatrix_checks(be)?);
    // Only when asked for (GRADCAM_CONV_WGMMA=1): a fault in an instruction no default path
    // uses must not take the other rows down with the context.
    if be.uses_wgmma() {
        out.extend(wgmma_checks(be)?);
    }
    out.extend(cast_checks(be)?);
    out.extend(batch_io_checks(be)?);
    Ok(out)
}

/// A batch of images of four sizes, 1.6 MB in all (so a GPU's copies go through its
/// page-locked staging memory, see `PINNED_MIN`), up, preprocessed and overlaid on the
/// device, one launch per stage, against the CPU's preprocessing and overlays: the
/// normalised input within the selftest tolerance, the overlays' bytes within 4 (the colormap
/// lookup's truncation, as tests/parity.rs), in pytorch-grad-cam's default style and another.
fn batch_io_checks<B: Backend>(be: &B) -> Result<Vec<Check>> {
    use crate::cam::{overlay_with, upsample_normalised, Colormap, OverlayStyle};
    use crate::image::RgbImage;
    let sizes = [(480u32, 640u32), (333, 517), (224, 224), (17, 1000)];
    let imgs: Vec<RgbImage> = sizes
        .iter()
        .enumerate()
        .map(|(i, &(h, w))| {
            RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 7 + i as u32) as u8, (y * 3) as u8, ((x ^ y) * 5) as u8])
            })
        })
        .collect();
    let refs: Vec<&RgbImage> = imgs.iter().collect();
    let staged = be.upload_images(&refs)?;
    let hw = (61, 47);
    // ImageNet's normalisation, and a model's own (metadata `mean`/`std`).
    use crate::image::Normalization;
    let own = Normalization::new([0.5, 0.4, 0.3], [0.2, 0.25, 0.5])?;
    let mut out = Vec::new();
    for (norm, what) in [(Normalization::IMAGENET, ""), (own, ", own mean/std")] {
        let x = be.preprocess(&staged, hw, &norm)?;
        let want = crate::image::preprocess_with(&refs, hw, &norm);
        let shape = format!("4 sizes, 1.6 MB, to 61x47{what}");
        out.push(check(be, "preprocess", &shape, &x, &want)?);
    }
    let mut rng = Rng::new(31);
    let maps = rng.tensor(&[imgs.len(), 5, 7], 0.0, 2.0);
    let viridis = Colormap::by_name("viridis")?;
    for (style, what) in [
        (OverlayStyle::default(), ""),
        (OverlayStyle::new(viridis, 0.3)?, ", viridis 0.3"),
    ] {
        let got = be.overlays(&staged, &maps, &style)?.wait()?;
        let mut worst = 0u8;
        for (i, img) in imgs.iter().enumerate() {
            let m = upsample_normalised(
                &maps.data()[i * 35..(i + 1) * 35],
                (5, 7),
                (img.height() as usize, img.width() as usize),
            );
            let want = overlay_with(img, &m, &style)?;
            worst = match got.get(i) {
                Some(g) if g.dimensions() == want.dimensions() => g
                    .as_raw()
                    .iter()
                    .zip(want.as_raw())
                    .map(|(a, b)| a.abs_diff(*b))
                    .fold(worst, u8::max),
                _ => u8::MAX,
            };
        }
        out.push(Check {
            op: "overlays".into(),
            shape: format!("4 sizes, 1.6 MB, bytes{what}"),
            max_err: worst as f32,
            tolerance: 4.0,
        });
    }
    Ok(out)
}

/// The matrix loads of the 16-bit cp.async rings (`ldmatrix...x4.trans` for the NCHW one,
/// `ldmatrix...x4` for the channels-last convs): each instruction against its shuffle twin,
/// and the twin against the layout the PTX ISA gives (lane (g, t) gets elements (2t, g) and
/// (2t + 1, g) of each matrix transposed, (g, 2t) and (g, 2t + 1) plain), on random bits; the
/// error is the number of registers that differ.
fn ldmatrix_checks<L: super::gpu::Launcher>(be: &super::gpu::GpuBackend<L>) -> Result<Vec<Check>> {
    let mut rng = Rng::new(91);
    let rows: Vec<u32> = (0..128).map(|_| rng.next_u64() as u32).collect();
    let elem = |r: usize, c: usize| (rows[4 * r + c / 2] >> (16 * (c % 2))) & 0xffff;
    let differ = |x: &[u32], y: &[u32]| x.iter().zip(y).filter(|(p, q)| p != q).count() as f32;
    let mut out = Vec::new();
    for trans in [true, false] {
        let (ins, twin) = be.ldmatrix_check(&rows, trans)?;
        let want: Vec<u32> = (0..32)
            .flat_map(|lane| {
                let (g, t) = (lane / 4, lane % 4);
                (0..4).map(move |q| {
                    if trans {
                        elem(8 * q + 2 * t, g) | (elem(8 * q + 2 * t + 1, g) << 16)
                    } else {
                        elem(8 * q + g, 2 * t) | (elem(8 * q + g, 2 * t + 1) << 16)
                    }
                })
            })
            .collect();
        let name = if trans {
            "ldmatrix x4 trans"
        } else {
            "ldmatrix x4"
        };
        out.push(Check {
            op: format!("{name}: instruction"),
            shape: "vs its shuffle twin".into(),
            max_err: differ(&ins, &twin),
            tolerance: 0.0,
        });
        out.push(Check {
            op: format!("{name}: shuffle twin"),
            shape: "vs the PTX ISA layout".into(),
            max_err: differ(&twin, &want),
            tolerance: 0.0,
        });
    }
    Ok(out)
}

/// The largest |x - y| (infinite where either is NaN).
fn max_abs_diff(x: &[f32], y: &[f32]) -> f32 {
    x.iter()
        .zip(y)
        .map(|(p, q)| (p - q).abs())
        .fold(
            0f32,
            |m, v| if v.is_nan() { f32::INFINITY } else { m.max(v) },
        )
}

fn mma_checks<L: super::gpu::Launcher>(be: &super::gpu::GpuBackend<L>) -> Result<Vec<Check>> {
    let mut rng = Rng::new(77);
    // f32 → TF32 (nearest, ties away), → BF16 and → F16 (nearest even), as the kernels round.
    let tf32 = |v: f32| f32::from_bits((v.to_bits() + 0x1000) & 0xffff_e000);
    let bf16 = |v: f32| half::bf16::from_f32(v).to_f32();
    let f16 = |v: f32| half::f16::from_f32(v).to_f32();
    let err = max_abs_diff;
    let mut out = Vec::new();
    for (kind, depth) in [("tf32", 8), ("bf16", 16), ("f16", 16)] {
        let round = |v: f32| match kind {
            "tf32" => tf32(v),
            "bf16" => bf16(v),
            _ => f16(v),
        };
        let a = rng.tensor(&[16, depth], -2.0, 2.0);
        let b = rng.tensor(&[depth, 8], -2.0, 2.0);
        let (d_mma, d_twin) = be.mma_check(kind, a.data(), b.data())?;
        let mut want = vec![0f32; 16 * 8];
        for i in 0..16 {
            for j in 0..8 {
                want[i * 8 + j] = (0..depth)
                    .map(|k| round(a.data()[i * depth + k]) * round(b.data()[k * 8 + j]))
                    .sum();
            }
        }
        // Products of rounded values are exact in f32; only the order of the additions may
        // differ.
        let tolerance = 1e-5;
        let name = format!("mma {kind} m16n8k{depth}");
        out.push(Check {
            op: format!("{name}: instruction"),
            shape: "vs its shuffle twin".into(),
            max_err: err(&d_mma, &d_twin),
            tolerance,
        });
        out.push(Check {
            op: format!("{name}: shuffle twin"),
            shape: "vs CPU on rounded inputs".into(),
            max_err: err(&d_twin, &want),
            tolerance,
        });
    }
    Ok(out)
}

/// Hopper's warpgroup MMA (kernels/wgmma.cuh) where the device has it: A [64, kd] · B [128,
/// kd]ᵀ over one whole slice (4 k-steps, so the descriptors' advance along the swizzled rows is
/// covered) by the instruction, by its twin, and on the CPU from the rounded inputs. Products
/// of rounded values are exact in f32; sums of 64 (TF32: 32) of them, each below 4, may differ
/// by the order of the additions: 1e-4 between the twin and the CPU (both IEEE f32 sums). The
/// tensor cores' own sums are not IEEE ones (they align a k-step's products to the largest and
/// round once), so the instruction gets 1e-3 against its twin: still far below what a misread
/// layout, descriptor or swizzle gives (errors of the order of the values, 1 and more).
fn wgmma_checks<L: super::gpu::Launcher>(be: &super::gpu::GpuBackend<L>) -> Result<Vec<Check>> {
    let mut rng = Rng::new(78);
    let err = max_abs_diff;
    let round = |kind: &str, v: f32| match kind {
        "tf32" => f32::from_bits((v.to_bits() + 0x1000) & 0xffff_e000),
        "bf16" => half::bf16::from_f32(v).to_f32(),
        _ => half::f16::from_f32(v).to_f32(),
    };
    let mut out = Vec::new();
    for kind in ["tf32", "bf16", "f16"] {
        let kd = if kind == "tf32" { 32 } else { 64 };
        let a = rng.tensor(&[64, kd], -2.0, 2.0);
        let b = rng.tensor(&[128, kd], -2.0, 2.0);
        let (ins, twin) = be.wgmma_check(kind, a.data(), b.data())?;
        let mut want = vec![0f32; 64 * 128];
        for i in 0..64 {
            for j in 0..128 {
                let (ra, rb) = (&a.data()[i * kd..][..kd], &b.data()[j * kd..][..kd]);
                want[i * 128 + j] = ra
                    .iter()
                    .zip(rb)
                    .map(|(&p, &q)| round(kind, p) * round(kind, q))
                    .sum();
            }
        }
        let k = if kind == "tf32" { 8 } else { 16 };
        let name = format!("wgmma {kind} m64n128k{k}");
        out.push(Check {
            op: format!("{name}: instruction"),
            shape: "vs its twin, 4 k-steps".into(),
            max_err: err(&ins, &twin),
            tolerance: 1e-3,
        });
        out.push(Check {
            op: format!("{name}: twin"),
            shape: "vs CPU on rounded inputs".into(),
            max_err: err(&twin, &want),
            tolerance: 1e-4,
        });
    }
    Ok(out)
}

/// f32 → bf16 / f16 → f32 on the device (`cast_*` kernels; the f16 ones are cvt instructions on
/// a GPU and software twins on the emulator) against the `half` crate, bit for bit: the edges of
/// both formats (overflow to inf, the subnormals, ties at every boundary, NaN) and 20 000
/// random bit patterns, half of them inside f16's exponent range. The error is the number of
/// values that differ (tolerance 0).
fn cast_checks<L: super::gpu::Launcher>(be: &super::gpu::GpuBackend<L>) -> Result<Vec<Check>> {
    use super::gpu::DType;
    let mut v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.5,
        65504.0,
        65519.996,
        65520.0,
        -65520.0,
        1e9,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        6.103_515_6e-5, // f16's smallest normal
        6.097_555e-5,   // its largest subnormal
        5.960_464_5e-8, // its smallest subnormal
        2.980_232_2e-8, // half of that: a tie, to zero
        4.470_348_4e-8, // 1.5 · 2^-25: rounds up
        1e-10,
        f32::MIN_POSITIVE,
        3.4e38,
    ];
    // Ties just above and below every f16 binade boundary, and odd/even tie cases.
    for e in -24..16 {
        let x = 2f32.powi(e);
        v.extend([
            x,
            x * (1.0 + 2f32.powi(-11)),
            x * (1.0 + 3.0 * 2f32.powi(-11)),
            -x * 0.999_999,
        ]);
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u32
    };
    for i in 0..20_000 {
        let bits = next();
        v.push(if i % 2 == 0 {
            f32::from_bits(bits)
        } else {
            // Exponents 2^-26 .. 2^17, either sign: f16's range and a little beyond.
            f32::from_bits((bits & 0x807f_ffff) | ((101 + (bits >> 8) % 44) << 23))
        });
    }
    let mut out = Vec::new();
    for to in [DType::Bf16, DType::F16] {
        let (bytes, back) = be.cast_round_trip(&v, to)?;
        let want = to.encode(&v);
        let wrong = (0..v.len())
            .filter(|&i| {
                let (g, w) = (&bytes[2 * i..2 * i + 2], &want[2 * i..2 * i + 2]);
                let exact = back[i].to_bits() == to.decode(g)[0].to_bits() || back[i].is_nan();
                // NaN payloads may differ; NaN must stay NaN.
                let same = g == w || (v[i].is_nan() && to.decode(g)[0].is_nan());
                !(same && exact && back[i].is_nan() == v[i].is_nan())
            })
            .count();
        out.push(Check {
            op: format!("cast f32 → {} → f32", to.name()),
            shape: format!("{} values vs the half crate", v.len()),
            max_err: wrong as f32,
            tolerance: 0.0,
        });
    }
    Ok(out)
}
