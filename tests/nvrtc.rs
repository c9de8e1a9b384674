//! Every kernel file compiles with NVRTC for sm_80 and sm_90 (CUBIN) and to PTX. Needs
//! libnvrtc (no GPU): skipped when it cannot be found, unless GRADCAM_REQUIRE_NVRTC is set
//! (.ci/run sets it and installs nvidia-cuda-nvrtc from PyPI).

use gradcam::backend::kernels::{compile_arch, SOURCES};
use gradcam::backend::nvrtc::{Nvrtc, Target};

fn nvrtc() -> Option<Nvrtc> {
    match Nvrtc::find() {
        Ok(n) => Some(n),
        Err(e) if std::env::var_os("GRADCAM_REQUIRE_NVRTC").is_some() => panic!("{e}"),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    let Some(n) = nvrtc() else { return };
    eprintln!(
        "NVRTC {}.{} from {}",
        n.version.0,
        n.version.1,
        n.path().display()
    );
    assert!(!SOURCES.is_empty());
    for (file, _) in SOURCES {
        for arch in ["sm_80", "sm_90"] {
            let cubin = n.compile(file, arch, Target::Cubin).unwrap();
            assert_eq!(
                &cubin[..4],
                b"\x7fELF",
                "{file} {arch}: a CUBIN is an ELF file"
            );
        }
        let ptx = String::from_utf8(n.compile(file, "sm_80", Target::Ptx).unwrap()).unwrap();
        // Each extern "C" entry point keeps its name (no C++ mangling).
        for line in SOURCES.iter().find(|(f, _)| f == file).unwrap().1.lines() {
            if let Some(rest) = line.strip_prefix("extern \"C\" __global__ void ") {
                // `[BOUNDS] name(`: the last word before the parenthesis.
                let name = rest
                    .split('(')
                    .next()
                    .unwrap()
                    .split_whitespace()
                    .last()
                    .unwrap();
                assert!(
                    ptx.contains(&format!(".entry {name}(")),
                    "{file}: {name} missing from PTX"
                );
            }
        }
    }
}

#[test]
fn compiler_errors_name_the_file_and_show_the_log() {
    let Some(n) = nvrtc() else { return };
    let e = n
        .compile("cam.cu", "sm_1", Target::Cubin)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cam.cu") || e.contains("status"), "{e}");
    assert!(n.compile("nope.cu", "sm_90", Target::Cubin).is_err());
}

/// Prints ptxas's registers / spills / shared memory per kernel for sm_90 (sm_90a for
/// conv_wgmma.cu; run with `--nocapture`); fails if any kernel spills, keeps an array in local
/// memory (a stack frame: a register array indexed by a value the compiler could not unroll),
/// or has its wgmma serialized.
#[test]
fn ptxas_resource_report_has_no_spills() {
    let Some(n) = nvrtc() else { return };
    for (file, _) in SOURCES {
        // As a Hopper GPU builds it (conv_wgmma.cu for sm_90a).
        let report = n
            .resource_report(file, &compile_arch(file, "sm_90"))
            .unwrap();
        eprintln!("== {file}\n{report}");
        assert!(
            report.contains("registers"),
            "{file}: no ptxas report in the log:\n{report}"
        );
        // ptxas runs wgmma one at a time (warning C7510) when it cannot prove the pipeline
        // safe: correct, but the speed would be gone without a word.
        assert!(
            !report.contains("C7510") && !report.contains("serialized"),
            "{file}: wgmma serialized:\n{report}"
        );
        for line in report.lines().filter(|l| l.contains("spill")) {
            assert!(
                line.contains("0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"),
                "{file}: {line}"
            );
        }
    }
}

/// Cache entries are keyed by file, architecture and NVRTC version; a stored module comes back
/// byte for byte, and a cache folder that cannot be written only costs a recompile.
#[test]
fn module_cache_keys_and_round_trip() {
    use gradcam::backend::module_cache::ModuleCache;
    let dir = tempfile::tempdir().unwrap();
    let a = ModuleCache::in_dir(dir.path(), "sm_90", (13, 0));
    let paths = [
        a.path("conv.cu").unwrap(),
        a.path("cam.cu").unwrap(),
        ModuleCache::in_dir(dir.path(), "sm_80", (13, 0))
            .path("conv.cu")
            .unwrap(),
        ModuleCache::in_dir(dir.path(), "sm_90", (12, 9))
            .path("conv.cu")
            .unwrap(),
    ];
    for (i, p) in paths.iter().enumerate() {
        for q in &paths[i + 1..] {
            assert_ne!(p, q, "two cache entries share a key");
        }
    }
    assert_eq!(a.path("conv.cu"), a.path("conv.cu"), "the key is stable");
    assert!(a.path("nope.cu").is_none());
    assert!(a.get("conv.cu").is_none());
    a.put("conv.cu", b"\x7fELF module bytes");
    assert_eq!(a.get("conv.cu").unwrap(), b"\x7fELF module bytes");
    assert!(a.get("cam.cu").is_none());

    let blocked = dir.path().join("a-file");
    std::fs::write(&blocked, b"").unwrap();
    let c = ModuleCache::in_dir(&blocked.join("sub"), "sm_90", (13, 0));
    c.put("conv.cu", b"x");
    assert!(c.get("conv.cu").is_none());
}

/// The TF32, BF16 and F16 convolutions really use the tensor cores: their PTX holds the mma.sync
/// (the emulator runs the shuffle twins and plain copies instead, so only this shows it).
#[test]
fn tensor_core_convolutions_compile_to_mma_sync() {
    let Some(n) = nvrtc() else { return };
    let ptx = String::from_utf8(n.compile("conv.cu", "sm_80", Target::Ptx).unwrap()).unwrap();
    let body = |entry: &str| entry_body(&ptx, entry).to_string();
    for entry in ["conv2d_fwd_tf32", "conv2d_bwd_data_tf32"] {
        let b = body(entry);
        assert!(
            b.contains("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"),
            "{entry}: no mma.sync"
        );
        assert!(b.contains("cvt.rna.tf32.f32"), "{entry}: no TF32 rounding");
    }
    for t in ["bf16", "f16"] {
        for op in ["conv2d_fwd", "conv2d_bwd_data"] {
            for tile in ["", "_t128"] {
                let entry = format!("{op}_{t}{tile}");
                let mma = format!("mma.sync.aligned.m16n8k16.row.col.f32.{t}.{t}.f32");
                assert!(body(&entry).contains(&mma), "{entry}: no {mma}");
            }
        }
    }
    // F16 operands are packed by the hardware conversion, not the emulator's software twin.
    assert!(body("conv2d_fwd_f16").contains("cvt.rn.f16x2.f32"));
    assert!(!body("conv2d_fwd_f32").contains("mma.sync"));
    // The experimental ring: operands by cp.async (B by 4 bytes with a zero-fill size
    // operand, the KRSC weights by 16), waited on in groups, then the same mma.sync.
    for entry in ["conv2d_fwd_tf32_async", "conv2d_fwd_tf32_t128_async"] {
        let b = body(entry);
        for needle in [
            "cp.async.ca.shared.global",
            "cp.async.cg.shared.global",
            "cp.async.wait_group",
            "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
        ] {
            assert!(b.contains(needle), "{entry}: no {needle}");
        }
    }
    // The ring with B by vectors: 16-byte copies for TF32; 8-byte copies of 16-bit elements,
    // read as fragments by the transposing matrix load, then the 16-bit mma.
    for tile in ["", "_t128"] {
        let b = body(&format!("conv2d_fwd_tf32{tile}_async_vec"));
        assert!(b.contains("cp.async.cg.shared.global") && b.contains("m16n8k8"));
        for t in ["bf16", "f16"] {
            let entry = format!("conv2d_fwd_{t}{tile}_async_vec");
            let b = body(&entry);
            for needle in [
                "cp.async.ca.shared.global".to_string(),
                "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16".to_string(),
                format!("mma.sync.aligned.m16n8k16.row.col.f32.{t}.{t}.f32"),
            ] {
                assert!(b.contains(&needle), "{entry}: no {needle}");
            }
            assert!(
                b.lines()
                    .any(|l| l.contains("cp.async.ca") && l.contains(", 8,")),
                "{entry}: no 8-byte copies"
            );
        }
    }
    // `_vec` stages B by vectors too: 8-byte loads for 16-bit types, more 16-byte ones for TF32.
    let loads = |entry: &str, what: &str| {
        body(entry)
            .lines()
            .filter(|l| l.contains("ld.global") && l.contains(what))
            .count()
    };
    for tile in ["", "_t128"] {
        for t in ["bf16", "f16"] {
            let entry = format!("conv2d_fwd_{t}{tile}_vec");
            assert!(loads(&entry, ".v2.u32") > 0, "{entry}: no 8-byte loads");
        }
        let (vec, krsc) = (
            format!("conv2d_fwd_tf32{tile}_vec"),
            format!("conv2d_fwd_tf32{tile}_krsc"),
        );
        assert!(
            loads(&vec, ".v4.u32") > loads(&krsc, ".v4.u32"),
            "{vec}: B not by vectors"
        );
    }
    // The ring's dynamic shared memory is 16-byte aligned for its 16-byte copies.
    let ring: Vec<&str> = ptx
        .lines()
        .filter(|l| l.contains(".extern .shared"))
        .collect();
    assert!(
        !ring.is_empty() && ring.iter().all(|l| l.contains(".align 16")),
        "{ring:?}"
    );
    // The shared pools those vector stores go to are 16-byte aligned (a misaligned st.shared.v4
    // faults on a GPU; the emulator would not notice).
    let pools: Vec<&str> = ptx
        .lines()
        .filter(|l| l.contains(".shared") && l.contains("smem_pool"))
        .collect();
    assert!(!pools.is_empty(), "no shared pool in the PTX");
    for l in pools {
        assert!(l.contains(".align 16"), "{l}");
    }
    // KRSC weights: one 16-byte load and store per vector of A, no TF32 rounding in the loop
    // for them (made at load time); B is still rounded as it is staged.
    for t in ["tf32", "bf16", "f16"] {
        for (tile, kind) in [
            ("", "krsc"),
            ("_t128", "krsc"),
            ("", "vec"),
            ("_t128", "vec"),
        ] {
            let entry = format!("conv2d_fwd_{t}{tile}_{kind}");
            let b = body(&entry);
            assert!(
                b.contains("ld.global.nc.v4.u32") || b.contains("ld.global.v4.u32"),
                "{entry}: no vector load"
            );
            assert!(b.contains("st.shared.v4.u32"), "{entry}: no vector store");
            assert!(b.contains("mma.sync.aligned"), "{entry}: no mma.sync");
            // The epilogue through shared memory: runs read back by 16-byte loads, the output
            // written 4 pixels at a time (16 bytes f32, 8 for 16-bit types).
            assert!(
                b.contains("ld.shared.v4"),
                "{entry}: runs not read by vectors"
            );
            let out = if t == "tf32" {
                "st.global.v4"
            } else {
                "st.global.v2"
            };
            assert!(b.contains(out), "{entry}: output not stored by vectors");
        }
    }
}

/// The channels-last convolutions: both operands by 16-byte cp.async copies (zero-filled outside
/// the image), the fragments by the plain (not transposed) matrix load, the mma, and the output
/// by 16-byte stores of 8 channels (TF32 rounding it).
#[test]
fn channels_last_convolutions_compile_to_cp_async_ldmatrix_and_mma() {
    let Some(n) = nvrtc() else { return };
    let ptx = String::from_utf8(n.compile("conv_nhwc.cu", "sm_80", Target::Ptx).unwrap()).unwrap();
    for t in ["bf16", "f16"] {
        for tile in ["", "_t128", "_t128_s4", "_t128_w4", "_k64", "_t128_k64"] {
            let entry = format!("conv2d_fwd_nhwc_{t}{tile}");
            let b = entry_body(&ptx, &entry);
            for needle in [
                "cp.async.cg.shared.global".to_string(),
                "cp.async.wait_group".to_string(),
                "ldmatrix.sync.aligned.m8n8.x4.shared.b16".to_string(),
                format!("mma.sync.aligned.m16n8k16.row.col.f32.{t}.{t}.f32"),
                "st.global.v4.u32".to_string(),
            ] {
                assert!(b.contains(&needle), "{entry}: no {needle}");
            }
            assert!(
                !b.contains("ldmatrix.sync.aligned.m8n8.x4.trans"),
                "{entry}"
            );
        }
    }
    for tile in ["", "_t128"] {
        let entry = format!("conv2d_fwd_nhwc_tf32{tile}");
        let b = entry_body(&ptx, &entry);
        for needle in [
            "cp.async.cg.shared.global",
            "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
            "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
            "cvt.rna.tf32.f32",
            "st.global.v4.u32",
        ] {
            assert!(b.contains(needle), "{entry}: no {needle}");
        }
    }
}

/// The wgmma convolutions, built for sm_90a as on a Hopper GPU: both operands by 16-byte
/// cp.async copies, made visible to the tensor cores by the proxy fence, the warpgroup MMA of
/// their type (four k-steps per slice, with the fence, commit and wait around them), the output
/// by 16-byte stores, the ring of 4 stages (6 for `_s6`); no mma.sync. Built for plain sm_90
/// (any other device) they are traps.
#[test]
fn wgmma_convolutions_compile_to_wgmma_for_sm_90a() {
    let Some(n) = nvrtc() else { return };
    let arch = compile_arch("conv_wgmma.cu", "sm_90");
    assert_eq!(arch, "sm_90a");
    let ptx = String::from_utf8(n.compile("conv_wgmma.cu", &arch, Target::Ptx).unwrap()).unwrap();
    assert!(ptx.contains(".target sm_90a"), "not built for sm_90a");
    for (t, k) in [("tf32", 8), ("bf16", 16), ("f16", 16)] {
        for m in ["64", "128", "128_s6", "256"] {
            let entry = format!("conv2d_fwd_wgmma_{t}_m{m}");
            let b = entry_body(&ptx, &entry);
            for needle in [
                "cp.async.cg.shared.global".to_string(),
                "fence.proxy.async.shared::cta".to_string(),
                "wgmma.fence.sync.aligned".to_string(),
                format!("wgmma.mma_async.sync.aligned.m64n128k{k}.f32.{t}.{t}"),
                "wgmma.commit_group.sync.aligned".to_string(),
                "wgmma.wait_group.sync.aligned".to_string(),
                "st.global.v4.u32".to_string(),
            ] {
                assert!(b.contains(&needle), "{entry}: no {needle}");
            }
            assert!(!b.contains("mma.sync") && !b.contains("trap;"), "{entry}");
            // The ring's depth: slice k waits for its copies with STAGES - 3 groups still out.
            let (depth, not) = if m.ends_with("_s6") { (3, 1) } else { (1, 3) };
            assert!(
                b.contains(&format!("cp.async.wait_group {depth};"))
                    && !b.contains(&format!("cp.async.wait_group {not};")),
                "{entry}: not a ring of {} stages",
                depth + 3
            );
        }
        let check = format!("wgmma_check_{t}");
        assert!(
            entry_body(&ptx, &check).contains("wgmma.mma_async"),
            "{check}"
        );
    }
    let plain =
        String::from_utf8(n.compile("conv_wgmma.cu", "sm_90", Target::Ptx).unwrap()).unwrap();
    let b = entry_body(&plain, "conv2d_fwd_wgmma_bf16_m128");
    assert!(!b.contains("wgmma.mma_async") && b.contains("trap;"));
}

/// 16-bit linear layers on the tensor cores; f32 (and TF32 precision, whose linear layers are
/// f32 as torch's are by default) on FMAs.
#[test]
fn sixteen_bit_linear_layers_compile_to_mma_sync() {
    let Some(n) = nvrtc() else { return };
    let ptx = String::from_utf8(n.compile("linear.cu", "sm_80", Target::Ptx).unwrap()).unwrap();
    for t in ["bf16", "f16"] {
        for op in ["linear_fwd", "linear_bwd_data"] {
            let entry = format!("{op}_{t}");
            let needle = format!("mma.sync.aligned.m16n8k16.row.col.f32.{t}.{t}.f32");
            assert!(
                entry_body(&ptx, &entry).contains(&needle),
                "{entry}: no {needle}"
            );
        }
    }
    for op in ["linear_fwd_f32", "linear_bwd_data_f32"] {
        assert!(!entry_body(&ptx, op).contains("mma.sync"), "{op}");
    }
}

/// The PTX of one entry point: from its `.entry` line to the next one.
fn entry_body<'a>(ptx: &'a str, entry: &str) -> &'a str {
    let start = ptx
        .find(&format!(".entry {entry}("))
        .unwrap_or_else(|| panic!("no entry {entry}"));
    let end = ptx[start + 1..]
        .find(".entry ")
        .map_or(ptx.len(), |e| start + 1 + e);
    &ptx[start..end]
}
