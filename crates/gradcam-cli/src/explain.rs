//! `gradcam explain`: decode → batch → Grad-CAM → overlay / npy / JSON, one bad image never
//! stopping the others.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use gradcam::backend::Backend;
use gradcam::cam::finer::check_combination;
use gradcam::cam::kpca::{Kpca, KpcaKernel};
use gradcam::cam::multi_layer::{normalised, target_layers, LayerFusion};
use gradcam::cam::sess::Sess;
use gradcam::cam::{ClassSel, Colormap, Finer, Method, OverlayStyle, Target};
use gradcam::explain::{
    explain_batch_device, DeviceBatch, ExplainConfig, Explanation, OverlayAt, Timings,
};
use gradcam::image::{load_rgb8, peek_dims, InputSize, RgbImage};
use gradcam::model::Network;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde_json::json;

use crate::classes::Classes;
use crate::pass_size::{MethodMemory, PassSizes};
use crate::resume::Written;
use crate::summary::{self, Summary};
use crate::{input_size, inputs, load_network, parse_size, resume, ModelArgs};

#[derive(Args)]
pub struct ExplainArgs {
    /// Image files and/or folders (searched recursively for image files); none: the images
    /// a `--classes` file lists.
    #[arg(required_unless_present = "classes")]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// Target layer as a torchvision module path (`layer4`, `features.29`, ...), or several
    /// separated by commas (`layer3,layer4`: their normalised maps are averaged, as
    /// pytorch-grad-cam's target_layers); default: ResNet `layer4`, VGG the last ReLU of
    /// `features`.
    #[arg(long)]
    layer: Option<String>,
    /// Explain this class for every image, as an index or one of the model's labels
    /// (default: each image's top-1 class).
    #[arg(long = "class")]
    class: Option<String>,
    /// Explain each image for its class listed in this CSV (`image,class` lines, images
    /// relative to the file, classes as indices or the model's labels), or, with `folders`,
    /// for the class folder it lies in (torchvision's ImageFolder layout): e.g. the data set's
    /// ground truth; summary.csv's `predicted` column then shows the misclassified images.
    #[arg(long, conflicts_with = "class")]
    classes: Option<PathBuf>,
    /// The paper's counterfactual map: regions that lower the class score.
    #[arg(long)]
    counterfactual: bool,
    /// CAM method: gradcam, gradcam++, xgradcam, hirescam, layercam, gradcamelementwise,
    /// fullgrad (input and bias gradients of every layer; ignores --layer),
    /// scorecam, ablationcam (the score's drop when each channel is zeroed: no backward pass),
    /// eigencam (the activations' first principal component: no class, no backward pass),
    /// eigengradcam (that of gradients × activations), kpcacam (the first principal component
    /// in a kernel's feature space, as scikit-learn's KernelPCA, --kpca-kernel: no class), fem
    /// (each channel weighted by the share of its positions above mean + k·std: no class),
    /// shapleycam (Grad-CAM with the score's curvature along the layer: differs from it with
    /// --target softmax|rest), segeigencam (the first principal component of |gradient| ×
    /// activations, its larger magnitude positive).
    #[arg(long, default_value = "gradcam", value_parser = parse_method)]
    method: Method,
    /// SESS over the method (pytorch-grad-cam's SESS): each image rescaled to --sess-scales
    /// sizes from its shorter side up, windows of that side slid over each, every window
    /// scored by the class's probability and explained, the weighted maps pasted back,
    /// averaged and smoothed: robust to the object's scale and to several objects; 122
    /// explained windows per square image (157 at 4:3, 208 at 16:9).
    #[arg(long)]
    sess: bool,
    /// SESS: how many sizes (pytorch-grad-cam's num_scales), each 2/7 of the shorter side
    /// larger than the last.
    #[arg(long, default_value_t = 12, requires = "sess", value_parser = clap::value_parser!(u32).range(1..=64))]
    sess_scales: u32,
    /// With several layers: `mean` (default) averages their normalised maps, as
    /// pytorch-grad-cam's target_layers; `product` multiplies them, as its RefineCAM (whose
    /// default base is gradcam++): what stands out in every layer, which cleans up early layers.
    #[arg(long, default_value = "mean", value_parser = parse_fusion)]
    layer_fusion: LayerFusion,
    /// The class score explained: `logit` (default), `softmax` (the class's probability) or
    /// `rest` (the logit plus the log-probability, proposed with ShapleyCAM), as
    /// pytorch-grad-cam's ClassifierOutputTarget, ClassifierOutputSoftmaxTarget and
    /// ClassifierOutputReST. Every method that explains a class reads it; Eigen-CAM, KPCA-CAM
    /// and FEM, which explain none, do not.
    #[arg(long, default_value = "logit", value_parser = parse_target)]
    target: Target,
    /// KPCA-CAM's kernel between pixels' activation vectors: sigmoid (default), rbf, poly
    /// (degree 3), cosine or linear (plain PCA), as scikit-learn's KernelPCA.
    #[arg(long)]
    kpca_kernel: Option<String>,
    /// KPCA-CAM's γ for the sigmoid, rbf and poly kernels (default 1/channels; positive).
    #[arg(long, allow_negative_numbers = true)]
    kpca_gamma: Option<f64>,
    /// FEM: a position counts as high above its channel's mean plus this many standard
    /// deviations (default 2, as pytorch-grad-cam).
    #[arg(long, allow_negative_numbers = true)]
    fem_k: Option<f32>,
    /// The map is the first principal component of the method's weighted activations instead
    /// of their sum (pytorch-grad-cam's eigen_smooth): less noise, computed on the CPU.
    #[arg(long)]
    eigen_smooth: bool,
    /// The mean map over six copies of each image, mirrored or not and scaled by 0.9, 1 and
    /// 1.1 (pytorch-grad-cam's aug_smooth): smoother maps for six times the work.
    #[arg(long)]
    aug_smooth: bool,
    /// Finer-CAM, with any gradient method: explain the class's margin over the classes whose
    /// logits are nearest to it, each weighted by its probability (pytorch-grad-cam's
    /// FinerCAM): what tells the class apart from similar ones.
    #[arg(long)]
    finer: bool,
    /// Finer-CAM: how strongly the compared classes' logits are subtracted.
    #[arg(long, default_value_t = 1.0, requires = "finer")]
    finer_alpha: f32,
    /// Finer-CAM: the classes compared, by nearness of their logit to the explained class's
    /// (1 = the nearest), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,2,3",
        requires = "finer"
    )]
    finer_ranks: Vec<usize>,
    /// Also write guided backpropagation (<stem>.guided.png) and Guided Grad-CAM
    /// (<stem>.guided_gradcam.png), the paper's high-resolution visualisation.
    #[arg(long)]
    guided: bool,
    /// Score-CAM and Ablation-CAM: images per forward pass (masked inputs; ablated copies of
    /// the layer, run on from it); SESS: windows per pass (default 32).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    score_batch: Option<u32>,
    /// Model input size: an integer S resizes to S×S, `native` keeps each image's size
    /// (default: the model's own input size if its file says, else 224).
    #[arg(long, value_parser = parse_size)]
    size: Option<InputSize>,
    /// Images per forward/backward pass (default: 64 on a GPU; 8 on the CPU, 32 for models
    /// with 64 MB of linear weights or more, as VGG; on the CPU fewer where large inputs
    /// would not fit the memory)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: Option<u32>,
    /// Output folder (created if missing).
    #[arg(long, short, default_value = "gradcam-out")]
    out: PathBuf,
    /// Files per image, comma-separated: `overlay` (<stem>.overlay.png), `cam`
    /// (<stem>.cam.npy), `json` (<stem>.json), or `none`; summary.csv is always written (and
    /// `--guided`'s two images when asked for).
    /// Without `overlay` no overlay is drawn (on a GPU none comes back) nor encoded.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "overlay,cam,json"
    )]
    outputs: Vec<Output>,
    /// The overlay's colormap: any of OpenCV's, as pytorch-grad-cam's show_cam_on_image takes
    /// them (jet, turbo, viridis, inferno, magma, plasma, cividis, parula, hot, bone, ...).
    #[arg(long, default_value = "jet")]
    colormap: Colormap,
    /// The image's share of the overlay, in [0, 1] (show_cam_on_image's image_weight): 0 shows
    /// the colormap alone, 1 the image alone.
    #[arg(long, default_value_t = gradcam::cam::colormap::IMAGE_WEIGHT, value_parser = parse_image_weight)]
    image_weight: f64,
    /// Go on with a run that stopped: images that `--out`'s summary.csv lists as done, with
    /// all the files asked for there, are kept; the rest are explained (rows of images not
    /// given this time stay in summary.csv). The run must have the same settings (model file,
    /// layer, method, classes, size; see run.json).
    #[arg(long)]
    resume: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Overlay,
    Cam,
    Json,
    None,
}

/// Which of an image's files to write (`--outputs`).
#[derive(Clone, Copy)]
struct Outputs {
    overlay: bool,
    cam: bool,
    json: bool,
}

impl Outputs {
    /// The endings of an image's files (`<stem><ending>`), `--guided`'s included.
    fn suffixes(self, guided: bool) -> Vec<&'static str> {
        let mut s = Vec::new();
        for (on, suffix) in [
            (self.overlay, ".overlay.png"),
            (self.cam, ".cam.npy"),
            (self.json, ".json"),
            (guided, ".guided.png"),
            (guided, ".guided_gradcam.png"),
        ] {
            if on {
                s.push(suffix);
            }
        }
        s
    }

    fn parse(list: &[Output]) -> anyhow::Result<Self> {
        if list.contains(&Output::None) && list.len() > 1 {
            anyhow::bail!("--outputs: `none` cannot be listed with other outputs");
        }
        Ok(Outputs {
            overlay: list.contains(&Output::Overlay),
            cam: list.contains(&Output::Cam),
            json: list.contains(&Output::Json),
        })
    }
}

struct Job {
    index: usize,
    path: PathBuf,
    image: RgbImage,
    /// From `--classes`; None: as `ExplainConfig::classes` says.
    class: Option<usize>,
}

/// A file of a chunk: its image, or (its index, path, why it could not be decoded).
type Decoded = Result<Job, (usize, PathBuf, String)>;

pub fn run(a: ExplainArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // No inputs: the images of the --classes file, once it is read (after the model, whose
    // labels it may use).
    let listed = a.inputs.is_empty();
    if listed && a.classes.as_deref() == Some(Path::new("folders")) {
        anyhow::bail!("--classes folders: give the folders of class folders to explain");
    }
    let (written, summary_text) = Written::read(&a.out);
    // Kept for --resume only: a million rows need not stay in memory otherwise.
    let summary_text = summary_text.filter(|_| a.resume);
    let (files, failures) = inputs::collect(&a.inputs, Some((&a.out, &written)));
    if !listed {
        report_inputs(&files, &failures)?;
        if a.inputs.len() > 1 {
            note_repeats(&files);
        }
    }
    let net = load_network(&a.model)?;
    with_network!(net, net => explain_all(a, &net, files, failures, (written, summary_text), started))
}

/// What the JSON reports as the layer of FullGrad, which has none.
const FULL_GRAD_LAYERS: &str = "every layer with a bias (fullgrad)";

/// A note where inputs overlap (a folder and a file or folder inside it, two names of one
/// file): a file is explained each time it is given, under a stem of its own, and has a row
/// each time in summary.csv, which an audit's counts would take for two images. (One folder
/// alone walks each of its folders once: only several inputs can overlap.)
fn note_repeats(files: &[PathBuf]) {
    if let Some((n, first)) = inputs::repeats(files) {
        eprintln!(
            "note: {n} input(s) are files already given (the first: {}): each is explained \
             again, under a stem of its own, and has another row in summary.csv",
            first.display()
        );
    }
}

/// Reports the inputs that are no image files; fails when none is left.
fn report_inputs(files: &[PathBuf], failures: &[(PathBuf, String)]) -> anyhow::Result<()> {
    for (p, why) in failures {
        eprintln!("error: {}: {why}", p.display());
    }
    if files.is_empty() {
        anyhow::bail!("no images to explain");
    }
    Ok(())
}

/// Everything after the network is loaded, for any backend.
fn explain_all<B: Backend>(
    a: ExplainArgs,
    net: &Network<B>,
    mut files: Vec<PathBuf>,
    mut failures: Vec<(PathBuf, String)>,
    (written, summary_text): (Written, Option<std::io::Result<String>>),
    started: Instant,
) -> anyhow::Result<ExitCode> {
    let graph = net.graph();
    let outputs = Outputs::parse(&a.outputs)?;
    let size = input_size(a.size, graph);
    // (FullGrad has no target layer: a --layer given to it is ignored, with a note below.)
    let layer = match a.method {
        Method::FullGrad => graph.default_layer.clone(),
        _ => normalised(a.layer.as_deref().unwrap_or(&graph.default_layer))?,
    };
    for l in target_layers(&layer)? {
        graph.target(l)?;
    }
    a.method.check_options(a.counterfactual, a.eigen_smooth)?;
    if a.eigen_smooth && a.method.is_eigen() {
        eprintln!(
            "note: {}'s map is already the principal component; --eigen-smooth changes nothing",
            a.method.name()
        );
    }
    let finer = match a.finer {
        true => {
            let f = Finer {
                alpha: a.finer_alpha,
                ranks: a.finer_ranks.clone(),
            };
            check_combination(a.method, a.counterfactual, a.guided, a.aug_smooth)?;
            f.check(graph.num_classes)?;
            Some(f)
        }
        false => None,
    };
    a.target.check_combination(a.method, a.finer)?;
    if a.sess {
        gradcam::cam::sess::check_combination(a.guided, a.aug_smooth, a.finer)?;
    }
    let kpca = Kpca {
        kernel: a
            .kpca_kernel
            .as_deref()
            .map_or(Ok(KpcaKernel::default()), KpcaKernel::parse)?,
        gamma: a.kpca_gamma,
    };
    if (a.kpca_kernel.is_some() || a.kpca_gamma.is_some()) && a.method != Method::KpcaCam {
        anyhow::bail!(
            "--kpca-kernel and --kpca-gamma are KPCA-CAM's settings; add --method kpcacam"
        );
    }
    kpca.check()?;
    if a.score_batch.is_some()
        && !matches!(a.method, Method::ScoreCam | Method::AblationCam)
        && !a.sess
    {
        anyhow::bail!(
            "--score-batch sets the passes of Score-CAM, Ablation-CAM and SESS; add \
             --method scorecam, --method ablationcam or --sess"
        );
    }
    if a.fem_k.is_some() && a.method != Method::Fem {
        anyhow::bail!("--fem-k is FEM's setting; add --method fem");
    }
    let fem_k = a.fem_k.unwrap_or(gradcam::cam::FEM_K);
    gradcam::cam::check_fem_k(fem_k)?;
    if a.method == Method::FullGrad {
        if a.guided || a.eigen_smooth {
            anyhow::bail!(
                "fullgrad does not support --guided or --eigen-smooth (it has no single layer \
                 to combine with them)"
            );
        }
        if a.layer.is_some() {
            eprintln!("note: fullgrad uses every layer with a bias; --layer is ignored");
        }
    }
    // On the CPU a pass's activations are in host memory: large input sizes go through
    // fewer images at a time, and an image one pass of which would not fit is refused (at a
    // fixed --size, every image would be: the run is, before any is read).
    let batch = a.batch.map_or(net.default_batch(), |b| b as usize);
    let memory = crate::memory::bytes();
    let method = MethodMemory::of(
        graph,
        a.method,
        a.target,
        &target_layers(&layer)?,
        a.score_batch
            .map_or(ExplainConfig::default().score_batch, |b| b as usize),
        a.sess,
        a.aug_smooth,
        a.guided || a.method == Method::FullGrad,
    )?;
    let host = net.backend().host_activations();
    let mut passes = PassSizes::new(graph, method, host, memory, batch);
    if let InputSize::Square(s) = size {
        // Every image is resized to it: a size the network cannot take fails the run, not
        // each image alike.
        let said = crate::size_said(a.size, graph, s);
        if let Err(e) = graph.shapes(&[1, graph.in_channels, s, s]) {
            anyhow::bail!("{said}: {e}");
        }
        if a.method != Method::FullGrad {
            if let Err(e) = graph.check_map_size(&target_layers(&layer)?, (s, s)) {
                anyhow::bail!("{said}: {e}");
            }
        }
        if let Some(why) = passes.too_large((s, s)) {
            anyhow::bail!("{said}: {why}");
        }
    }
    let class = match a.class.as_deref() {
        None => None,
        Some(s) => match crate::classes::class_index(s.trim(), graph.labels.as_deref())
            .map_err(|e| anyhow::anyhow!("--class {e}"))?
        {
            Some(c) if c >= graph.num_classes => {
                return Err(gradcam::Error::ClassOutOfRange {
                    class: c,
                    num_classes: graph.num_classes,
                }
                .into())
            }
            Some(c) => Some(c),
            None => anyhow::bail!(
                "--class `{s}` is {}",
                match graph.labels {
                    Some(_) => "neither a class index nor one of the model's labels",
                    None => "not a class index (the model has no labels)",
                }
            ),
        },
    };
    let given = a.class.as_deref().map(str::trim);
    if let Some(at) =
        given.and_then(|s| gradcam::model::digits_label_elsewhere(s, graph.labels.as_deref()))
    {
        eprintln!(
            "note: --class {} is read as class index {0}, but it is also the model's label of \
             class {at}; to mean the label, give --class {at}",
            given.unwrap_or_default()
        );
    }
    let class_free = matches!(a.method, Method::EigenCam | Method::KpcaCam | Method::Fem);
    if class_free && (class.is_some() || a.classes.is_some()) {
        eprintln!(
            "note: {} uses no class score, so its map is the same for every class; --class and \
             --classes only set the class each image's JSON and summary row report",
            a.method.name()
        );
    }
    let (n, labels) = (graph.num_classes, graph.labels.as_deref());
    let classes = match a.classes.as_deref() {
        Some(f) => {
            let c = match f == Path::new("folders") {
                true => Classes::from_folders(&a.inputs, n, labels, &a.out)?,
                false => Classes::load(f, n, labels)?,
            };
            if let Some(note) = &c.note {
                eprintln!("note: {note}");
            }
            Some(c)
        }
        None => None,
    };
    // Output stems mirror the tree under the folders given (a class file's folder, for its
    // images).
    let mut roots = a.inputs.clone();
    if let (true, Some(c)) = (a.inputs.is_empty(), &classes) {
        let (listed, base) = c.listed();
        (files, failures) = inputs::collect(listed, Some((&a.out, &written)));
        report_inputs(&files, &failures)?;
        roots = vec![base.to_path_buf()];
    }
    // Inputs that never became files (missing paths, empty folders) count in the total too.
    let unreadable = failures.len();
    let suffixes = outputs.suffixes(a.guided);
    // (An image in the output folder named like another's output keeps its name.)
    let over = inputs::stems_over_inputs(&files, &a.out, &suffixes);
    let reserved: Vec<&str> = std::iter::once(resume::SETTINGS_STEM)
        .chain(over.iter().map(String::as_str))
        .collect();
    let stems = inputs::stems(&files, &roots, &reserved);
    // Files in an output folder no run wrote (`x.json` of an annotation tool beside `x.jpg`,
    // where the output folder is the images' own) are never written over.
    if written == Written::Nothing && a.out.is_dir() {
        let there: Vec<String> = (stems.iter())
            .flat_map(|stem| suffixes.iter().map(move |s| format!("{stem}{s}")))
            .filter(|f| a.out.join(f).symlink_metadata().is_ok())
            .collect();
        if let Some(first) = there.first() {
            anyhow::bail!(
                "--out {}: it holds files this run would write over ({first}{}), and no \
                 gradcam run wrote them (it has no {}); give another --out",
                a.out.display(),
                match there.len() {
                    1 => String::new(),
                    n => format!(" and {} more", n - 1),
                },
                resume::SETTINGS
            );
        }
    }
    // What decides each image's outputs: `--resume` goes on only under the same.
    let mut settings = json!({
        "model": a.model.model.as_deref().map_or_else(
            || json!(format!("<bundled demo model of gradcam {}>", env!("CARGO_PKG_VERSION"))),
            resume::file_id,
        ),
        "arch": graph.arch,
        "layer": if a.method == Method::FullGrad { FULL_GRAD_LAYERS } else { &layer },
        "method": a.method.name(),
        "counterfactual": a.counterfactual,
        "class": class,
        "classes": a.classes.as_deref().map(|f| match f == Path::new("folders") {
            true => json!("folders"),
            false => resume::file_id(f),
        }),
        "size": match size {
            InputSize::Native => "native".to_string(),
            InputSize::Square(s) => s.to_string(),
        },
        "outputs": suffixes,
        "backend": net.backend().name(),
    });
    // Only when on, so runs started before these flags existed still resume.
    for (on, key) in [
        (a.eigen_smooth, "eigen_smooth"),
        (a.aug_smooth, "aug_smooth"),
    ] {
        if on {
            settings[key] = json!(true);
        }
    }
    if let Some(f) = &finer {
        settings["finer"] = json!({"alpha": decimal(f.alpha), "ranks": f.ranks});
    }
    if a.method == Method::Fem {
        settings["fem_k"] = json!(decimal(fem_k));
    }
    if a.method == Method::KpcaCam && kpca != Kpca::default() {
        settings["kpca"] = kpca_json(&kpca);
    }
    if a.target != Target::Logit {
        settings["target"] = json!(a.target.name());
    }
    if a.sess {
        settings["sess"] = json!({"scales": a.sess_scales});
    }
    if a.layer_fusion != LayerFusion::Mean && a.method != Method::FullGrad {
        settings["layer_fusion"] = json!(a.layer_fusion.name());
        if !layer.contains(',') {
            eprintln!("note: --layer-fusion combines several layers; one is given");
        }
    }
    // The model's input normalisation, when not ImageNet's (its metadata or --mean/--std).
    let norm = graph.normalization;
    if norm != gradcam::image::Normalization::IMAGENET {
        settings["normalization"] = json!({
            "mean": norm.mean.map(decimal),
            "std": norm.std.map(decimal),
        });
    }
    // The overlays' look: recorded where overlays are written and it is not
    // pytorch-grad-cam's default, as the flags above.
    let overlay_style = OverlayStyle::new(a.colormap, a.image_weight)?;
    if overlay_style != OverlayStyle::default() {
        match outputs.overlay {
            true => {
                settings["overlay_style"] = json!({
                    "colormap": a.colormap.name(),
                    "image_weight": a.image_weight,
                })
            }
            false => eprintln!(
                "note: --colormap and --image-weight style the overlays; --outputs writes none"
            ),
        }
    }
    // A JPEG's pixels depend on its decoder (`GRADCAM_JPEG_DECODER`): recorded when not
    // the default, so runs started before it was recorded still resume.
    if !gradcam::image::jpeg_by_libjpeg() {
        settings["jpeg_decoder"] = json!("image");
    }
    let mut previous = match a.resume {
        true => {
            // None: the folder held no run.json when it was read, so nothing to go on from.
            let none = || Err(std::io::ErrorKind::NotFound.into());
            let text = summary_text.unwrap_or_else(none);
            resume::load_from(&a.out, &settings, text)?
        }
        false => None,
    };
    // Positions in summary.csv: the inputs that never became files first, then the files.
    let at = move |i: usize| unreadable + i;
    // Kept rows by their position; the other files' indices.
    let mut kept: Vec<(usize, String)> = Vec::new();
    let mut todo = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let row = (previous.as_mut()).and_then(|p| p.kept(f, &stems[i], &a.out, &suffixes, size));
        match row {
            Some(row) => kept.push((at(i), row)),
            None => todo.push(i),
        }
    }
    if let Some(p) = previous.as_ref() {
        // Going on with fewer kinds of files records the previous run's too (its images keep
        // theirs); an image explained again here loses its older files of the kinds this run
        // does not write, which would otherwise stand beside its newer row.
        // (Only the kinds gradcam writes, only for stems the previous run had, never an
        // input: a file there of another origin stays.)
        let all = Outputs {
            overlay: true,
            cam: true,
            json: true,
        }
        .suffixes(true);
        let recorded = p.outputs(&suffixes, &all);
        let skipped: Vec<&String> = (recorded.iter())
            .filter(|s| !suffixes.contains(&s.as_str()))
            .collect();
        // (Sets built once, and only where a kind is skipped: a summary of a million rows.)
        let (had, inputs) = match skipped.is_empty() {
            true => (HashSet::new(), HashSet::new()),
            false => (
                p.stems(),
                files.iter().map(|f| inputs::canonical(f)).collect(),
            ),
        };
        for &i in todo.iter().filter(|&&i| had.contains(stems[i].as_str())) {
            for s in &skipped {
                let f = a.out.join(format!("{}{s}", stems[i]));
                if inputs.contains(&inputs::canonical(&f)) {
                    continue;
                }
                if let Err(e) = std::fs::remove_file(&f) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        anyhow::bail!("--resume: removing the older {}: {e}", f.display());
                    }
                }
            }
        }
        settings["outputs"] = json!(recorded);
    }
    // Rows of images this run was not given stay, after its own.
    if let Some(p) = previous.as_mut() {
        failures.iter().for_each(|(f, _)| p.forget(f));
    }
    let others = previous.map(|p| p.others(&stems)).unwrap_or_default();
    let carried: Vec<(usize, String)> = (others.into_iter().enumerate())
        .map(|(j, row)| (at(files.len()) + j, row))
        .collect();
    if !carried.is_empty() {
        eprintln!(
            "note: --resume: summary.csv keeps the rows of {} earlier images not among these \
             inputs",
            carried.len()
        );
    }
    inputs::create_out_dir(&a.out)?;
    let settings_file = a.out.join(resume::SETTINGS);
    std::fs::write(&settings_file, format!("{settings:#}\n"))
        .with_context(|| format!("writing {}", settings_file.display()))?;
    // Shared by the device stage (decoding failures) and the writer (everything else).
    let summary = std::sync::Mutex::new(Summary::create(&a.out, &[&kept[..], &carried].concat())?);
    // A failed input's row names its class when `--class` or `--classes` gave one.
    let class_of = |p: &Path| -> Option<(usize, &str)> {
        let c = class.or_else(|| classes.as_ref()?.of(p).ok())?;
        Some((c, labels.and_then(|l| l.get(c)).map_or("", String::as_str)))
    };
    for (i, (p, why)) in failures.iter().enumerate() {
        lock(&summary).failed(i, p, why, class_of(p));
    }
    if !kept.is_empty() {
        eprintln!(
            "note: --resume: {} of {} images were done before and are kept",
            kept.len(),
            files.len()
        );
    }
    let cfg = ExplainConfig {
        layer: Some(layer.clone()),
        classes: class.map_or(ClassSel::Predicted, ClassSel::All),
        counterfactual: a.counterfactual,
        method: a.method,
        guided: a.guided,
        score_batch: a.score_batch.unwrap_or(32) as usize,
        eigen_smooth: a.eigen_smooth,
        aug_smooth: a.aug_smooth,
        finer: finer.clone(),
        fem_k,
        target: a.target,
        fusion: a.layer_fusion,
        kpca,
        sess: a.sess.then_some(Sess {
            num_scales: a.sess_scales as usize,
        }),
        size,
        overlay: if outputs.overlay {
            OverlayAt::Image
        } else {
            OverlayAt::Off
        },
        overlay_style,
    };
    let bar = if todo.len() > 1 {
        let b = ProgressBar::new(todo.len() as u64);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} images  {rate}  eta {eta}")
                .expect("valid template")
                // (indicatif's own {per_sec} prints four decimals.)
                .with_key(
                    "rate",
                    |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.1} images/s", s.per_sec());
                    },
                ),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut timings = Timings::default();
    // Three stages, so the device is idle neither while files are read and decoded nor while
    // they are written: a decoder thread decodes the next chunk of files while this thread
    // runs the device on the current one, and a third builds the explanations and writes
    // them (PNG encoding is the costly part) a group or two behind. Undecodable files are
    // reported when their chunk reaches this thread, failed writes when written: stderr is
    // in input order within each kind.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<Job>, GroupOut)>(1);
    // A rendezvous: one chunk decoded ahead at most (full-size photographs are large).
    let (dtx, drx) = std::sync::mpsc::sync_channel::<Vec<Decoded>>(0);
    let chunks: Vec<Vec<usize>> = todo.chunks(batch).map(<[usize]>::to_vec).collect();
    let backend = net.backend().name();
    let meta = Meta {
        backend: &backend,
        layer: &layer,
        arch: graph.arch.as_str(),
        method: a.method,
        counterfactual: a.counterfactual,
        eigen_smooth: a.eigen_smooth,
        aug_smooth: a.aug_smooth,
        finer: finer.as_ref(),
        target: a.target,
        fusion: (layer.contains(',') && a.method != Method::FullGrad).then_some(a.layer_fusion),
        sess_scales: a.sess.then_some(a.sess_scales),
        fem_k: (a.method == Method::Fem).then_some(fem_k),
        kpca: (a.method == Method::KpcaCam).then_some(&kpca),
        labels: graph.labels.as_deref(),
        outputs,
    };
    let (host_timings, done, write_failures, mut summary_failed) = std::thread::scope(|sc| {
        let writer = sc.spawn(|| {
            let mut th = Timings::default();
            let mut done = 0usize;
            let mut failed = Vec::new();
            let mut summary_failed = false;
            for (group, out) in rx {
                let results = finish_group(&group, out, &cfg, &mut th);
                // PNG encoding and file writes run in parallel; reports stay in input order.
                // Each image's outputs, then its summary row (made from what was written).
                let written: Vec<(&Job, Result<String, String>)> = results
                    .into_par_iter()
                    .map(|(job, result)| {
                        let stem = &stems[job.index];
                        let w = result.and_then(|e| {
                            write_outputs(&a.out, stem, job, &e, &meta)
                                .map_err(|e| format!("{e:#}"))?;
                            Ok(summary::explained_row(meta.labels, &job.path, stem, &e))
                        });
                        (job, w)
                    })
                    .collect();
                let mut s = lock(&summary);
                for (job, w) in written {
                    match w {
                        Ok(row) => {
                            s.put(at(job.index), &row);
                            done += 1;
                        }
                        Err(why) => {
                            bar.suspend(|| eprintln!("error: {}: {why}", job.path.display()));
                            s.failed(at(job.index), &job.path, &why, class_of(&job.path));
                            failed.push((job.path.clone(), why));
                        }
                    }
                }
                if let Some(why) = s.flush() {
                    bar.suspend(|| eprintln!("error: {why}"));
                    summary_failed = true;
                }
                drop(s);
                bar.inc(group.len() as u64);
            }
            (th, done, failed, summary_failed)
        });
        let (files, classes) = (&files, &classes);
        sc.spawn(move || {
            // Large photographs: a chunk is cut where its decoded pixels pass the budget
            // (sizes read from the files' headers), as several chunks are alive at once.
            let budget = inputs::decode_budget_bytes();
            let parts = chunks.iter().flat_map(|chunk| {
                let sizes: Vec<u64> = (chunk.par_iter())
                    .map(|&i| peek_dims(&files[i]).map_or(0, |(w, h)| 3 * w as u64 * h as u64))
                    .collect();
                inputs::split_by_bytes(&sizes, budget)
                    .into_iter()
                    .map(|r| chunk[r].to_vec())
                    .collect::<Vec<_>>()
            });
            for chunk in parts {
                // Decode in parallel; undecodable files are reported (by the device stage)
                // and dropped from the batch.
                let decoded = chunk
                    .par_iter()
                    .map(|&i| {
                        let failed = |why: String| (i, files[i].clone(), why);
                        let class = match &classes {
                            Some(c) => Some(c.of(&files[i]).map_err(failed)?),
                            None => None,
                        };
                        match load_rgb8(&files[i]) {
                            Ok(image) => Ok(Job {
                                index: i,
                                path: files[i].clone(),
                                image,
                                class,
                            }),
                            Err(e) => Err(failed(strip_path(&e.to_string(), &files[i]))),
                        }
                    })
                    .collect();
                if dtx.send(decoded).is_err() {
                    break; // the device stage stopped (the writer is gone)
                }
            }
        });
        'chunks: for decoded in drx {
            let mut jobs = Vec::new();
            for d in decoded {
                let d = d.and_then(|j| match passes.too_large(size.for_image(&j.image)) {
                    Some(why) => Err((j.index, j.path, why)),
                    None => Ok(j),
                });
                match d {
                    Ok(j) => jobs.push(j),
                    Err((i, path, why)) => {
                        bar.suspend(|| eprintln!("error: {}: {why}", path.display()));
                        lock(&summary).failed(at(i), &path, &why, class_of(&path));
                        failures.push((path, why));
                        bar.inc(1);
                    }
                }
            }
            // Images of one batch must share an input size: group by it (native mode).
            let mut groups: Vec<((usize, usize), Vec<Job>)> = Vec::new();
            for j in jobs {
                let hw = size.for_image(&j.image);
                match groups.iter_mut().find(|(k, _)| *k == hw) {
                    Some((_, g)) => g.push(j),
                    None => groups.push((hw, vec![j])),
                }
            }
            for (hw, mut group) in groups {
                let per_pass = passes.pass_of(hw, group.len());
                while !group.is_empty() {
                    let rest = group.split_off(per_pass.min(group.len()));
                    let out = explain_group(net, &group, &cfg, &mut timings);
                    if tx.send((group, out)).is_err() {
                        break 'chunks; // the writer is gone (it panicked): join reports it
                    }
                    group = rest;
                }
            }
        }
        drop(tx);
        writer.join().expect("the output writer panicked")
    });
    timings.add(&host_timings);
    failures.extend(write_failures);
    // The rows of files that failed to decode after the last batch was written, then the
    // whole file in input order.
    if let Some(why) = lock(&summary).finish() {
        eprintln!("error: {why}");
        summary_failed = true;
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let before = match kept.len() {
        0 => String::new(),
        k => format!(" ({k} of them done before)"),
    };
    if todo.is_empty() {
        eprintln!(
            "nothing left to explain: {} images were done before → {}",
            kept.len(),
            a.out.display()
        );
    } else {
        eprintln!(
            "explained {} of {} images{before} in {secs:.2}s ({:.2} images/s; {} {:.2}s, \
         preprocess {:.2}s, post-processing {:.2}s) → {}",
            done + kept.len(),
            files.len() + unreadable,
            done as f64 / secs,
            a.method.name(),
            timings.cam.as_secs_f64(),
            timings.preprocess.as_secs_f64(),
            timings.postprocess.as_secs_f64(),
            a.out.display()
        );
    }
    if let Some(note) = passes.cut_note("large images", "--batch") {
        eprintln!("note: {note}");
    }
    if !failures.is_empty() {
        eprintln!("{} input(s) failed (listed above)", failures.len());
    }
    if summary_failed {
        eprintln!(
            "{} is incomplete (the error is above)",
            a.out.join(summary::FILE).display()
        );
    }
    match failures.is_empty() && !summary_failed {
        true => Ok(ExitCode::SUCCESS),
        false => Ok(ExitCode::from(1)),
    }
}

/// A group's device results: the whole batch, or (when it failed as a whole) each image alone.
enum GroupOut {
    Whole(DeviceBatch),
    Each(Vec<Result<DeviceBatch, String>>),
}

/// One batch on the device; if it fails as a whole (say one image is too small for the
/// network), each image is retried alone so only the culprit fails.
fn explain_group<B: Backend>(
    net: &Network<B>,
    group: &[Job],
    cfg: &ExplainConfig,
    timings: &mut Timings,
) -> GroupOut {
    let images: Vec<&RgbImage> = group.iter().map(|j| &j.image).collect();
    match explain_batch_device(net, &images, &with_classes(cfg, group), timings) {
        Ok(db) => GroupOut::Whole(db),
        Err(_) if group.len() > 1 => GroupOut::Each(
            group
                .iter()
                .map(|j| {
                    let cfg = with_classes(cfg, std::slice::from_ref(j));
                    explain_batch_device(net, &[&j.image], &cfg, timings).map_err(|e| e.to_string())
                })
                .collect(),
        ),
        Err(e) => GroupOut::Each(vec![Err(e.to_string())]),
    }
}

/// `cfg` with the jobs' own classes, when `--classes` gave them.
fn with_classes<'c>(cfg: &'c ExplainConfig, jobs: &[Job]) -> Cow<'c, ExplainConfig> {
    match jobs.iter().map(|j| j.class).collect::<Option<Vec<usize>>>() {
        Some(c) if !jobs.is_empty() => Cow::Owned(ExplainConfig {
            classes: ClassSel::PerImage(c),
            ..cfg.clone()
        }),
        _ => Cow::Borrowed(cfg),
    }
}

/// The explanations of a group from its device results, in input order.
fn finish_group<'j>(
    group: &'j [Job],
    out: GroupOut,
    cfg: &ExplainConfig,
    timings: &mut Timings,
) -> Vec<(&'j Job, Result<Explanation, String>)> {
    match out {
        GroupOut::Whole(db) => {
            let images: Vec<&RgbImage> = group.iter().map(|j| &j.image).collect();
            match db.finish(&images, cfg, timings) {
                Ok(out) => group.iter().zip(out.into_iter().map(Ok)).collect(),
                // The overlays' copy from the device failed: every image of the batch.
                Err(e) => group.iter().map(|j| (j, Err(e.to_string()))).collect(),
            }
        }
        GroupOut::Each(each) => group
            .iter()
            .zip(each)
            .map(|(j, r)| {
                let one = r.and_then(|db| {
                    let mut out = db.finish(&[&j.image], cfg, timings);
                    out.as_mut().map(|v| v.remove(0)).map_err(|e| e.to_string())
                });
                (j, one)
            })
            .collect(),
    }
}

/// The summary, also after a thread panicked holding it (its rows so far are still good).
fn lock(s: &std::sync::Mutex<Summary>) -> std::sync::MutexGuard<'_, Summary> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn parse_method(s: &str) -> Result<Method, String> {
    Method::parse(s).map_err(|e| e.to_string())
}

/// KPCA-CAM's settings as the JSON reports them (γ as scikit-learn takes it, 1/K when not
/// given: null).
fn kpca_json(k: &Kpca) -> serde_json::Value {
    json!({"kernel": k.kernel.name(), "gamma": k.gamma})
}

/// An f32 setting as the decimal it was given (0.1, not 0.10000000149011612) for the JSON.
fn decimal(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

fn parse_image_weight(s: &str) -> Result<f64, String> {
    let w: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is no number"))?;
    OverlayStyle::new(Colormap::JET, w).map_err(|e| e.to_string())?;
    Ok(w)
}

fn parse_fusion(s: &str) -> Result<LayerFusion, String> {
    LayerFusion::parse(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_target(s: &str) -> Result<Target, String> {
    Target::parse(s).map_err(|e| e.to_string())
}

fn strip_path(msg: &str, path: &Path) -> String {
    let prefix = format!("{}: ", path.display());
    msg.strip_prefix(&prefix).unwrap_or(msg).to_string()
}

/// PNG with fast compression (OpenCV's `imwrite` default is level 1 too): the overlay of a
/// large photograph otherwise costs more to compress than to explain.
pub(crate) fn save_png(img: &RgbImage, path: &Path) -> anyhow::Result<()> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    atomically(path, |tmp| {
        let file =
            std::fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let enc = PngEncoder::new_with_quality(
            std::io::BufWriter::new(file),
            CompressionType::Fast,
            FilterType::Adaptive,
        );
        img.write_with_encoder(enc)
            .with_context(|| format!("writing {}", tmp.display()))
    })
}

/// Writes `path` under a temporary name (`<name>.part`) and renames it into place once whole,
/// so a run stopped mid-write never leaves a cut-off file under the real name (which
/// `--resume` would keep).
fn atomically(path: &Path, write: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    let tmp = path.with_file_name(name);
    let done = write(&tmp).and_then(|()| {
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} into place", tmp.display()))
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp); // (a failed write leaves no litter)
    }
    done
}

/// What every JSON report repeats.
struct Meta<'a> {
    /// Where and at what precision the maps were computed (`Backend::name`).
    backend: &'a str,
    layer: &'a str,
    arch: &'a str,
    method: Method,
    counterfactual: bool,
    eigen_smooth: bool,
    aug_smooth: bool,
    finer: Option<&'a Finer>,
    target: Target,
    /// With several layers, how their maps combine.
    fusion: Option<LayerFusion>,
    /// SESS's scale count, when on.
    sess_scales: Option<u32>,
    /// FEM's k, for `--method fem`.
    fem_k: Option<f32>,
    /// KPCA-CAM's settings, for `--method kpcacam`.
    kpca: Option<&'a Kpca>,
    labels: Option<&'a [String]>,
    outputs: Outputs,
}

fn write_outputs(
    out: &Path,
    stem: &str,
    job: &Job,
    e: &Explanation,
    m: &Meta,
) -> anyhow::Result<()> {
    // All or nothing: when one file cannot be written (a full disk), those written before it
    // go too, so no image whose row says `error` leaves an overlay beside it.
    let mut made = Vec::new();
    let r = write_outputs_into(out, stem, job, e, m, &mut made);
    if r.is_err() {
        made.iter().for_each(|p| drop(std::fs::remove_file(p)));
    }
    r
}

/// [`write_outputs`], each file written added to `made`.
fn write_outputs_into(
    out: &Path,
    stem: &str,
    job: &Job,
    e: &Explanation,
    m: &Meta,
    made: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    // The output tree mirrors the input tree (no folders for `--outputs none`).
    let any = m.outputs.overlay || m.outputs.cam || m.outputs.json || e.guided.is_some();
    if let Some(dir) = (out.join(stem).parent()).filter(|_| any && stem.contains('/')) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut written = serde_json::Map::new();
    if let Some(o) = e.overlay.as_ref().filter(|_| m.outputs.overlay) {
        let png = out.join(format!("{stem}.overlay.png"));
        save_png(o, &png)?;
        written.insert("overlay".into(), json!(name(&png)));
        made.push(png);
    }
    if m.outputs.cam {
        let npy = out.join(format!("{stem}.cam.npy"));
        atomically(&npy, |tmp| {
            Ok(gradcam::npy::write_f32(
                tmp,
                &[e.input_hw.0, e.input_hw.1],
                &e.cam,
            )?)
        })?;
        written.insert("cam".into(), json!(name(&npy)));
        made.push(npy);
    }
    if let Some((gb, ggc)) = &e.guided {
        for (img, kind) in [(gb, "guided"), (ggc, "guided_gradcam")] {
            let p = out.join(format!("{stem}.{kind}.png"));
            save_png(img, &p)?;
            written.insert(kind.into(), json!(name(&p)));
            made.push(p);
        }
    }
    if !m.outputs.json {
        return Ok(());
    }
    let mut channels: Vec<(usize, f32)> = e.weights.iter().copied().enumerate().collect();
    channels.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let label = |c: usize| m.labels.and_then(|l| l.get(c)).cloned();
    let mut report = json!({
        "image": gradcam::path_text::text(&job.path),
        "model": m.arch,
        "backend": m.backend,
        "method": m.method.name(),
        // (None for the methods without a class score.)
        "target": m.method.uses_class().then(|| m.target.name()),
        "class": e.class,
        "logit": e.logit,
        "probability": e.probability,
        "label": label(e.class),
        "top5": e.top5.iter().map(|(c, l)| json!({"class": c, "label": label(*c), "logit": l})).collect::<Vec<_>>(),
        // FullGrad has no target layer: it reads every layer with a bias.
        "layer": if m.method == Method::FullGrad { FULL_GRAD_LAYERS } else { m.layer },
        "counterfactual": m.counterfactual,
        "eigen_smooth": m.eigen_smooth || m.method.is_eigen(),
        "aug_smooth": m.aug_smooth,
        "map_size": [e.map_hw.0, e.map_hw.1],
        "input_size": [e.input_hw.0, e.input_hw.1],
        "image_size": [job.image.height(), job.image.width()],
        "top_channels": channels.iter().take(10).map(|(k, a)| json!({"channel": k, "weight": a})).collect::<Vec<_>>(),
        "outputs": written,
    });
    if let Some(f) = m.fusion {
        report["layer_fusion"] = json!(f.name());
    }
    if let Some(n) = m.sess_scales {
        report["sess"] = json!({"scales": n});
    }
    if let Some(k) = m.fem_k {
        report["fem_k"] = json!(decimal(k));
    }
    if let Some(k) = m.kpca {
        report["kpca"] = kpca_json(k);
    }
    if let Some(f) = m.finer {
        report["finer"] = json!({
            "alpha": decimal(f.alpha),
            "ranks": f.ranks,
            "compared": e.compared.iter().map(|&c| json!({"class": c, "label": label(c)})).collect::<Vec<_>>(),
        });
    }
    let js = out.join(format!("{stem}.json"));
    let text = serde_json::to_string_pretty(&report)? + "\n";
    atomically(&js, |tmp| Ok(std::fs::write(tmp, &text)?))
        .with_context(|| format!("writing {}", js.display()))?;
    Ok(())
}
