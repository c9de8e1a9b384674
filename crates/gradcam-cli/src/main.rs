//! `gradcam`: Grad-CAM explanations for whole folders of images.

mod bench;
mod eval;
mod explain;
mod inputs;
mod layers;
mod selftest;
mod synth;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use gradcam::image::InputSize;

#[derive(Parser)]
#[command(
    name = "gradcam",
    version,
    about = "Grad-CAM explanations at data-set scale"
)]
struct Cli {
    /// Worker threads (default: every core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Explain images: writes <stem>.overlay.png, <stem>.cam.npy and <stem>.json per image.
    Explain(explain::ExplainArgs),
    /// List every layer of a model (torchvision module paths) with its output shape.
    Layers(layers::LayersArgs),
    /// The paper's evaluations over a labelled manifest: localisation error, pointing game,
    /// faithfulness, deletion / insertion, each method against a centre-prior baseline.
    Eval(eval::EvalArgs),
    /// Measure images/s and time per stage of the whole pipeline.
    Bench(bench::BenchArgs),
    /// Check every op of a backend against the naive CPU ops (`--device emu`: the CUDA kernels
    /// on the CPU emulator).
    Selftest(selftest::SelftestArgs),
    /// Write a checkpoint with random weights (torchvision names) for benchmarks and tests.
    RandomWeights(synth::SynthArgs),
}

/// Options shared by every command that loads a model.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Weights in safetensors with torchvision's state_dict names (default: the bundled demo
    /// model, a small ResNet trained on synthetic shapes; see assets/demo).
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Force the architecture instead of detecting it (vgg11..vgg19[_bn], resnet18..resnet152).
    #[arg(long)]
    arch: Option<String>,
    /// Where to compute: `auto` picks the best available backend (today: the CPU).
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Device {
    Auto,
    Cpu,
}

/// `224` (any integer S: resize to S×S) or `native` (keep each image's size).
pub fn parse_size(s: &str) -> Result<InputSize, String> {
    if s.eq_ignore_ascii_case("native") {
        return Ok(InputSize::Native);
    }
    match s.parse::<usize>() {
        Ok(n) if (1..=8192).contains(&n) => Ok(InputSize::Square(n)),
        _ => Err(format!("`{s}` is neither `native` nor a size in 1..=8192")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(t) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build_global()
        {
            eprintln!("error: cannot set up {t} threads: {e}");
            return ExitCode::from(2);
        }
    }
    let result = match cli.cmd {
        Cmd::Explain(a) => explain::run(a),
        Cmd::Layers(a) => layers::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Eval(a) => eval::run(a),
        Cmd::RandomWeights(a) => synth::run(a),
        Cmd::Selftest(a) => selftest::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The demo model, compiled into the binary so the first run needs no files.
static DEMO_MODEL: &[u8] = include_bytes!("../../../assets/demo/model.safetensors");

/// The model named on the command line, or the bundled demo model.
pub fn load_graph(
    model: Option<&std::path::Path>,
    arch: Option<&str>,
) -> anyhow::Result<gradcam::model::Graph> {
    let weights = match model {
        Some(p) => gradcam::model::Weights::open(p)?,
        None => gradcam::model::Weights::from_static("<bundled demo model>", DEMO_MODEL)?,
    };
    Ok(gradcam::model::build(&weights, arch)?)
}

/// `--size` if given, else the model's own input size (metadata), else 224.
pub fn input_size(given: Option<InputSize>, g: &gradcam::model::Graph) -> InputSize {
    given.or(g.input_size).unwrap_or(InputSize::Square(224))
}

pub fn load_network(
    m: &ModelArgs,
) -> anyhow::Result<gradcam::model::Network<gradcam::backend::CpuBackend>> {
    if m.model.is_none() {
        eprintln!("note: no --model given: using the bundled demo model (8 synthetic shapes)");
    }
    let graph = load_graph(m.model.as_deref(), m.arch.as_deref())?;
    let backend = gradcam::backend::CpuBackend::fast();
    Ok(gradcam::model::Network::new(graph, backend)?)
}
