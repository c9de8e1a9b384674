//! `gradcam`: Grad-CAM explanations for whole folders of images.

/// Runs `$body` with `$net` bound to the concrete network inside an [`AnyNetwork`]: the
/// commands are written once, generic over the backend.
macro_rules! with_network {
    ($any:expr, $net:ident => $body:expr) => {
        match $any {
            $crate::AnyNetwork::Cpu($net) => $body,
            $crate::AnyNetwork::Cuda($net) => $body,
            $crate::AnyNetwork::Emu($net) => $body,
        }
    };
}

mod bench;
mod classes;
mod dff;
mod eval;
mod explain;
mod inputs;
mod layers;
mod mean_maps;
mod memory;
mod pass_size;
mod resume;
mod selftest;
mod summarize;
mod summary;
mod synth;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use gradcam::backend::gpu::{CudaLauncher, EmuLauncher, GpuBackend, Precision};
use gradcam::backend::Backend;
use gradcam::backend::CpuBackend;
use gradcam::image::InputSize;
use gradcam::model::{Network, MAX_INPUT_SIDE};

/// The environment variables a user may set (the README says more; the `GRADCAM_CONV_*`
/// tuning switches are for comparisons and left out).
const ENVIRONMENT: &str = "\
Environment:
  GRADCAM_MEMORY        Cap on the host memory a run plans for (8G, 512M, bytes): images per
                        pass, chunks, and which images are refused as too large
  GRADCAM_JPEG_DECODER  `image`: the image crate's faster JPEG decoder instead of `libjpeg`
                        (the default, whose pixels are cv2's)
  GRADCAM_NVRTC         The libnvrtc to compile the CUDA kernels with (a file)
  GRADCAM_CACHE_DIR     Where compiled kernels are kept (default ~/.cache/gradcam/kernels;
                        `off`: none)
  RAYON_NUM_THREADS     Worker threads, where --threads is not given";

#[derive(Parser)]
#[command(
    name = "gradcam",
    version,
    about = "Grad-CAM explanations at data-set scale",
    after_help = ENVIRONMENT
)]
struct Cli {
    /// Worker threads (default, or 0: every core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Explain images: writes <stem>.overlay.png, <stem>.cam.npy and <stem>.json per image
    /// (`--outputs`) and summary.csv, a row per image.
    Explain(explain::ExplainArgs),
    /// List every layer of a model (torchvision module paths) with its output shape.
    Layers(layers::LayersArgs),
    /// The paper's evaluations over a labelled manifest: localisation error, pointing game,
    /// faithfulness, deletion / insertion, Average Drop / Increase in Confidence, Complexity
    /// and Coherency, each method against a centre-prior baseline.
    Eval(eval::EvalArgs),
    /// Deep Feature Factorization: k concepts shared by all the images given (NMF of the
    /// layer's activations, as pytorch-grad-cam), each named by the network's classes;
    /// writes <stem>.dff.png per image, dff.json, concepts.npy and concepts_by_group.csv.
    Dff(dff::DffArgs),
    /// A summary.csv per class (or folder): images, failures, accuracy, where the maps look;
    /// groups whose maps lean most on the image's borders first.
    Summarize(summarize::SummarizeArgs),
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
    /// Weights with torchvision's state_dict names: safetensors, or a torch.save .pth/.pt
    /// (default: the bundled demo model, a small ResNet trained on synthetic shapes; see
    /// assets/demo).
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Force the architecture instead of detecting it (vgg11..vgg19[_bn], resnet18..resnet152).
    #[arg(long)]
    arch: Option<String>,
    /// Where to compute: `auto` uses the GPU when there is a usable one, else the CPU.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// Arithmetic on a GPU: `tf32` (default; tensor-core convolutions, PyTorch's default for
    /// cuDNN), `f32` (exact, as on the CPU), `bf16` or `f16` (16-bit tensors and tensor cores,
    /// f32 accumulation; f16 is finer, bf16 has f32's range). The CPU computes in f32, or with
    /// `bf16` its convolutions in bf16 on AMX tiles where it has them (Xeon since Sapphire
    /// Rapids).
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
    /// The input normalisation the model was trained with, per RGB channel on [0, 1]
    /// (torchvision's `transforms.Normalize(mean, std)`), e.g. `--mean 0.5,0.5,0.5 --std
    /// 0.5,0.5,0.5`: default the model file's metadata `mean` and `std`, else ImageNet's
    /// (0.485,0.456,0.406 and 0.229,0.224,0.225, every torchvision weight's).
    #[arg(long, requires = "std", value_parser = parse_mean)]
    mean: Option<[f32; 3]>,
    /// With --mean: the normalisation's standard deviations, each positive.
    #[arg(long, requires = "mean", value_parser = parse_std)]
    std: Option<[f32; 3]>,
}

fn parse_mean(s: &str) -> Result<[f32; 3], String> {
    let m = gradcam::image::Normalization::triple(s, "--mean").map_err(|e| e.to_string())?;
    gradcam::image::Normalization::new(m, [1.0; 3]).map_err(|e| e.to_string())?;
    Ok(m)
}

fn parse_std(s: &str) -> Result<[f32; 3], String> {
    let v = gradcam::image::Normalization::triple(s, "--std").map_err(|e| e.to_string())?;
    gradcam::image::Normalization::new([0.0; 3], v).map_err(|e| e.to_string())?;
    Ok(v)
}

impl ModelArgs {
    fn precision(&self) -> Precision {
        self.precision.unwrap_or(PrecisionArg::Tf32).into()
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum PrecisionArg {
    F32,
    Tf32,
    Bf16,
    F16,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::Tf32 => Precision::Tf32,
            PrecisionArg::Bf16 => Precision::Bf16,
            PrecisionArg::F16 => Precision::F16,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Device {
    /// The GPU if one is usable (driver, device, NVRTC), else the CPU with a notice.
    Auto,
    Cpu,
    /// The first NVIDIA GPU; an error naming what is missing when there is none.
    #[value(alias = "gpu")]
    Cuda,
    /// The CUDA kernels on the CPU emulator (very slow; for testing the GPU code path).
    Emu,
}

/// `224` (any integer S: resize to S×S) or `native` (keep each image's size).
pub fn parse_size(s: &str) -> Result<InputSize, String> {
    if s.eq_ignore_ascii_case("native") {
        return Ok(InputSize::Native);
    }
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_INPUT_SIDE).contains(&n) => Ok(InputSize::Square(n)),
        _ => Err(format!(
            "`{s}` is neither `native` nor a size in 1..={MAX_INPUT_SIDE}"
        )),
    }
}

fn main() -> ExitCode {
    // A reader of stdout that stops early (`gradcam layers m.safetensors | head`) ends the
    // process quietly, as it ends other command-line tools, rather than making println!
    // panic on the broken pipe (Rust ignores SIGPIPE).
    #[cfg(unix)]
    // SAFETY: first thing in main, before any other thread; restores the default action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    // Layer outputs of megabytes are reused instead of faulted in afresh (7-8 % on the CPU).
    gradcam::backend::cpu::retain_freed_memory();
    // A typo (`--threads 100000`) would look like a hang: every thread is started and the
    // work cut as finely. RAYON_NUM_THREADS, which rayon reads otherwise, is held to it too.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = (8 * cores).max(64);
    let env = std::env::var("RAYON_NUM_THREADS").ok();
    let asked = match (cli.threads, env.as_deref().map(str::trim)) {
        (Some(t), _) => Some((t, "--threads")),
        (None, Some(v)) => match v.parse() {
            Ok(t) => Some((t, "RAYON_NUM_THREADS")),
            Err(_) => {
                // (rayon ignores it too.)
                eprintln!(
                    "warning: RAYON_NUM_THREADS={v} is not a number of threads; using every core"
                );
                None
            }
        },
        (None, None) => None,
    };
    if let Some((t, what)) = asked.filter(|&(t, _)| t > most) {
        eprintln!(
            "error: {what} {t}: more threads than this machine's {cores} core(s) can use (at \
             most {most}: 8 per core, or 64); leave it out to use every core"
        );
        return ExitCode::from(2);
    }
    // (0: rayon's default, every core. The count is given to rayon whichever way it came:
    // rayon reads RAYON_NUM_THREADS untrimmed, and ` 1 ` would be every core.)
    if let Some((t, _)) = asked {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
        {
            eprintln!("error: cannot set up {t} threads: {e}");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = memory::check_env().and(gradcam::image::jpeg_decoder_env()) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.cmd {
        Cmd::Explain(a) => explain::run(a),
        Cmd::Layers(a) => layers::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Eval(a) => eval::run(a),
        Cmd::Dff(a) => dff::run(a),
        Cmd::Summarize(a) => summarize::run(a),
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
    normalization: Option<gradcam::image::Normalization>,
) -> anyhow::Result<gradcam::model::Graph> {
    let mut weights = match model {
        Some(p) => gradcam::model::Weights::open(p)?,
        None => gradcam::model::Weights::from_static("<bundled demo model>", DEMO_MODEL)?,
    };
    // (A header may declare tensors of any size: refused by name before they take it all.)
    if let Some(bytes) = crate::memory::bytes() {
        weights.limit_memory(bytes, crate::memory::whose());
    }
    if let Some(n) = normalization {
        weights.set_normalization(n);
    }
    let graph = gradcam::model::build(&weights, arch)?;
    if let Some(place) = weights.found_under() {
        eprintln!(
            "note: {}: the model's weights are those of {place}",
            weights.path().display()
        );
    }
    for (prefix, n) in weights.other_copies() {
        eprintln!(
            "note: {} also holds a copy of the model under `{prefix}` ({n} tensors, an EMA's or \
             a wrapper's); it is not used: the weights without the prefix are",
            weights.path().display()
        );
    }
    Ok(graph)
}

/// The input size `s` as a message names it: `--size S` where given, else where it came
/// from (the model file's metadata, or the default).
pub fn size_said(given: Option<InputSize>, g: &gradcam::model::Graph, s: usize) -> String {
    match (given, g.input_size) {
        (Some(_), _) => format!("--size {s}"),
        (None, Some(_)) => format!("the model's input size {s} (its metadata; --size changes it)"),
        (None, None) => format!("the default --size {s}"),
    }
}

/// `--size` if given, else the model's own input size (metadata), else 224.
pub fn input_size(given: Option<InputSize>, g: &gradcam::model::Graph) -> InputSize {
    given.or(g.input_size).unwrap_or(InputSize::Square(224))
}

/// A network on whichever backend `--device` chose (made once per run, so size is no matter).
#[allow(clippy::large_enum_variant)]
pub enum AnyNetwork {
    Cpu(Network<CpuBackend>),
    Cuda(Network<GpuBackend<CudaLauncher>>),
    Emu(Network<GpuBackend<EmuLauncher>>),
}

/// Opens the GPU with every kernel compiled (or loaded from the cache).
fn open_cuda() -> gradcam::Result<CudaLauncher> {
    let l = CudaLauncher::new(0)?;
    l.preload()?;
    Ok(l)
}

/// The CPU backend with bf16 convolutions where this CPU runs them, else the f32 one with a
/// note naming why (ending with `fallback`, what is done instead).
pub fn cpu_bf16(fallback: &str) -> CpuBackend {
    match CpuBackend::bf16_unavailable() {
        None => CpuBackend::fast_bf16(),
        Some(why) => {
            eprintln!("note: no bf16 convolutions on the CPU: {why}; {fallback}");
            CpuBackend::fast()
        }
    }
}

pub fn load_network(m: &ModelArgs) -> anyhow::Result<AnyNetwork> {
    if m.model.is_none() {
        eprintln!("note: no --model given: using the bundled demo model (8 synthetic shapes)");
    }
    let norm = match (m.mean, m.std) {
        (Some(mean), Some(std)) => Some(gradcam::image::Normalization::new(mean, std)?),
        _ => None,
    };
    let graph = load_graph(m.model.as_deref(), m.arch.as_deref(), norm)?;
    let cpu_note = || {
        format!(
            "running on the CPU ({} threads)",
            rayon::current_num_threads()
        )
    };
    let cuda = |l: CudaLauncher, graph| -> anyhow::Result<AnyNetwork> {
        let be = GpuBackend::with_precision(l, m.precision());
        eprintln!("note: running on {}", be.name());
        Ok(AnyNetwork::Cuda(Network::new(graph, be)?))
    };
    let cpu = |graph| -> anyhow::Result<AnyNetwork> {
        let be = match m.precision {
            Some(PrecisionArg::Bf16) => cpu_bf16("computing in f32"),
            Some(p @ (PrecisionArg::Tf32 | PrecisionArg::F16)) => {
                let p = if p == PrecisionArg::Tf32 {
                    "tf32"
                } else {
                    "f16"
                };
                eprintln!("note: --precision {p} applies on a GPU; the CPU computes in f32");
                CpuBackend::fast()
            }
            _ => CpuBackend::fast(),
        };
        Ok(AnyNetwork::Cpu(Network::new(graph, be)?))
    };
    Ok(match m.device {
        Device::Cpu => cpu(graph)?,
        Device::Emu => {
            eprintln!("note: running the CUDA kernels on the CPU emulator (slow)");
            let be = GpuBackend::with_precision(EmuLauncher::new(), m.precision());
            AnyNetwork::Emu(Network::new(graph, be)?)
        }
        Device::Cuda => cuda(open_cuda().context("--device cuda")?, graph)?,
        Device::Auto => match open_cuda() {
            Ok(l) => cuda(l, graph)?,
            Err(e) => {
                // One line: the reason without the list of places looked in.
                let why = e.to_string();
                let why = why.split("; looked").next().unwrap_or_default();
                eprintln!("note: {} (no GPU: {why})", cpu_note());
                cpu(graph)?
            }
        },
    })
}
