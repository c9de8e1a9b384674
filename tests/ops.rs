//! CPU ops: the fast backend against the naive oracle on random shapes (odd sizes, stride 2,
//! padding, dilation, 1×1, groups, the ResNet downsample, batch > 1), and the naive
//! backward ops against their forward ops through the adjoint identity
//! <f(x), y> = <x, f*(y)>, which holds only if backward-data is exactly the transpose.
//!
//! Tolerances: fast vs naive, max abs diff ≤ 1e-4 · (1 + max |reference|) (f32 GEMM vs f64
//! accumulation over at most a few thousand terms); adjoint identity, 1e-4 · (1 + |lhs|)
//! (outputs are rounded to f32 before the f64 dot products).

mod common;

use gradcam::backend::cpu::naive;
use gradcam::backend::{
    Backend, BwdFilters, Conv2dParams, CpuBackend, Pool2dParams, TransposedConv,
};
use gradcam::model::synth::Rng;
use gradcam::Tensor;

fn close(name: &str, fast: &Tensor, reference: &Tensor) {
    assert_eq!(fast.shape(), reference.shape(), "{name}: shapes");
    let scale = 1.0 + reference.data().iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = fast.max_abs_diff(reference);
    assert!(
        err <= 1e-4 * scale,
        "{name}: max abs diff {err} (scale {scale})"
    );
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    a.data()
        .iter()
        .zip(b.data())
        .map(|(x, y)| *x as f64 * *y as f64)
        .sum()
}

struct ConvCase {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    r: usize,
    s: usize,
    p: Conv2dParams,
}

fn conv_cases() -> Vec<ConvCase> {
    let p = |stride, pad, dil, groups| Conv2dParams {
        stride: (stride, stride),
        padding: (pad, pad),
        dilation: (dil, dil),
        groups,
    };
    vec![
        ConvCase {
            n: 2,
            c: 3,
            h: 17,
            w: 13,
            k: 8,
            r: 7,
            s: 7,
            p: p(2, 3, 1, 1),
        }, // ResNet stem
        ConvCase {
            n: 3,
            c: 5,
            h: 9,
            w: 11,
            k: 6,
            r: 3,
            s: 3,
            p: p(1, 1, 1, 1),
        }, // VGG 3x3
        ConvCase {
            n: 1,
            c: 16,
            h: 8,
            w: 8,
            k: 32,
            r: 1,
            s: 1,
            p: p(1, 0, 1, 1),
        }, // 1x1 (direct GEMM)
        ConvCase {
            n: 2,
            c: 16,
            h: 9,
            w: 7,
            k: 32,
            r: 1,
            s: 1,
            p: p(2, 0, 1, 1),
        }, // downsample
        ConvCase {
            n: 2,
            c: 8,
            h: 10,
            w: 9,
            k: 8,
            r: 3,
            s: 3,
            p: p(2, 1, 1, 4),
        }, // groups (ResNeXt)
        ConvCase {
            n: 1,
            c: 4,
            h: 12,
            w: 12,
            k: 4,
            r: 3,
            s: 3,
            p: p(1, 2, 2, 4),
        }, // depthwise, dilated
        ConvCase {
            n: 2,
            c: 3,
            h: 4,
            w: 3,
            k: 5,
            r: 11,
            s: 11,
            p: p(1, 5, 1, 1),
        }, // padding wider than the map: some taps read only zeros in a whole row / column
        ConvCase {
            n: 1,
            c: 4,
            h: 2,
            w: 3,
            k: 3,
            r: 7,
            s: 7,
            p: p(2, 3, 1, 1),
        }, // the same at stride 2 (a ResNet stem on a 2×3 image)
        ConvCase {
            n: 2,
            c: 3,
            h: 5,
            w: 6,
            k: 2,
            r: 3,
            s: 2,
            p: Conv2dParams {
                stride: (1, 2),
                padding: (0, 1),
                dilation: (1, 1),
                groups: 1,
            },
        },
        ConvCase {
            n: 4,
            c: 7,
            h: 31,
            w: 29,
            k: 5,
            r: 3,
            s: 3,
            p: p(1, 1, 1, 1),
        }, // batch > threads
        // Winograd F(2x2,3x3) path: 3x3 stride 1 with >= 16 input channels; odd sizes leave
        // partial tiles, padding 0 and 2 shift the tile grid.
        ConvCase {
            n: 1,
            c: 32,
            h: 17,
            w: 13,
            k: 24,
            r: 3,
            s: 3,
            p: p(1, 1, 1, 1),
        },
        ConvCase {
            n: 3,
            c: 64,
            h: 14,
            w: 14,
            k: 40,
            r: 3,
            s: 3,
            p: p(1, 1, 1, 1),
        },
        ConvCase {
            n: 2,
            c: 16,
            h: 9,
            w: 7,
            k: 8,
            r: 3,
            s: 3,
            p: p(1, 0, 1, 1),
        },
        ConvCase {
            n: 1,
            c: 20,
            h: 5,
            w: 6,
            k: 3,
            r: 3,
            s: 3,
            p: p(1, 2, 1, 1),
        },
        ConvCase {
            n: 2,
            c: 16,
            h: 3,
            w: 3,
            k: 4,
            r: 3,
            s: 3,
            p: p(1, 1, 1, 1),
        },
        // Maps of 48 tiles of 4×4 or more: Winograd F(4×4), with partial tiles at the
        // right and bottom edges, padding 1 and 0.
        ConvCase {
            n: 2,
            c: 24,
            h: 29,
            w: 30,
            k: 20,
            r: 3,
            s: 3,
            p: p(1, 1, 1, 1),
        },
        ConvCase {
            n: 1,
            c: 16,
            h: 30,
            w: 31,
            k: 9,
            r: 3,
            s: 3,
            p: p(1, 0, 1, 1),
        },
        // A stem: 7×7 stride 2 over 3 channels, odd and even widths (the stride-2 im2col
        // reads split rows); and 1×1 stride 2 over an odd map (a downsampling conv).
        ConvCase {
            n: 2,
            c: 3,
            h: 23,
            w: 21,
            k: 8,
            r: 7,
            s: 7,
            p: p(2, 3, 1, 1),
        },
        ConvCase {
            n: 1,
            c: 5,
            h: 12,
            w: 18,
            k: 6,
            r: 7,
            s: 7,
            p: p(2, 3, 1, 1),
        },
        ConvCase {
            n: 2,
            c: 24,
            h: 9,
            w: 11,
            k: 40,
            r: 1,
            s: 1,
            p: p(2, 0, 1, 1),
        },
        // Backward-data passes as transposed convs with padding 2: Winograd F(4×4) (24 deep,
        // a 26×27 map) and a 5×5 GEMM.
        ConvCase {
            n: 2,
            c: 18,
            h: 26,
            w: 27,
            k: 24,
            r: 3,
            s: 3,
            p: p(1, 0, 1, 1),
        },
        ConvCase {
            n: 1,
            c: 6,
            h: 10,
            w: 9,
            k: 5,
            r: 5,
            s: 5,
            p: p(1, 2, 1, 1),
        },
        // Deeper than one 192-deep slice of the AVX-512 GEMM, direct and through im2col: the
        // bias and ReLU it adds as it writes the last slice (ResNet's 1x1 and strided convs).
        ConvCase {
            n: 2,
            c: 200,
            h: 7,
            w: 9,
            k: 70,
            r: 1,
            s: 1,
            p: p(1, 0, 1, 1),
        },
        ConvCase {
            n: 2,
            c: 40,
            h: 11,
            w: 10,
            k: 36,
            r: 3,
            s: 3,
            p: p(2, 1, 1, 1),
        },
    ]
}

/// Whether the CPU backend runs its AVX-512 GEMM here (it packs filters only then).
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    let on = std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let on = false;
    on && std::env::var("GRADCAM_AVX512").map_or(true, |v| v.trim() != "0")
}

#[test]
fn conv2d_fwd_and_bwd_data_fast_match_naive() {
    let (fast, reference) = (CpuBackend::fast(), CpuBackend::reference());
    let mut rng = Rng::new(1);
    let (mut other_bwd, mut other_dims) = (None, [0; 4]);
    for (i, cc) in conv_cases().into_iter().enumerate() {
        let x = rng.tensor(&[cc.n, cc.c, cc.h, cc.w], -1.0, 1.0);
        let w = rng.tensor(&[cc.k, cc.c / cc.p.groups, cc.r, cc.s], -1.0, 1.0);
        let b = rng.tensor(&[cc.k], -1.0, 1.0);
        let prepared = fast.conv2d_prepare(&w, &cc.p).unwrap();
        // As the network prepares them: for the map at the model's size (Winograd F(4×4) on
        // the large ones).
        let (oh, ow) = cc.p.out_hw((cc.h, cc.w), (cc.r, cc.s)).unwrap();
        let prepared_for = fast.conv2d_prepare_for(&w, &cc.p, Some((oh, ow))).unwrap();
        for (bias, relu) in [(None, false), (Some(&b), false), (Some(&b), true)] {
            let y_ref = reference
                .conv2d_fwd(&x, &w, None, bias, &cc.p, relu)
                .unwrap();
            // With the filters prepared at load time, and transformed on the fly.
            for prep in [prepared.as_ref(), prepared_for.as_ref(), None] {
                let y = fast.conv2d_fwd(&x, &w, prep, bias, &cc.p, relu).unwrap();
                close(&format!("conv2d_fwd case {i} relu {relu}"), &y, &y_ref);
            }
        }
        // A ResNet block's end: F.relu(F.conv2d(x, w, b) + res), fused by the fast backend.
        let res = rng.tensor(&[cc.n, cc.k, oh, ow], -1.0, 1.0);
        let y_ref = reference.conv2d_fwd(&x, &w, None, Some(&b), &cc.p, false);
        let y_ref = naive::relu_fwd(&naive::add(&y_ref.unwrap(), &res));
        for (be, prep) in [(fast, prepared.as_ref()), (fast, None), (reference, None)] {
            let y = be.conv2d_fwd_add_relu(&x, &w, prep, Some(&b), &cc.p, &res);
            close(
                &format!("conv2d_fwd_add_relu case {i}"),
                &y.unwrap(),
                &y_ref,
            );
        }
        let wrong = rng.tensor(&[cc.n, cc.k + 1, oh, ow], -1.0, 1.0);
        assert!(fast
            .conv2d_fwd_add_relu(&x, &w, None, Some(&b), &cc.p, &wrong)
            .is_err());
        let dy = rng.tensor(&[cc.n, cc.k, oh, ow], -1.0, 1.0);
        let dx_ref = reference
            .conv2d_bwd_data(&dy, &w, (cc.h, cc.w), &cc.p)
            .unwrap();
        let dx = fast.conv2d_bwd_data(&dy, &w, (cc.h, cc.w), &cc.p).unwrap();
        close(&format!("conv2d_bwd_data case {i}"), &dx, &dx_ref);
        // Through the filters prepared for the backward pass (stride 1: the transposed conv,
        // Winograd for 3×3 over 16 channels; else, one group, Wᵀ packed once), as the network
        // runs it. Without AVX-512 only the Winograd transposed convs are made.
        let bwd = fast.conv2d_prepare_bwd(&w, &cc.p, (cc.h, cc.w)).unwrap();
        let stride1 = cc.p.stride == (1, 1) && cc.p.dilation == (1, 1) && cc.p.groups == 1;
        let winograd = stride1 && cc.r == 3 && cc.s == 3 && cc.k >= 16;
        let kind = match &bwd {
            Some(BwdFilters::Transposed(_)) => "transposed",
            Some(BwdFilters::Own { .. }) => "packed",
            None => "none",
        };
        let want = match (avx512(), stride1, cc.p.groups) {
            (_, true, _) if winograd => "transposed",
            (true, true, _) => "transposed",
            (true, false, 1) => "packed",
            _ => "none",
        };
        assert_eq!(kind, want, "case {i}: backward filters");
        let dx = fast
            .conv2d_bwd_data_with(&dy, &w, bwd.as_ref(), (cc.h, cc.w), &cc.p)
            .unwrap();
        close(&format!("conv2d_bwd_data prepared case {i}"), &dx, &dx_ref);
        // Another conv's backward filters (a caller's mix-up) are not used.
        if let Some(other) = other_bwd.as_ref() {
            let dx = fast
                .conv2d_bwd_data_with(&dy, &w, Some(other), (cc.h, cc.w), &cc.p)
                .unwrap();
            close(
                &format!("conv2d_bwd_data foreign filters case {i}"),
                &dx,
                &dx_ref,
            );
        }
        // Hand-built backward filters of the right shape around a preparation that is not
        // theirs (another conv's, or the forward pass's) are not used either. (Another conv
        // of the same dims prepares tensors of the same shapes, which cannot be told apart.)
        let dims = [cc.k, cc.c / cc.p.groups, cc.r, cc.s];
        let other = other_bwd.take().filter(|_| other_dims != dims);
        if let (Some(own), Some(other)) = (prepared.clone(), other) {
            let other = match other {
                BwdFilters::Transposed(t) => t.prepared,
                BwdFilters::Own { prepared, .. } => prepared,
            };
            let [c, k, r, s] = [dims[1], dims[0], dims[2], dims[3]];
            let pt = cc.p.transposed((r, s)).unwrap_or(cc.p);
            let built = [
                BwdFilters::Own {
                    shape: dims,
                    prepared: own,
                },
                BwdFilters::Own {
                    shape: dims,
                    prepared: other.clone(),
                },
                BwdFilters::Transposed(TransposedConv {
                    shape: [c, k, r, s],
                    p: pt,
                    prepared: other,
                }),
            ];
            for (j, bwd) in built.iter().enumerate() {
                let dx = fast
                    .conv2d_bwd_data_with(&dy, &w, Some(bwd), (cc.h, cc.w), &cc.p)
                    .unwrap();
                close(&format!("hand-built filters {j} case {i}"), &dx, &dx_ref);
            }
        }
        (other_bwd, other_dims) = (bwd, dims);
        // Adjoint: <conv(x), dy> = <x, conv_bwd(dy)>.
        let y = naive::conv2d_fwd(&x, &w, None, &cc.p);
        let (l, r) = (dot(&y, &dy), dot(&x, &dx_ref));
        assert!(
            (l - r).abs() <= 1e-4 * (1.0 + l.abs()),
            "conv adjoint case {i}: {l} vs {r}"
        );
    }
}

/// ReLU keeps NaN (as torch's) in the plain op, every fused conv epilogue (Winograd, the
/// AVX-512 and AMX GEMMs where this CPU has them, im2col) and the CAM ops: see
/// `common::relu_keeps_nan`.
#[test]
fn relu_keeps_nan_on_every_cpu_path() {
    common::relu_keeps_nan(&CpuBackend::fast(), "fast");
    common::relu_keeps_nan(&CpuBackend::fast_bf16(), "fast bf16");
    common::relu_keeps_nan(&CpuBackend::reference(), "reference");
}

/// `--precision bf16` on the CPU (AMX): every conv of one group, forward and backward-data,
/// against the naive conv of the operands rounded to bf16 (`round_bf16`, as torch's
/// `.to(torch.bfloat16)`), within `close`'s 1e-4 of the output's scale: the f32 accumulation
/// is all that differs. The unrounded product is ~2e-3 of the scale away (bf16 keeps 8
/// bits), so filters that ran in f32 would fail. Grouped convs stay f32: against the plain
/// naive conv. On a CPU without AMX-BF16 the backend prepares what `fast` does (said).
#[test]
fn conv2d_bf16_matches_naive_on_rounded_operands() {
    use gradcam::backend::cpu::round_bf16;
    let (bf, reference) = (CpuBackend::fast_bf16(), CpuBackend::reference());
    let round = |t: &Tensor| {
        Tensor::new(
            t.shape().to_vec(),
            t.data().iter().map(|&v| round_bf16(v)).collect(),
        )
    };
    let mut rng = Rng::new(11);
    for (i, cc) in conv_cases().into_iter().enumerate() {
        let x = rng.tensor(&[cc.n, cc.c, cc.h, cc.w], -1.0, 1.0);
        let w = rng.tensor(&[cc.k, cc.c / cc.p.groups, cc.r, cc.s], -1.0, 1.0);
        let b = rng.tensor(&[cc.k], -1.0, 1.0);
        let (oh, ow) = cc.p.out_hw((cc.h, cc.w), (cc.r, cc.s)).unwrap();
        let dy = rng.tensor(&[cc.n, cc.k, oh, ow], -1.0, 1.0);
        let prepared = bf.conv2d_prepare_for(&w, &cc.p, Some((oh, ow))).unwrap();
        let bwd = bf.conv2d_prepare_bwd(&w, &cc.p, (cc.h, cc.w)).unwrap();
        if !CpuBackend::bf16_available() {
            let fast = CpuBackend::fast();
            let want = fast.conv2d_prepare_for(&w, &cc.p, Some((oh, ow))).unwrap();
            assert_eq!(
                prepared.map(|t| t.shape().to_vec()),
                want.map(|t| t.shape().to_vec())
            );
            if i == 0 {
                eprintln!("note: no AMX-BF16 on this CPU: bf16 convs run as f32 ones here");
            }
            continue;
        }
        let grouped = cc.p.groups > 1;
        let (xr, wr, dyr) = match grouped {
            true => (x.clone(), w.clone(), dy.clone()),
            false => (round(&x), round(&w), round(&dy)),
        };
        let packed = prepared.as_ref().map(|t| t.shape().len() == 5);
        assert_eq!(packed, (!grouped).then_some(true), "case {i}: bf16 filters");
        // The plain filters handed over as if prepared (a 1×1 conv's are [K, C, 1, 1]) are
        // refused with an error, never read as packed bf16.
        let plain = bf.conv2d_fwd(&x, &w, Some(&w), None, &cc.p, false);
        assert!(plain.is_err(), "case {i}: plain filters taken as prepared");
        for (bias, relu) in [(None, false), (Some(&b), true)] {
            let y_ref = reference
                .conv2d_fwd(&xr, &wr, None, bias, &cc.p, relu)
                .unwrap();
            let y = bf.conv2d_fwd(&x, &w, prepared.as_ref(), bias, &cc.p, relu);
            close(
                &format!("bf16 conv2d_fwd case {i} relu {relu}"),
                &y.unwrap(),
                &y_ref,
            );
        }
        let res = rng.tensor(&[cc.n, cc.k, oh, ow], -1.0, 1.0);
        let y_ref = reference.conv2d_fwd(&xr, &wr, None, Some(&b), &cc.p, false);
        let y_ref = naive::relu_fwd(&naive::add(&y_ref.unwrap(), &res));
        let y = bf.conv2d_fwd_add_relu(&x, &w, prepared.as_ref(), Some(&b), &cc.p, &res);
        close(
            &format!("bf16 conv2d_fwd_add_relu case {i}"),
            &y.unwrap(),
            &y_ref,
        );
        let dx_ref = reference
            .conv2d_bwd_data(&dyr, &wr, (cc.h, cc.w), &cc.p)
            .unwrap();
        let dx = bf
            .conv2d_bwd_data_with(&dy, &w, bwd.as_ref(), (cc.h, cc.w), &cc.p)
            .unwrap();
        close(&format!("bf16 conv2d_bwd_data case {i}"), &dx, &dx_ref);
    }
}

#[test]
fn pools_fast_match_naive_and_are_adjoint() {
    let (fast, reference) = (CpuBackend::fast(), CpuBackend::reference());
    let mut rng = Rng::new(2);
    let pools = [
        Pool2dParams::new(2, 2, 0),
        Pool2dParams::new(3, 2, 1),
        Pool2dParams::new(3, 1, 1),
    ];
    for (i, (shape, p)) in [
        ([2, 3, 9, 7], pools[0]),
        ([1, 4, 13, 12], pools[1]),
        ([3, 2, 5, 6], pools[2]),
        ([2, 2, 112, 112], pools[1]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut x = rng.tensor(&shape, -1.0, 1.0);
        // ReLU-like zeros make ties: both implementations must route to the first maximum.
        x.data_mut().iter_mut().step_by(3).for_each(|v| *v = 0.0);
        let y_ref = reference.max_pool2d_fwd(&x, &p).unwrap();
        close(
            &format!("max_pool2d_fwd {i}"),
            &fast.max_pool2d_fwd(&x, &p).unwrap(),
            &y_ref,
        );
        let dy = rng.tensor(y_ref.shape(), -1.0, 1.0);
        let dx_ref = reference.max_pool2d_bwd(&x, &dy, &p).unwrap();
        close(
            &format!("max_pool2d_bwd {i}"),
            &fast.max_pool2d_bwd(&x, &dy, &p).unwrap(),
            &dx_ref,
        );
        // Max-pool is linear in x for a fixed argmax pattern, so the adjoint identity holds.
        let (l, r) = (dot(&y_ref, &dy), dot(&x, &dx_ref));
        assert!((l - r).abs() < 1e-4, "max pool adjoint {i}: {l} vs {r}");
        // A NaN wins its windows in both (F.max_pool2d propagates NaN), wherever it sits.
        x.data_mut()[shape.iter().product::<usize>() / 2 + 1] = f32::NAN;
        let (y_ref, y) = (
            reference.max_pool2d_fwd(&x, &p).unwrap(),
            fast.max_pool2d_fwd(&x, &p).unwrap(),
        );
        let nan_at = |t: &Tensor| -> Vec<usize> {
            let d = t.data().iter().enumerate();
            d.filter(|e| e.1.is_nan()).map(|e| e.0).collect()
        };
        assert!(!nan_at(&y_ref).is_empty(), "max pool NaN {i}");
        assert_eq!(nan_at(&y), nan_at(&y_ref), "max pool NaN {i}");
    }
    for (i, (shape, out)) in [
        ([2, 3, 14, 14], (7, 7)),
        ([1, 2, 13, 9], (7, 7)),
        ([2, 4, 5, 7], (1, 1)),
        ([1, 1, 3, 2], (7, 7)),
    ]
    .into_iter()
    .enumerate()
    {
        let x = rng.tensor(&shape, -1.0, 1.0);
        let y_ref = reference.adaptive_avg_pool2d_fwd(&x, out).unwrap();
        close(
            &format!("adaptive_avg_pool2d_fwd {i}"),
            &fast.adaptive_avg_pool2d_fwd(&x, out).unwrap(),
            &y_ref,
        );
        let dy = rng.tensor(y_ref.shape(), -1.0, 1.0);
        let hw = (shape[2], shape[3]);
        let dx_ref = reference.adaptive_avg_pool2d_bwd(&dy, hw).unwrap();
        close(
            &format!("adaptive_avg_pool2d_bwd {i}"),
            &fast.adaptive_avg_pool2d_bwd(&dy, hw).unwrap(),
            &dx_ref,
        );
        let (l, r) = (dot(&y_ref, &dy), dot(&x, &dx_ref));
        assert!(
            (l - r).abs() < 1e-4,
            "adaptive pool adjoint {i}: {l} vs {r}"
        );
    }
}

#[test]
fn adaptive_bins_follow_pytorch() {
    // torch: AdaptiveAvgPool2d(7) on 13 rows uses [0,2),[1,4),[3,6),[5,8),[7,10),[9,12),[11,13)
    let bins: Vec<_> = (0..7).map(|i| naive::adaptive_bin(i, 13, 7)).collect();
    assert_eq!(
        bins,
        vec![(0, 2), (1, 4), (3, 6), (5, 8), (7, 10), (9, 12), (11, 13)]
    );
    // Upsampling 3 → 7 repeats: [0,1),[0,1),[0,2)...
    assert_eq!(naive::adaptive_bin(2, 3, 7), (0, 2));
}

#[test]
fn pointwise_linear_and_cam_ops_fast_match_naive() {
    let (fast, reference) = (CpuBackend::fast(), CpuBackend::reference());
    let mut rng = Rng::new(3);
    let x = rng.tensor(&[3, 5, 7, 9], -1.0, 1.0);
    let y_ref = reference.relu_fwd(x.clone()).unwrap();
    close("relu_fwd", &fast.relu_fwd(x.clone()).unwrap(), &y_ref);
    let dy = rng.tensor(x.shape(), -1.0, 1.0);
    for guided in [false, true] {
        let r = reference.relu_bwd(&y_ref, dy.clone(), guided).unwrap();
        close(
            "relu_bwd",
            &fast.relu_bwd(&y_ref, dy.clone(), guided).unwrap(),
            &r,
        );
    }
    let b = rng.tensor(x.shape(), -1.0, 1.0);
    close(
        "add",
        &fast.add(x.clone(), &b).unwrap(),
        &reference.add(x.clone(), &b).unwrap(),
    );
    let (s, t): (Vec<f32>, Vec<f32>) = (0..5).map(|i| (i as f32 - 2.0, 0.5 * i as f32)).unzip();
    close(
        "channel_affine",
        &fast.channel_affine(x.clone(), &s, &t).unwrap(),
        &reference.channel_affine(x.clone(), &s, &t).unwrap(),
    );

    // (images, in, out): the AVX-512 kernels take batches up to 16 (blocks of 8 images, pairs
    // of rows, masked tails, several column strips), the GEMM the rest.
    for (n, fin, fout) in [
        (4, 37, 11),
        (1, 5, 3),
        (8, 1030, 33),
        (9, 300, 17),
        (16, 64, 2),
        (3, 2500, 1),
        (17, 40, 7),
    ] {
        let xin = rng.tensor(&[n, fin], -1.0, 1.0);
        let w = rng.tensor(&[fout, fin], -1.0, 1.0);
        let bias = rng.tensor(&[fout], -1.0, 1.0);
        let case = format!("{n}x{fin} -> {fout}");
        for b in [Some(&bias), None] {
            let y_ref = reference.linear_fwd(&xin, &w, b).unwrap();
            let y = fast.linear_fwd(&xin, &w, b).unwrap();
            close(&format!("linear_fwd {case}"), &y, &y_ref);
        }
        let dy = rng.tensor(&[n, fout], -1.0, 1.0);
        let dx_ref = reference.linear_bwd_data(&dy, &w).unwrap();
        let dx = fast.linear_bwd_data(&dy, &w).unwrap();
        close(&format!("linear_bwd_data {case}"), &dx, &dx_ref);
        let y0 = reference.linear_fwd(&xin, &w, None).unwrap();
        let (l, r) = (dot(&y0, &dy), dot(&xin, &dx_ref));
        assert!(
            (l - r).abs() <= 1e-4 * (1.0 + l.abs()),
            "linear adjoint {case}: {l} vs {r}"
        );
    }

    let g = rng.tensor(&[2, 6, 5, 3], -1.0, 1.0);
    let a_ref = reference.grad_pool(&g).unwrap();
    close("grad_pool", &fast.grad_pool(&g).unwrap(), &a_ref);
    let act = rng.tensor(&[2, 6, 5, 3], 0.0, 1.0);
    let m_ref = reference.weighted_sum_relu(&act, &a_ref).unwrap();
    close(
        "weighted_sum_relu",
        &fast.weighted_sum_relu(&act, &a_ref).unwrap(),
        &m_ref,
    );
    assert!(m_ref.data().iter().all(|&v| v >= 0.0));
}

#[test]
fn naive_ops_match_hand_computed_values() {
    // F.conv2d(torch.arange(9.).view(1,1,3,3), torch.ones(1,1,2,2)) == [[8,12],[20,24]]
    let x = Tensor::new([1, 1, 3, 3], (0..9).map(|v| v as f32).collect());
    let w = Tensor::full([1, 1, 2, 2], 1.0);
    let y = naive::conv2d_fwd(&x, &w, None, &Conv2dParams::default());
    assert_eq!(y.data(), &[8.0, 12.0, 20.0, 24.0]);
    // F.max_pool2d(x, 2, 1) == [[4,5],[7,8]]
    let m = naive::max_pool2d_fwd(&x, &Pool2dParams::new(2, 1, 0));
    assert_eq!(m.data(), &[4.0, 5.0, 7.0, 8.0]);
    // torch.nn.grad.conv2d_input((1,1,3,3), ones(1,1,2,2), ones(1,1,2,2)) counts taps
    let dx = naive::conv2d_bwd_data(
        &Tensor::full([1, 1, 2, 2], 1.0),
        &w,
        (3, 3),
        &Conv2dParams::default(),
    );
    assert_eq!(dx.data(), &[1.0, 2.0, 1.0, 2.0, 4.0, 2.0, 1.0, 2.0, 1.0]);
}

/// The backward-data pass as the network runs it (filters prepared for a 32×32 map, one
/// F(4×4) would take forward) rounds as the direct convolution does: relative RMS error
/// against an f64 transposed convolution below 6e-7 (measured: direct col2im 1.4e-7,
/// Winograd F(2×2) 2.3e-7, F(4×4) 1.0e-6 on these values, 1.5e-6 at its usual points),
/// because Grad-CAM++'s weights magnify a gradient's rounding (see
/// `fast::conv2d_prepare_bwd`).
#[test]
fn conv2d_bwd_data_prepared_rounds_as_the_direct_conv() {
    // (With Winograd off there is no tile to check; without AVX-512 nothing is prepared.)
    if std::env::var("GRADCAM_WINOGRAD").is_ok_and(|v| v.trim() == "0") {
        return;
    }
    let fast = CpuBackend::fast();
    let mut rng = Rng::new(5);
    let (c, k, h, w) = (48, 48, 32, 32);
    let p = Conv2dParams::new(1, 1);
    let wt = rng.tensor(&[k, c, 3, 3], -0.1, 0.1);
    let dy = rng.tensor(&[1, k, h, w], -1.0, 1.0);
    // dx[c, y, x] = Σ_k Σ_{i,j} dy[k, y + 1 - i, x + 1 - j] · w[k, c, i, j], in f64.
    let mut want = vec![0f64; c * h * w];
    for ki in 0..k {
        for ci in 0..c {
            for i in 0..3 {
                for j in 0..3 {
                    let wv = wt.data()[((ki * c + ci) * 3 + i) * 3 + j] as f64;
                    for y in 0..h {
                        let oy = y as isize + 1 - i as isize;
                        if !(0..h as isize).contains(&oy) {
                            continue;
                        }
                        for x in 0..w {
                            let ox = x as isize + 1 - j as isize;
                            if (0..w as isize).contains(&ox) {
                                let g = dy.data()[(ki * h + oy as usize) * w + ox as usize];
                                want[(ci * h + y) * w + x] += wv * g as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    let rel_rms = |got: &Tensor| {
        let (mut e, mut s) = (0f64, 0f64);
        for (g, r) in got.data().iter().zip(&want) {
            e += (*g as f64 - r).powi(2);
            s += r * r;
        }
        (e / s).sqrt()
    };
    let bwd = fast.conv2d_prepare_bwd(&wt, &p, (h, w)).unwrap();
    assert!(matches!(bwd, Some(BwdFilters::Transposed(_))));
    let dx = fast
        .conv2d_bwd_data_with(&dy, &wt, bwd.as_ref(), (h, w), &p)
        .unwrap();
    let plain = fast.conv2d_bwd_data(&dy, &wt, (h, w), &p).unwrap();
    let (prepared, direct) = (rel_rms(&dx), rel_rms(&plain));
    eprintln!("relative RMS error: prepared {prepared:.2e}, col2im {direct:.2e}");
    assert!(prepared < 6e-7, "prepared backward filters: {prepared:.2e}");
    assert!(direct < 6e-7, "col2im: {direct:.2e}");
}

/// Every op refuses arguments whose shapes do not fit together with an error naming the op
/// (for programs calling the ops directly; the network checks its own shapes), where the CPU
/// used to panic or compute from the wrong elements and the GPU's kernels would have read
/// outside their buffers: the CPU backends and the GPU code path on the emulator.
#[test]
fn ops_refuse_shapes_that_do_not_fit() {
    use gradcam::backend::gpu::{EmuLauncher, GpuBackend};
    refusals(&CpuBackend::fast());
    refusals(&CpuBackend::reference());
    refusals(&GpuBackend::new(EmuLauncher::new()));
}

fn refusals<B: Backend>(be: &B) {
    use gradcam::backend::{ElementRule, FullGradBy, WeightRule};
    let t = |s: &[usize]| be.upload(Tensor::new(s.to_vec(), vec![0.5; s.iter().product()]));
    let t = |s: &[usize]| t(s).unwrap();
    let (p, pool) = (Conv2dParams::new(1, 1), Pool2dParams::new(2, 2, 0));
    let x = t(&[1, 3, 8, 8]);
    let w = t(&[4, 3, 3, 3]);
    let a = t(&[1, 4, 2, 2]);
    let grouped = Conv2dParams { groups: 2, ..p };
    let no_stride = Conv2dParams {
        stride: (0, 1),
        ..p
    };
    let cases: Vec<(&str, gradcam::Result<B::Tensor>)> = vec![
        (
            "conv2d_fwd",
            be.conv2d_fwd(&x, &t(&[4, 5, 3, 3]), None, None, &p, false),
        ),
        (
            "conv2d_fwd",
            be.conv2d_fwd(&t(&[3, 8, 8]), &w, None, None, &p, false),
        ),
        (
            "conv2d_fwd",
            be.conv2d_fwd(&x, &w, None, Some(&t(&[5])), &p, false),
        ),
        (
            "conv2d_fwd",
            be.conv2d_fwd(&x, &t(&[4, 3, 11, 11]), None, None, &p, false),
        ),
        (
            "conv2d_fwd",
            be.conv2d_fwd(&x, &w, None, None, &grouped, false),
        ),
        (
            "conv2d_fwd",
            be.conv2d_fwd(&x, &w, None, None, &no_stride, false),
        ),
        (
            "conv2d_fwd_add_relu",
            be.conv2d_fwd_add_relu(&x, &w, None, None, &p, &a),
        ),
        (
            "conv2d_bwd_data",
            be.conv2d_bwd_data(&t(&[1, 5, 8, 8]), &w, (8, 8), &p),
        ),
        (
            "conv2d_bwd_data",
            be.conv2d_bwd_data(&t(&[1, 4, 8, 8]), &w, (16, 16), &p),
        ),
        ("relu_bwd", be.relu_bwd(&a, t(&[1, 4, 2, 3]), false)),
        ("max_pool2d_fwd", be.max_pool2d_fwd(&t(&[4, 8, 8]), &pool)),
        (
            "max_pool2d_fwd",
            be.max_pool2d_fwd(&t(&[1, 4, 1, 1]), &pool),
        ),
        (
            "max_pool2d_fwd",
            be.max_pool2d_fwd(&x, &Pool2dParams::new(3, 1, 2)),
        ),
        (
            "max_pool2d_bwd",
            be.max_pool2d_bwd(&x, &t(&[1, 3, 3, 3]), &pool),
        ),
        (
            "max_pool2d_tangent",
            be.max_pool2d_tangent(&x, &t(&[1, 3, 8, 7]), &pool),
        ),
        (
            "adaptive_avg_pool2d_fwd",
            be.adaptive_avg_pool2d_fwd(&x, (0, 1)),
        ),
        (
            "adaptive_avg_pool2d_fwd",
            be.adaptive_avg_pool2d_fwd(&t(&[3, 8, 8]), (1, 1)),
        ),
        (
            "adaptive_avg_pool2d_bwd",
            be.adaptive_avg_pool2d_bwd(&t(&[4, 1, 1]), (8, 8)),
        ),
        ("linear_fwd", be.linear_fwd(&t(&[2, 5]), &t(&[3, 4]), None)),
        (
            "linear_fwd",
            be.linear_fwd(&t(&[2, 4]), &t(&[3, 4]), Some(&t(&[2]))),
        ),
        (
            "linear_bwd_data",
            be.linear_bwd_data(&t(&[2, 5]), &t(&[3, 4])),
        ),
        ("add", be.add(t(&[2, 5]), &t(&[2, 4]))),
        (
            "channel_affine",
            be.channel_affine(t(&[1, 4, 2, 2]), &[1.0; 3], &[0.0; 4]),
        ),
        ("grad_pool", be.grad_pool(&t(&[4, 8]))),
        ("weighted_sum_relu", be.weighted_sum_relu(&a, &t(&[1, 3]))),
        (
            "cam_weights",
            be.cam_weights(WeightRule::XGradCam, &a, &t(&[1, 4, 2, 3])),
        ),
        ("fem_weights", be.fem_weights(&t(&[4, 2]), 0.0)),
        (
            "elementwise_cam_relu",
            be.elementwise_cam_relu(ElementRule::LayerCam, &a, &x),
        ),
        ("score_cam_inputs", be.score_cam_inputs(&x, &a, (2, 9))),
        (
            "score_cam_inputs",
            be.score_cam_inputs(&t(&[2, 3, 8, 8]), &a, (0, 2)),
        ),
        ("aug_copies", be.aug_copies(&t(&[3, 8, 8]), &[(true, 1.0)])),
        ("ablate_channels", be.ablate_channels(&a, (3, 9))),
        (
            "full_grad_add",
            be.full_grad_add(None, &a, FullGradBy::Bias(&[1.0; 3]), (8, 8)),
        ),
        ("reshape", be.reshape(t(&[2, 5]), &[3, 3])),
        // Empty planes, channel lists and layers (the CPU's loops went a plane at a time:
        // chunks of 0 panicked).
        ("grad_pool", be.grad_pool(&t(&[1, 1, 0, 0]))),
        (
            "weighted_sum_relu",
            be.weighted_sum_relu(&t(&[1, 1, 0, 0]), &t(&[1, 1])),
        ),
        (
            "channel_affine",
            be.channel_affine(t(&[1, 1, 0, 0]), &[1.0], &[0.0]),
        ),
        (
            "cam_weights",
            be.cam_weights(WeightRule::XGradCam, &t(&[1, 1, 0, 0]), &t(&[1, 1, 0, 0])),
        ),
        (
            "elementwise_cam_relu",
            be.elementwise_cam_relu(ElementRule::LayerCam, &t(&[1, 1, 0, 2]), &t(&[1, 1, 0, 2])),
        ),
        (
            "score_cam_inputs",
            be.score_cam_inputs(&t(&[1, 0, 4, 4]), &t(&[1, 2, 2, 2]), (0, 1)),
        ),
        (
            "max_pool2d_fwd",
            be.max_pool2d_fwd(&t(&[1, 1, 0, 0]), &Pool2dParams::new(2, 1, 1)),
        ),
        (
            "conv2d_fwd",
            be.conv2d_fwd(&x, &t(&[0, 3, 3, 3]), None, None, &p, false),
        ),
        (
            "conv2d_bwd_data",
            be.conv2d_bwd_data(&t(&[1, 4, 8, 8]), &t(&[4, 0, 3, 3]), (8, 8), &p),
        ),
        (
            "linear_fwd",
            be.linear_fwd(&t(&[2, 3]), &t(&[0, 3]), Some(&t(&[0]))),
        ),
        (
            "linear_bwd_data",
            be.linear_bwd_data(&t(&[2, 0]), &t(&[0, 3])),
        ),
        (
            "preprocess",
            be.preprocess(&be.upload_images(&[]).unwrap(), (0, 4), &Default::default()),
        ),
    ];
    for (i, (op, r)) in cases.into_iter().enumerate() {
        match r {
            Ok(_) => panic!("{}: case {i} ({op}) was not refused", be.name()),
            Err(e) => assert!(e.to_string().contains(op), "{}: case {i}: {e}", be.name()),
        }
    }
    let prepared = [
        be.conv2d_prepare(&t(&[4, 3, 3]), &p).map(|_| ()),
        // 4 filters in 3 groups.
        be.conv2d_prepare(&w, &Conv2dParams { groups: 3, ..p })
            .map(|_| ()),
    ];
    for r in prepared {
        assert!(r.unwrap_err().to_string().contains("conv2d_prepare"));
    }
    // Filters prepared for one conv and given with another's (the CPU's Winograd transform
    // of 16 channels for 32; backends that prepare nothing have nothing to refuse).
    let w16 = t(&[8, 16, 3, 3]);
    if let Some(pr) = be.conv2d_prepare(&w16, &p).unwrap() {
        let (x32, w32) = (t(&[1, 32, 6, 6]), t(&[8, 32, 3, 3]));
        let e = be.conv2d_fwd(&x32, &w32, Some(&pr), None, &p, false).err();
        assert!(e.expect("refused").to_string().contains("prepared filters"));
        let e = be.conv2d_fwd_add_relu(&x32, &w32, Some(&pr), None, &p, &t(&[1, 8, 6, 6]));
        assert!(e
            .err()
            .expect("refused")
            .to_string()
            .contains("prepared filters"));
    }
    // Filters prepared for 5 outputs given with 8 (one panel of the packed GEMM's rows holds
    // either): a 1×1 conv (the packed matrix) and a 3×3 one over 16 channels (Winograd).
    for (r, c, h) in [(1, 4, 5), (3, 16, 6)] {
        let p = Conv2dParams::new(1, r / 2);
        let (w5, w8, x) = (t(&[5, c, r, r]), t(&[8, c, r, r]), t(&[1, c, h, h]));
        if let Some(pr) = be.conv2d_prepare(&w5, &p).unwrap() {
            let e = be.conv2d_fwd(&x, &w8, Some(&pr), None, &p, false).err();
            let e = e.expect("5 filters' preparation refused for 8");
            assert!(e.to_string().contains("prepared filters"), "{e}");
        }
    }
    let maps = Tensor::zeros([2, 4, 4]);
    let none = be.upload_images(&[]).unwrap();
    let e = be
        .overlays(&none, &maps, &Default::default())
        .err()
        .expect("2 maps for no images");
    assert!(e.to_string().contains("overlays"), "{e}");
    // And what fits still runs.
    let y = be
        .conv2d_fwd(&x, &w, None, Some(&t(&[4])), &p, true)
        .unwrap();
    assert_eq!(be.shape(&y), [1, 4, 8, 8]);
}
