//! kernels/*.cu run through the CPU emulator against the CPU backend's oracle, on odd shapes,
//! with outputs poisoned with NaN before each launch (a skipped element cannot pass).
//! Tolerance: max abs diff ≤ 1e-5 · (1 + max |reference|) (f32 sums in another order).

use gradcam::backend::cpu::naive;
use gradcam::backend::emu::{self, Arg};
use gradcam::model::synth::Rng;
use gradcam::Tensor;

fn close(name: &str, got: &[f32], want: &Tensor) {
    let scale = 1.0 + want.data().iter().fold(0f32, |m, v| m.max(v.abs()));
    let t = Tensor::new(want.shape(), got.to_vec());
    let err = t.max_abs_diff(want);
    assert!(err <= 1e-5 * scale, "{name}: max abs diff {err}");
}

#[test]
fn every_kernel_file_is_compiled_for_the_emulator() {
    let names = emu::kernel_names();
    assert!(
        names.contains(&"grad_pool_f32") && names.contains(&"weighted_sum_relu_f32"),
        "{names:?}"
    );
}

#[test]
fn cam_kernels_match_the_cpu_oracle() {
    let mut rng = Rng::new(11);
    // (N, K, H, W): tiny planes (fewer pixels than threads), odd sizes, planes > block size.
    for (n, k, h, w) in [
        (1, 1, 1, 1),
        (2, 3, 7, 5),
        (1, 40, 14, 14),
        (3, 5, 23, 29),
        (2, 2, 1, 300),
    ] {
        let g = rng.tensor(&[n, k, h, w], -1.0, 1.0);
        let want = naive::grad_pool(&g);
        let mut alpha = vec![f32::NAN; n * k];
        unsafe {
            emu::launch(
                "grad_pool_f32",
                [(n * k) as u32, 1, 1],
                [256, 1, 1],
                0,
                &mut [
                    Arg::In(g.data()),
                    Arg::Out(&mut alpha),
                    Arg::I32((h * w) as i32),
                ],
            )
            .unwrap();
        }
        close(&format!("grad_pool_f32 {n}x{k}x{h}x{w}"), &alpha, &want);

        let a = rng.tensor(&[n, k, h, w], -1.0, 1.0);
        let want = naive::weighted_sum_relu(&a, &want);
        let mut map = vec![f32::NAN; n * h * w];
        let blocks = (h * w).div_ceil(256) as u32;
        unsafe {
            emu::launch(
                "weighted_sum_relu_f32",
                [blocks, n as u32, 1],
                [256, 1, 1],
                0,
                &mut [
                    Arg::In(a.data()),
                    Arg::In(&alpha),
                    Arg::Out(&mut map),
                    Arg::I32(k as i32),
                    Arg::I32((h * w) as i32),
                ],
            )
            .unwrap();
        }
        close(
            &format!("weighted_sum_relu_f32 {n}x{k}x{h}x{w}"),
            &map,
            &want,
        );
    }
}

#[test]
fn bad_launches_are_errors() {
    let mut out = vec![0f32; 1];
    let e = unsafe {
        emu::launch(
            "no_such_kernel",
            [1, 1, 1],
            [32, 1, 1],
            0,
            &mut [Arg::Out(&mut out)],
        )
    };
    assert!(e.unwrap_err().to_string().contains("grad_pool_f32"));
    let e = unsafe {
        emu::launch(
            "grad_pool_f32",
            [1, 1, 1],
            [2048, 1, 1],
            0,
            &mut [Arg::In(&[1.0]), Arg::Out(&mut out), Arg::I32(1)],
        )
    };
    assert!(e.unwrap_err().to_string().contains("geometry"));
    // CUDA refuses grids over 65535 along y or z; so must the emulator.
    let e = unsafe {
        emu::launch(
            "grad_pool_f32",
            [1, 65536, 1],
            [32, 1, 1],
            0,
            &mut [Arg::In(&[1.0]), Arg::Out(&mut out), Arg::I32(1)],
        )
    };
    assert!(e.unwrap_err().to_string().contains("geometry"));
}

/// 1-D launch covering `total` elements with 256-thread blocks, at most 64 blocks so the
/// grid-stride loops are exercised too.
fn run1d(name: &str, total: usize, args: &mut [Arg]) {
    let blocks = total.div_ceil(256).clamp(1, 64) as u32;
    unsafe { emu::launch(name, [blocks, 1, 1], [256, 1, 1], 0, args) }.unwrap();
}

#[test]
fn pointwise_kernels_match_the_cpu_oracle() {
    let mut rng = Rng::new(12);
    for shape in [[1, 1, 1, 1], [2, 3, 5, 7], [3, 16, 37, 41]] {
        let x = rng.tensor(&shape, -1.0, 1.0);
        let n = x.len() as i32;
        let mut y = x.data().to_vec();
        run1d(
            "relu_fwd_f32",
            x.len(),
            &mut [Arg::Out(&mut y), Arg::I32(n)],
        );
        let want = naive::relu_fwd(&x);
        close("relu_fwd_f32", &y, &want);
        let dy = rng.tensor(&shape, -1.0, 1.0);
        for guided in [false, true] {
            let mut g = dy.data().to_vec();
            run1d(
                "relu_bwd_f32",
                x.len(),
                &mut [
                    Arg::In(want.data()),
                    Arg::Out(&mut g),
                    Arg::I32(n),
                    Arg::I32(guided as i32),
                ],
            );
            close("relu_bwd_f32", &g, &naive::relu_bwd(&want, &dy, guided));
        }
        let mut a = x.data().to_vec();
        run1d(
            "add_f32",
            x.len(),
            &mut [Arg::Out(&mut a), Arg::In(dy.data()), Arg::I32(n)],
        );
        close("add_f32", &a, &naive::add(&x, &dy));
        let c = shape[1];
        let (s, t): (Vec<f32>, Vec<f32>) = (0..c).map(|i| (0.5 + i as f32, -(i as f32))).unzip();
        let mut v = x.data().to_vec();
        let hw = (shape[2] * shape[3]) as i32;
        run1d(
            "channel_affine_f32",
            x.len(),
            &mut [
                Arg::Out(&mut v),
                Arg::In(&s),
                Arg::In(&t),
                Arg::I32(c as i32),
                Arg::I32(hw),
                Arg::I32(n),
            ],
        );
        close("channel_affine_f32", &v, &naive::channel_affine(&x, &s, &t));
    }
}

/// `count_differing_u16` (tuning's check that a candidate gives the first one's bits) counts
/// the differing 16-bit words, as `(a != b).sum()` over their bits: none, one at either end,
/// every one, and signed zeros and NaNs (bits, not values), over more words than the grid's
/// threads.
#[test]
fn count_differing_matches_the_cpu_count() {
    let mut rng = Rng::new(13);
    let a: Vec<u8> = (0..2 * 40_001).map(|_| rng.next_u64() as u8).collect();
    let words = a.len() / 2;
    let mut flipped_ends = a.clone();
    flipped_ends[0] ^= 1;
    flipped_ends[a.len() - 1] ^= 0x80;
    let inverted: Vec<u8> = a.iter().map(|v| !v).collect();
    let mut zeros = vec![0u8; 8];
    zeros[1] = 0x80; // -0.0 as bf16 / f16 beside +0.0
    for (name, x, y, want) in [
        ("same", &a, &a, 0),
        ("ends", &a, &flipped_ends, 2),
        ("all", &a, &inverted, words),
        ("signed zero", &vec![0u8; 8], &zeros, 1),
    ] {
        let n = x.len() / 2;
        let mut count = 0i32.to_le_bytes();
        run1d(
            "count_differing_u16",
            n,
            &mut [
                Arg::Bytes(x),
                Arg::Bytes(y),
                Arg::I32(n as i32),
                Arg::BytesOut(&mut count),
            ],
        );
        let cpu = (x.chunks_exact(2).zip(y.chunks_exact(2)))
            .filter(|(p, q)| p != q)
            .count();
        assert_eq!(cpu, want, "{name}: the CPU count");
        assert_eq!(i32::from_le_bytes(count) as usize, want, "{name}");
    }
}

#[test]
fn pool_kernels_match_the_cpu_oracle() {
    use gradcam::backend::Pool2dParams;
    let mut rng = Rng::new(13);
    for (shape, p) in [
        ([2, 3, 9, 7], Pool2dParams::new(2, 2, 0)),
        ([1, 4, 13, 12], Pool2dParams::new(3, 2, 1)),
        ([2, 2, 56, 56], Pool2dParams::new(3, 2, 1)),
    ] {
        let mut x = rng.tensor(&shape, -1.0, 1.0);
        x.data_mut().iter_mut().step_by(3).for_each(|v| *v = 0.0); // ties, as after a ReLU
        let (planes, h, w) = (shape[0] * shape[1], shape[2], shape[3]);
        let (oh, ow) = p.out_hw((h, w)).unwrap();
        let geom = |a: &mut Vec<Arg>| {
            for v in [
                planes,
                h,
                w,
                oh,
                ow,
                p.kernel.0,
                p.kernel.1,
                p.stride.0,
                p.stride.1,
                p.padding.0,
                p.padding.1,
            ] {
                a.push(Arg::I32(v as i32));
            }
        };
        let mut y = vec![f32::NAN; planes * oh * ow];
        let mut args = vec![Arg::In(x.data()), Arg::Out(&mut y)];
        geom(&mut args);
        run1d("max_pool2d_fwd_f32", planes * oh * ow, &mut args);
        let want = naive::max_pool2d_fwd(&x, &p);
        close("max_pool2d_fwd_f32", &y, &want);
        let dy = rng.tensor(want.shape(), -1.0, 1.0);
        let mut dx = vec![0f32; x.len()];
        let mut args = vec![Arg::In(x.data()), Arg::In(dy.data()), Arg::Out(&mut dx)];
        geom(&mut args);
        run1d("max_pool2d_bwd_f32", planes * oh * ow, &mut args);
        close(
            "max_pool2d_bwd_f32",
            &dx,
            &naive::max_pool2d_bwd(&x, &dy, &p),
        );
        // The forward-mode twin: v at each window's first maximum of x.
        let v = rng.tensor(&shape, -1.0, 1.0);
        let mut t = vec![f32::NAN; planes * oh * ow];
        let mut args = vec![Arg::In(x.data()), Arg::In(v.data()), Arg::Out(&mut t)];
        geom(&mut args);
        run1d("max_pool2d_tangent_f32", planes * oh * ow, &mut args);
        let want = naive::max_pool2d_tangent(&x, &v, &p);
        assert_eq!(
            t,
            want.data(),
            "max_pool2d_tangent_f32 picks other elements"
        );
        // The CPU op itself: the adjoint of the backward pass, <tangent(v), dy> = <v, bwd(dy)>
        // (the same picks, so equal up to summation order: 1e-4 relative).
        let lhs: f64 = (want.data().iter().zip(dy.data()))
            .map(|(a, b)| (a * b) as f64)
            .sum();
        let bwd = naive::max_pool2d_bwd(&x, &dy, &p);
        let rhs: f64 = (v.data().iter().zip(bwd.data()))
            .map(|(a, b)| (a * b) as f64)
            .sum();
        assert!(
            (lhs - rhs).abs() < 1e-4 * (1.0 + rhs.abs()),
            "max_pool2d_tangent is not the backward pass's adjoint: {lhs} vs {rhs}"
        );
    }
    for (shape, out) in [
        ([2, 3, 14, 14], (7, 7)),
        ([1, 2, 13, 9], (7, 7)),
        ([2, 4, 5, 7], (1, 1)),
        ([1, 1, 3, 2], (7, 7)),
    ] {
        let x = rng.tensor(&shape, -1.0, 1.0);
        let (planes, h, w) = (shape[0] * shape[1], shape[2], shape[3]);
        let mut y = vec![f32::NAN; planes * out.0 * out.1];
        let dims = [planes, h, w, out.0, out.1].map(|v| Arg::I32(v as i32));
        let mut args = vec![Arg::In(x.data()), Arg::Out(&mut y)];
        args.extend(dims);
        run1d(
            "adaptive_avg_pool2d_fwd_f32",
            planes * out.0 * out.1,
            &mut args,
        );
        let want = naive::adaptive_avg_pool2d_fwd(&x, out);
        close("adaptive_avg_pool2d_fwd_f32", &y, &want);
        let dy = rng.tensor(want.shape(), -1.0, 1.0);
        let mut dx = vec![f32::NAN; x.len()];
        let mut args = vec![Arg::In(dy.data()), Arg::Out(&mut dx)];
        args.extend([planes, h, w, out.0, out.1].map(|v| Arg::I32(v as i32)));
        run1d("adaptive_avg_pool2d_bwd_f32", x.len(), &mut args);
        close(
            "adaptive_avg_pool2d_bwd_f32",
            &dx,
            &naive::adaptive_avg_pool2d_bwd(&dy, (h, w)),
        );
    }
}

#[test]
fn conv_kernels_match_the_cpu_oracle() {
    use gradcam::backend::Conv2dParams;
    let mut rng = Rng::new(14);
    let p = |stride, pad, dil, groups| Conv2dParams {
        stride: (stride, stride),
        padding: (pad, pad),
        dilation: (dil, dil),
        groups,
    };
    // (n, c, h, w, k, r, s, params): stem-like, 3x3, 1x1 (direct), strided downsample, groups,
    // dilation, rectangular stride, and a size spanning several 64-wide tiles.
    let cases = [
        (2, 3, 11, 9, 8, 7, 7, p(2, 3, 1, 1)),
        (2, 5, 9, 11, 6, 3, 3, p(1, 1, 1, 1)),
        (1, 16, 8, 8, 70, 1, 1, p(1, 0, 1, 1)),
        (2, 16, 9, 7, 32, 1, 1, p(2, 0, 1, 1)),
        (2, 8, 10, 9, 8, 3, 3, p(2, 1, 1, 4)),
        (1, 4, 12, 12, 4, 3, 3, p(1, 2, 2, 4)),
        (
            2,
            3,
            5,
            6,
            2,
            3,
            2,
            Conv2dParams {
                stride: (1, 2),
                padding: (0, 1),
                dilation: (1, 1),
                groups: 1,
            },
        ),
        (1, 20, 17, 13, 24, 3, 3, p(1, 1, 1, 1)),
    ];
    for (i, (n, c, h, w, k, r, s, cp)) in cases.into_iter().enumerate() {
        let x = rng.tensor(&[n, c, h, w], -1.0, 1.0);
        let wt = rng.tensor(&[k, c / cp.groups, r, s], -1.0, 1.0);
        let b = rng.tensor(&[k], -1.0, 1.0);
        let (oh, ow) = cp.out_hw((h, w), (r, s)).unwrap();
        let dims = [
            n,
            c,
            h,
            w,
            k,
            r,
            s,
            oh,
            ow,
            cp.stride.0,
            cp.stride.1,
            cp.padding.0,
            cp.padding.1,
            cp.dilation.0,
            cp.dilation.1,
            cp.groups,
        ];
        let grid = |rows: usize, cols: usize| {
            [
                cols.div_ceil(64) as u32,
                rows.div_ceil(64) as u32,
                cp.groups as u32,
            ]
        };
        let res = rng.tensor(&[n, k, oh, ow], -1.0, 1.0);
        for (bias, residual, relu) in [
            (false, false, false),
            (true, false, true),
            (true, true, true),
        ] {
            let mut y = vec![f32::NAN; n * k * oh * ow];
            let mut args = vec![
                Arg::In(x.data()),
                Arg::In(wt.data()),
                if bias { Arg::In(b.data()) } else { Arg::Null },
                if residual {
                    Arg::In(res.data())
                } else {
                    Arg::Null
                },
                Arg::Out(&mut y),
            ];
            args.extend(dims.map(|v| Arg::I32(v as i32)));
            args.push(Arg::I32(relu as i32));
            unsafe {
                emu::launch(
                    "conv2d_fwd_f32",
                    grid(k / cp.groups, n * oh * ow),
                    [256, 1, 1],
                    0,
                    &mut args,
                )
            }
            .unwrap();
            let mut want = naive::conv2d_fwd(&x, &wt, bias.then_some(&b), &cp);
            if residual {
                want = naive::add(&want, &res);
            }
            if relu {
                want = naive::relu_fwd(&want);
            }
            close(&format!("conv2d_fwd_f32 case {i}"), &y, &want);
        }
        let dy = rng.tensor(&[n, k, oh, ow], -1.0, 1.0);
        let mut dx = vec![f32::NAN; n * c * h * w];
        let mut args = vec![Arg::In(dy.data()), Arg::In(wt.data()), Arg::Out(&mut dx)];
        args.extend(dims.map(|v| Arg::I32(v as i32)));
        unsafe {
            emu::launch(
                "conv2d_bwd_data_f32",
                grid(c / cp.groups, n * h * w),
                [256, 1, 1],
                0,
                &mut args,
            )
        }
        .unwrap();
        close(
            &format!("conv2d_bwd_data_f32 case {i}"),
            &dx,
            &naive::conv2d_bwd_data(&dy, &wt, (h, w), &cp),
        );
    }
}

#[test]
fn linear_and_preprocess_kernels_match_the_cpu_oracle() {
    let mut rng = Rng::new(15);
    for (n, fin, fout) in [(1, 1, 1), (3, 37, 11), (8, 200, 70)] {
        let x = rng.tensor(&[n, fin], -1.0, 1.0);
        let w = rng.tensor(&[fout, fin], -1.0, 1.0);
        let b = rng.tensor(&[fout], -1.0, 1.0);
        let dy = rng.tensor(&[n, fout], -1.0, 1.0);
        let want_y = naive::linear_fwd(&x, &w, Some(&b));
        let want_dx = naive::linear_bwd_data(&dy, &w);
        // One pass (no workspace), then the depth cut in 16-deep chunks of about a third,
        // partial sums in a workspace added in order by linear_sum_f32.
        for thirds in [false, true] {
            let dims = [n, fin, fout];
            let ins = [x.data(), w.data(), b.data()];
            let y = run_linear(
                "linear_fwd_f32",
                &ins,
                Some(b.data()),
                dims,
                fout,
                fin,
                thirds,
            );
            close(&format!("linear_fwd_f32 thirds {thirds}"), &y, &want_y);
            let ins = [dy.data(), w.data()];
            let dx = run_linear("linear_bwd_data_f32", &ins, None, dims, fin, fout, thirds);
            close(
                &format!("linear_bwd_data_f32 thirds {thirds}"),
                &dx,
                &want_dx,
            );
        }
    }
    // Same arithmetic as gradcam::image::preprocess (and so cv2.resize on float data), a
    // batch of three sizes in one launch.
    let imgs: Vec<gradcam::image::RgbImage> = [(75u32, 97u32), (50, 40), (300, 200)]
        .iter()
        .map(|&(h, w)| {
            gradcam::image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([
                    (x * 7 % 256) as u8,
                    (y * 5 % 256) as u8,
                    ((x + y) % 256) as u8,
                ])
            })
        })
        .collect();
    let (pixels, table) = packed(&imgs);
    let refs: Vec<&gradcam::image::RgbImage> = imgs.iter().collect();
    // ImageNet's normalisation, and a model's own.
    use gradcam::image::Normalization;
    let own = Normalization::new([0.5, 0.4, 0.3], [0.2, 0.25, 0.5]).unwrap();
    for ((oh, ow), norm) in [
        ((224usize, 224usize), Normalization::IMAGENET),
        ((50, 40), own),
        ((64, 48), Normalization::IMAGENET),
    ] {
        let want = gradcam::image::preprocess_with(&refs, (oh, ow), &norm);
        let mut out = vec![f32::NAN; imgs.len() * 3 * oh * ow];
        let [m0, m1, m2] = norm.mean.map(Arg::F32);
        let [s0, s1, s2] = norm.std.map(Arg::F32);
        let mut args = [
            Arg::Bytes(&pixels),
            Arg::Bytes(table_bytes(&table)),
            Arg::Out(&mut out),
            Arg::I32(oh as i32),
            Arg::I32(ow as i32),
            m0,
            m1,
            m2,
            s0,
            s1,
            s2,
        ];
        unsafe {
            emu::launch(
                "preprocess_rgb8_f32",
                [(oh * ow).div_ceil(256) as u32, imgs.len() as u32, 1],
                [256, 1, 1],
                0,
                &mut args,
            )
        }
        .unwrap();
        close("preprocess_rgb8_f32", &out, &want);
    }
}

/// Images packed back to back as they go up, and their `ImageDesc` table (kernels/common.cuh):
/// per image a u64 byte offset, then i32 height and i32 width in one u64 (little-endian).
fn packed(imgs: &[gradcam::image::RgbImage]) -> (Vec<u8>, Vec<u64>) {
    let mut pixels = Vec::new();
    let mut table = Vec::new();
    for im in imgs {
        table.push(pixels.len() as u64);
        table.push(im.height() as u64 | (im.width() as u64) << 32);
        pixels.extend_from_slice(im.as_raw());
    }
    (pixels, table)
}

fn table_bytes(t: &[u64]) -> &[u8] {
    // SAFETY: u64 has no padding; the byte view keeps the 8-byte alignment the records need.
    unsafe { std::slice::from_raw_parts(t.as_ptr().cast(), t.len() * 8) }
}

#[test]
fn overlay_kernels_match_the_cpu_post_processing() {
    use gradcam::cam::{overlay_with, upsample_normalised, Colormap, OverlayStyle};
    let mut rng = Rng::new(16);
    // Each batch is one launch per kernel; the last mixes sizes (and a size smaller than the
    // others, whose surplus blocks must write nothing). Styles: pytorch-grad-cam's default,
    // another colormap and weight, the image alone.
    let style = |name, w| OverlayStyle::new(Colormap::by_name(name).unwrap(), w).unwrap();
    for ((h, w), sizes, style) in [
        (
            (7usize, 7usize),
            vec![(224usize, 224usize), (224, 224)],
            style("jet", 0.5),
        ),
        ((3, 4), vec![(75, 97)], style("viridis", 0.3)),
        (
            (14, 14),
            vec![(33, 517), (2, 3), (300, 41)],
            style("turbo", 1.0),
        ),
    ] {
        let lut: Vec<u8> = style.colormap.table().iter().flatten().copied().collect();
        let n = sizes.len();
        let maps = rng.tensor(&[n, h, w], 0.0, 3.0);
        let imgs: Vec<gradcam::image::RgbImage> = sizes
            .iter()
            .enumerate()
            .map(|(i, &(oh, ow))| {
                gradcam::image::RgbImage::from_fn(ow as u32, oh as u32, |x, y| {
                    image::Rgb([(x * 3 + i as u32) as u8, (y * 7) as u8, ((x ^ y) * 5) as u8])
                })
            })
            .collect();
        let (pixels, table) = packed(&imgs);
        let desc = table_bytes(&table);
        let dims = [h, w].map(|v| Arg::I32(v as i32));
        let mut mm = vec![f32::NAN; 2 * n];
        let mut args = vec![Arg::In(maps.data()), Arg::Bytes(desc), Arg::Out(&mut mm)];
        args.extend(dims);
        unsafe {
            emu::launch(
                "overlay_minmax_f32",
                [n as u32, 1, 1],
                [256, 1, 1],
                0,
                &mut args,
            )
        }
        .unwrap();
        let mut cmax = vec![f32::NAN; n];
        let mut args = vec![
            Arg::In(maps.data()),
            Arg::In(&mm),
            Arg::Bytes(&pixels),
            Arg::Bytes(desc),
            Arg::Bytes(&lut),
            Arg::Out(&mut cmax),
        ];
        args.extend([h, w].map(|v| Arg::I32(v as i32)));
        let (wh, wi) = style.weights();
        args.extend([Arg::F32(wh), Arg::F32(wi)]);
        unsafe {
            emu::launch(
                "overlay_max_f32",
                [n as u32, 1, 1],
                [256, 1, 1],
                0,
                &mut args,
            )
        }
        .unwrap();
        // Poisoned: a byte the kernel skips or writes twice with another image's value shows.
        let mut out = vec![0xA5u8; pixels.len()];
        let blocks = sizes.iter().map(|&(oh, ow)| oh * ow).max().unwrap();
        let mut args = vec![
            Arg::In(maps.data()),
            Arg::In(&mm),
            Arg::Bytes(&pixels),
            Arg::Bytes(desc),
            Arg::Bytes(&lut),
            Arg::In(&cmax),
            Arg::BytesOut(&mut out),
        ];
        args.extend([h, w].map(|v| Arg::I32(v as i32)));
        let (wh, wi) = style.weights();
        args.extend([Arg::F32(wh), Arg::F32(wi)]);
        unsafe {
            emu::launch(
                "overlay_rgb8",
                [blocks.div_ceil(256) as u32, n as u32, 1],
                [256, 1, 1],
                0,
                &mut args,
            )
        }
        .unwrap();
        let mut at = 0;
        for (i, img) in imgs.iter().enumerate() {
            let (oh, ow) = sizes[i];
            let m = upsample_normalised(&maps.data()[i * h * w..(i + 1) * h * w], (h, w), (oh, ow));
            let want = overlay_with(img, &m, &style).unwrap();
            let got = &out[at..at + oh * ow * 3];
            at += oh * ow * 3;
            // Same float operations in the same order: identical bytes but for the rare pixel on
            // a truncation boundary (a neighbouring colormap entry, 3 levels at most apart in
            // VIRIDIS and 5 in JET, times 1 − w, rescaled), as in tests/parity.rs.
            let worst = got
                .iter()
                .zip(want.as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            let differing = got
                .iter()
                .zip(want.as_raw())
                .filter(|(a, b)| a != b)
                .count();
            assert!(
                worst <= 4 && differing * 1000 <= got.len().max(1000),
                "overlay {i} ({oh}x{ow}): worst {worst}, {differing} bytes differ"
            );
        }
    }
}

#[test]
fn cam_family_kernels_match_the_cpu_backend() {
    use gradcam::backend::{Backend, CpuBackend, ElementRule, WeightRule};
    let be = CpuBackend::fast();
    let mut rng = Rng::new(17);
    for (n, k, h, w) in [(1, 1, 1, 1), (2, 5, 7, 7), (1, 3, 23, 29)] {
        let a = rng.tensor(&[n, k, h, w], 0.0, 2.0);
        let mut g = rng.tensor(&[n, k, h, w], -1.0, 1.0);
        g.data_mut().iter_mut().step_by(5).for_each(|v| *v = 0.0);
        for (rule, r) in [
            (WeightRule::GradCamPlusPlus, 0),
            (WeightRule::XGradCam, 1),
            (WeightRule::AffineDrop, 2),
        ] {
            let mut wts = vec![f32::NAN; n * k];
            let mut args = [
                Arg::In(a.data()),
                Arg::In(g.data()),
                Arg::Out(&mut wts),
                Arg::I32((h * w) as i32),
                Arg::I32(r),
            ];
            unsafe {
                emu::launch(
                    "cam_weights_f32",
                    [(n * k) as u32, 1, 1],
                    [256, 1, 1],
                    0,
                    &mut args,
                )
            }
            .unwrap();
            close(
                &format!("cam_weights_f32 {rule:?}"),
                &wts,
                &be.cam_weights(rule, &a, &g).unwrap(),
            );
        }
        // FEM's weights: counts above a threshold, so the planes have ReLU's zeros, a
        // constant plane (std 0: nothing above) and negative k.
        let mut relu_like = rng.tensor(&[n, k, h, w], -1.0, 2.0);
        relu_like
            .data_mut()
            .iter_mut()
            .for_each(|v| *v = v.max(0.0));
        // 0.1 does not sum exactly in f32: a mean that rounds below it would count the whole
        // plane as above for k < 1.
        relu_like.data_mut()[..h * w]
            .iter_mut()
            .for_each(|v| *v = 0.1);
        for k_sigma in [2.0f32, 0.5, 0.0, -0.5] {
            let mut wts = vec![f32::NAN; n * k];
            let mut args = [
                Arg::In(relu_like.data()),
                Arg::Out(&mut wts),
                Arg::I32((h * w) as i32),
                Arg::F32(k_sigma),
            ];
            unsafe {
                emu::launch(
                    "fem_weights_f32",
                    [(n * k) as u32, 1, 1],
                    [256, 1, 1],
                    0,
                    &mut args,
                )
            }
            .unwrap();
            let want = be.fem_weights(&relu_like, k_sigma).unwrap();
            // Counts: exact unless a value lies within rounding of the threshold (not here).
            assert_eq!(wts, want.data(), "fem_weights_f32 k={k_sigma}");
            if h * w > 1 {
                assert_eq!(
                    want.data()[0],
                    0.0,
                    "a constant plane has nothing above its mean"
                );
            }
        }
        // Negative activations too (a BatchNorm's output): there the element-wise rules differ.
        let a = rng.tensor(&[n, k, h, w], -1.0, 2.0);
        for (rule, r) in [
            (ElementRule::HiResCam, 0),
            (ElementRule::LayerCam, 1),
            (ElementRule::GradCamElementWise, 2),
        ] {
            let mut map = vec![f32::NAN; n * h * w];
            let mut args = [
                Arg::In(a.data()),
                Arg::In(g.data()),
                Arg::Out(&mut map),
                Arg::I32(k as i32),
                Arg::I32((h * w) as i32),
                Arg::I32(r),
            ];
            unsafe {
                emu::launch(
                    "elementwise_cam_relu_f32",
                    [(h * w).div_ceil(256) as u32, n as u32, 1],
                    [256, 1, 1],
                    0,
                    &mut args,
                )
            }
            .unwrap();
            close(
                &format!("elementwise_cam_relu_f32 {rule:?}"),
                &map,
                &be.elementwise_cam_relu(rule, &a, &g).unwrap(),
            );
        }
    }
}

#[test]
fn score_cam_kernels_match_the_cpu_backend() {
    use gradcam::backend::{Backend, CpuBackend};
    let be = CpuBackend::fast();
    let mut rng = Rng::new(18);
    for (n, c, hh, ww, k, h, w, k0, k1) in [
        (1, 3, 32, 32, 4, 4, 4, 0, 4),
        (2, 3, 29, 37, 6, 3, 5, 2, 5),
        (1, 3, 8, 8, 2, 1, 1, 0, 2),
    ] {
        let x = rng.tensor(&[n, c, hh, ww], -2.0, 2.0);
        let a = rng.tensor(&[n, k, h, w], 0.0, 1.0);
        let kc = k1 - k0;
        let mut mm = vec![f32::NAN; 2 * n * kc];
        let mut args = vec![Arg::In(a.data()), Arg::Out(&mut mm)];
        args.extend([k, k0, kc, h, w, hh, ww].map(|v| Arg::I32(v as i32)));
        unsafe {
            emu::launch(
                "score_cam_minmax_f32",
                [(n * kc) as u32, 1, 1],
                [256, 1, 1],
                0,
                &mut args,
            )
        }
        .unwrap();
        let mut out = vec![f32::NAN; n * kc * c * hh * ww];
        let mut args = vec![
            Arg::In(x.data()),
            Arg::In(a.data()),
            Arg::In(&mm),
            Arg::Out(&mut out),
        ];
        args.extend([c, k, k0, kc, h, w, hh, ww].map(|v| Arg::I32(v as i32)));
        unsafe {
            emu::launch(
                "score_cam_inputs_f32",
                [(hh * ww).div_ceil(256) as u32, (n * kc) as u32, 1],
                [256, 1, 1],
                0,
                &mut args,
            )
        }
        .unwrap();
        close(
            "score_cam_inputs_f32",
            &out,
            &be.score_cam_inputs(&x, &a, (k0, k1)).unwrap(),
        );
    }
}

/// ablate_channels_f32 against the CPU backend's ablate_channels (exact: copies and zeros),
/// and the ablated channel checked independently: zero in its copy, A elsewhere.
#[test]
fn ablate_channels_kernel_matches_the_cpu_backend() {
    use gradcam::backend::{Backend, CpuBackend};
    let be = CpuBackend::fast();
    let mut rng = Rng::new(32);
    for (n, k, h, w, k0, k1) in [(1, 4, 3, 5, 0, 4), (2, 7, 1, 1, 2, 5), (3, 5, 6, 4, 4, 5)] {
        let a = rng.tensor(&[n, k, h, w], 0.5, 2.0);
        let kc = k1 - k0;
        let mut out = vec![f32::NAN; kc * n * k * h * w];
        let mut args = vec![Arg::In(a.data()), Arg::Out(&mut out)];
        args.extend([n, k, k0, kc, h * w].map(|v| Arg::I32(v as i32)));
        let total = kc * n * k * h * w;
        unsafe {
            emu::launch(
                "ablate_channels_f32",
                [total.div_ceil(256) as u32, 1, 1],
                [256, 1, 1],
                0,
                &mut args,
            )
        }
        .unwrap();
        close(
            "ablate_channels_f32",
            &out,
            &be.ablate_channels(&a, (k0, k1)).unwrap(),
        );
        let hw = h * w;
        for (plane, got) in out.chunks(hw).enumerate() {
            let (j, i, c) = (plane / (n * k), plane / k % n, plane % k);
            let want = &a.data()[(i * k + c) * hw..(i * k + c + 1) * hw];
            match c == k0 + j {
                true => assert!(got.iter().all(|&v| v == 0.0), "copy {j} image {i}"),
                false => assert_eq!(got, want, "copy {j} image {i} channel {c}"),
            }
        }
    }
}

/// aug_copy_f32, one launch per run of alike copies into one output, against the CPU
/// backend's aug_copies (exact: one product per element). Odd widths, so a mirror that is off
/// by one moves a column onto a different value.
#[test]
fn aug_copy_kernel_matches_the_cpu_backend() {
    use gradcam::backend::{Backend, CpuBackend};
    let be = CpuBackend::fast();
    let mut rng = Rng::new(31);
    let copies = [
        (false, 0.9),
        (true, 1.1),
        (true, 1.1),
        (true, 1.0),
        (false, -2.5),
    ];
    for (n, c, h, w) in [(1, 3, 17, 23), (2, 3, 5, 1), (3, 2, 16, 16)] {
        let x = rng.tensor(&[n, c, h, w], -2.0, 2.0);
        let mut out = vec![f32::NAN; copies.len() * n * c * h * w];
        let mut t0 = 0;
        for run in copies.chunk_by(|a, b| a == b) {
            let (mirror, factor) = run[0];
            let mut args = vec![Arg::In(x.data()), Arg::Out(&mut out)];
            args.extend([n * c, h, w, t0, run.len(), mirror as usize].map(|v| Arg::I32(v as i32)));
            args.push(Arg::I32(f32::to_bits(factor) as i32));
            let total = run.len() * n * c * h * w;
            unsafe {
                emu::launch(
                    "aug_copy_f32",
                    [total.div_ceil(256) as u32, 1, 1],
                    [256, 1, 1],
                    0,
                    &mut args,
                )
            }
            .unwrap();
            t0 += run.len();
        }
        let want = be.aug_copies(&x, &copies).unwrap();
        assert_eq!(want.shape(), [copies.len() * n, c, h, w]);
        close("aug_copy_f32", &out, &want);
        // The mirror is a mirror: copy 3 (mirrored, × 1) reversed row by row is x.
        let per = n * c * h * w;
        let back: Vec<f32> = out[3 * per..4 * per]
            .chunks(w)
            .flat_map(|r| r.iter().rev().copied())
            .collect();
        assert_eq!(back, x.data());
    }
}

/// linear_fwd_f32 / linear_bwd_data_f32 (inputs `ins`, then y, part, n, in, out, chunk) on a
/// GEMM of `rows` outputs per image over `depth`: one pass, or (`thirds`) the depth in 16-deep
/// chunks of about a third into a workspace that linear_sum_f32 adds up (with `bias`).
fn run_linear(
    kernel: &str,
    ins: &[&[f32]],
    bias: Option<&[f32]>,
    [n, fin, fout]: [usize; 3],
    rows: usize,
    depth: usize,
    thirds: bool,
) -> Vec<f32> {
    let chunk = if thirds {
        depth.div_ceil(3).div_ceil(16) * 16
    } else {
        depth
    };
    let splits = depth.div_ceil(chunk);
    let mut y = vec![f32::NAN; n * rows];
    let mut part = vec![f32::NAN; splits * n * rows];
    let mut args: Vec<Arg> = ins.iter().map(|d| Arg::In(d)).collect();
    if thirds {
        args.extend([Arg::Null, Arg::Out(&mut part)]);
    } else {
        args.extend([Arg::Out(&mut y), Arg::Null]);
    }
    args.extend([n, fin, fout, chunk].map(|v| Arg::I32(v as i32)));
    let grid = [
        n.div_ceil(64) as u32,
        rows.div_ceil(64) as u32,
        splits as u32,
    ];
    unsafe { emu::launch(kernel, grid, [256, 1, 1], 0, &mut args) }.unwrap();
    if thirds {
        sum_parts(&part, bias, &mut y, splits, rows);
    }
    y
}

/// linear_sum_f32: `y` = the `splits` partial products in `part` summed (+ bias per column).
fn sum_parts(part: &[f32], bias: Option<&[f32]>, y: &mut [f32], splits: usize, cols: usize) {
    let count = y.len();
    let mut args = vec![
        Arg::In(part),
        bias.map_or(Arg::Null, Arg::In),
        Arg::Out(y),
        Arg::I32(splits as i32),
        Arg::I32(count as i32),
        Arg::I32(cols as i32),
    ];
    let blocks = count.div_ceil(256) as u32;
    unsafe { emu::launch("linear_sum_f32", [blocks, 1, 1], [256, 1, 1], 0, &mut args) }.unwrap();
}

/// full_grad_minmax_f32 + full_grad_sum_f32 (+ full_grad_resize_add_f32 when the sizes differ)
/// against the CPU backend's full_grad_add, for a bias term and the input term, starting a
/// total and adding to one. The CPU op is itself checked against pytorch-grad-cam's order
/// (each channel normalised and resized, then summed), written out here.
#[test]
fn full_grad_kernels_match_the_cpu_backend() {
    use gradcam::backend::{Backend, CpuBackend, FullGradBy};
    use gradcam::image::resize_bilinear;
    let be = CpuBackend::fast();
    let mut rng = Rng::new(33);
    // (N, K, h, w, oh, ow): the input term's same size, upsampling to odd sizes, one pixel.
    for (n, k, h, w, oh, ow) in [
        (2, 3, 9, 7, 9, 7),
        (1, 5, 4, 3, 17, 13),
        (3, 2, 1, 1, 5, 6),
        (1, 300, 2, 2, 3, 3),
        // Planes over one block (the strided min-max loop, several sum blocks), resized.
        (2, 4, 23, 19, 40, 30),
    ] {
        let g = rng.tensor(&[n, k, h, w], -1.0, 1.0);
        let x = rng.tensor(&[n, k, h, w], -2.0, 2.0);
        let bias = rng.tensor(&[k], -1.0, 1.0);
        let start = rng.tensor(&[n, oh, ow], 0.0, 3.0);
        for (by_x, from) in [(false, None), (true, Some(&start)), (false, Some(&start))] {
            let by = match by_x {
                true => FullGradBy::Input(&x),
                false => FullGradBy::Bias(bias.data()),
            };
            let want = be.full_grad_add(from.cloned(), &g, by, (oh, ow)).unwrap();
            // pytorch-grad-cam's order: every channel resized on its own, then summed.
            let mut naive = from.map_or(vec![0f32; n * oh * ow], |t| t.data().to_vec());
            for i in 0..n {
                for c in 0..k {
                    let at = (i * k + c) * h * w;
                    let mut plane: Vec<f32> = (0..h * w)
                        .map(|p| {
                            let m = if by_x {
                                x.data()[at + p]
                            } else {
                                bias.data()[c]
                            };
                            (m * g.data()[at + p]).abs()
                        })
                        .collect();
                    let lo = plane.iter().copied().fold(f32::INFINITY, f32::min);
                    let hi = plane.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    plane
                        .iter_mut()
                        .for_each(|v| *v = (*v - lo) / (hi - lo + 1e-7));
                    let up = resize_bilinear(&plane, h, w, 1, oh, ow);
                    let dst = &mut naive[i * oh * ow..(i + 1) * oh * ow];
                    dst.iter_mut().zip(up).for_each(|(d, u)| *d += u);
                }
            }
            close(
                "full_grad_add (cpu)",
                want.data(),
                &Tensor::new([n, oh, ow], naive),
            );

            let mut mm = vec![f32::NAN; 2 * n * k];
            let (xa, ba) = match by_x {
                true => (Arg::In(x.data()), Arg::Null),
                false => (Arg::Null, Arg::In(bias.data())),
            };
            let mut args = vec![Arg::In(g.data()), xa, ba, Arg::Out(&mut mm)];
            args.extend([k, h * w, by_x as usize].map(|v| Arg::I32(v as i32)));
            let grid = [(n * k) as u32, 1, 1];
            unsafe { emu::launch("full_grad_minmax_f32", grid, [256, 1, 1], 0, &mut args) }
                .unwrap();
            let same = (h, w) == (oh, ow);
            let mut total = match from {
                Some(t) => t.data().to_vec(),
                None => vec![f32::NAN; n * oh * ow],
            };
            let mut layer = vec![f32::NAN; n * h * w];
            let accumulate = from.is_some() as usize;
            let (xa, ba) = match by_x {
                true => (Arg::In(x.data()), Arg::Null),
                false => (Arg::Null, Arg::In(bias.data())),
            };
            let sum_out = if same { &mut total } else { &mut layer };
            let mut args = vec![Arg::In(g.data()), xa, ba, Arg::In(&mm), Arg::Out(sum_out)];
            let acc = if same { accumulate } else { 0 };
            args.extend([k, h * w, by_x as usize, acc].map(|v| Arg::I32(v as i32)));
            let grid = [(h * w).div_ceil(256) as u32, n as u32, 1];
            unsafe { emu::launch("full_grad_sum_f32", grid, [256, 1, 1], 0, &mut args) }.unwrap();
            if !same {
                let mut args = vec![Arg::In(&layer), Arg::Out(&mut total)];
                args.extend([h, w, oh, ow, accumulate].map(|v| Arg::I32(v as i32)));
                let grid = [(oh * ow).div_ceil(256) as u32, n as u32, 1];
                unsafe { emu::launch("full_grad_resize_add_f32", grid, [256, 1, 1], 0, &mut args) }
                    .unwrap();
            }
            close(
                &format!("full_grad f32 {n}x{k}x{h}x{w} → {oh}x{ow}, input term {by_x}"),
                &total,
                &want,
            );
        }
    }
}
