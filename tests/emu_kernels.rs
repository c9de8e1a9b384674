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
}
