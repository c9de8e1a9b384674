//! Compiles kernels/*.cu as C++ against the CUDA emulator (kernels/emu/cuda_emu.h), so every
//! kernel can run in tests on machines without a GPU, and writes the name → entry table.

use std::fmt::Write as _;
use std::path::PathBuf;

/// `extern "C" __global__ void [BOUNDS] NAME(` entry points of a kernel file, in order; BOUNDS
/// is an upper-case macro standing for `__launch_bounds__(...)`.
fn kernel_names(src: &str) -> Vec<String> {
    let marker = "extern \"C\" __global__ void ";
    src.match_indices(marker)
        .filter_map(|(i, _)| {
            let rest = &src[i + marker.len()..];
            let end = rest.find('(')?;
            let words = rest[..end].split_whitespace().collect::<Vec<_>>();
            words.last().map(|w| w.to_string())
        })
        .collect()
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let kernels = root.join("kernels");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=kernels");

    let mut files: Vec<PathBuf> = std::fs::read_dir(&kernels)
        .expect("kernels/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .define("GRADCAM_EMU", "1")
        .include(&kernels)
        .include(kernels.join("emu"))
        .warnings(false)
        .opt_level(2);
    let mut table = String::from(
        "#include <stddef.h>\nstruct gradcam_emu_kernel { const char* name; void (*entry)(void**); };\n",
    );
    let mut rows = Vec::new();
    let mut entries = Vec::new(); // (kernel, file) for the CUDA launcher
    for f in &files {
        let src = std::fs::read_to_string(f).expect("readable kernel file");
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        let mut tu = format!("#include \"cuda_emu.h\"\n#include \"{}\"\n", f.display());
        for k in kernel_names(&src) {
            entries.push(format!("    (\"{k}\", \"{stem}.cu\"),"));
            writeln!(
                tu,
                "extern \"C\" void gradcam_emu_entry_{k}(void** a) {{ emu::call({k}, a); }}"
            )
            .unwrap();
            writeln!(table, "extern \"C\" void gradcam_emu_entry_{k}(void**);").unwrap();
            rows.push(format!("{{\"{k}\", gradcam_emu_entry_{k}}}"));
        }
        let path = out.join(format!("emu_{stem}.cpp"));
        std::fs::write(&path, tu).unwrap();
        build.file(path);
    }
    writeln!(
        table,
        "extern \"C\" const gradcam_emu_kernel gradcam_emu_kernels[] = {{{}}};\n\
         extern \"C\" const size_t gradcam_emu_kernel_count = {};",
        rows.join(", "),
        rows.len()
    )
    .unwrap();
    let table_path = out.join("emu_table.cpp");
    std::fs::write(&table_path, table).unwrap();
    build.file(table_path).file(kernels.join("emu/launch.cpp"));
    build.compile("gradcam_emu");

    // The same sources embedded for NVRTC (run-time compilation on a real GPU).
    let mut embed = String::from("/// Kernel files (name, source), embedded by build.rs.\npub const SOURCES: &[(&str, &str)] = &[\n");
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy();
        writeln!(
            embed,
            "    (\"{name}\", include_str!({:?})),",
            f.display().to_string()
        )
        .unwrap();
    }
    embed.push_str(
        "];\n/// Headers the kernel files include.\npub const HEADERS: &[(&str, &str)] = &[\n",
    );
    let mut headers: Vec<PathBuf> = std::fs::read_dir(&kernels)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cuh"))
        .collect();
    headers.sort();
    for h in &headers {
        let name = h.file_name().unwrap().to_string_lossy();
        writeln!(
            embed,
            "    (\"{name}\", include_str!({:?})),",
            h.display().to_string()
        )
        .unwrap();
    }
    embed.push_str("];\n/// Entry points (kernel, file), as the emulator's table lists them.\n");
    embed.push_str("pub const ENTRIES: &[(&str, &str)] = &[\n");
    embed.push_str(&entries.join("\n"));
    embed.push_str("\n];\n");
    std::fs::write(out.join("kernel_sources.rs"), embed).unwrap();
}
