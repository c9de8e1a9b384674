//! `gradcam random-weights`: a torchvision-named checkpoint with random weights for any
//! supported architecture, for benchmarks and tests without downloads.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use gradcam::model::synth;
use safetensors::Dtype;

#[derive(Args)]
pub struct SynthArgs {
    /// vgg11..vgg19[_bn], resnet18..resnet152, wide_resnet50_2/101_2, resnext50_32x4d,
    /// resnext101_32x8d/64x4d
    #[arg(long)]
    arch: String,
    /// The checkpoint to write (over an existing file only if that is a safetensors file).
    #[arg(long, short)]
    out: PathBuf,
    /// Divide every width by this (narrow models for quick tests).
    #[arg(long, default_value_t = 1)]
    width_div: usize,
    #[arg(long, default_value_t = 1000)]
    classes: usize,
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    dtype: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: SynthArgs) -> anyhow::Result<ExitCode> {
    let dtype = match a.dtype.as_str() {
        "f16" => Dtype::F16,
        "bf16" => Dtype::BF16,
        _ => Dtype::F32,
    };
    anyhow::ensure!(a.width_div >= 1, "--width-div must be at least 1");
    anyhow::ensure!(a.classes >= 1, "--classes must be at least 1");
    anyhow::ensure!(
        !a.out.exists() || is_safetensors(&a.out),
        "--out {}: it exists and is not a safetensors file; not written over",
        a.out.display()
    );
    let dict = synth::state_dict(&a.arch, a.width_div, a.classes, a.seed)?;
    synth::write(&a.out, &dict, dtype)?;
    eprintln!("wrote {} ({} tensors)", a.out.display(), dict.len());
    Ok(ExitCode::SUCCESS)
}

/// Whether the file starts as a safetensors file does: an 8-byte header length, then `{`.
fn is_safetensors(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 9];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head[8] == b'{')
}
