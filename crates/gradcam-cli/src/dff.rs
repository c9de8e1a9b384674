//! `gradcam dff IMAGES...`: Deep Feature Factorization over a whole set of images at once:
//! k concepts shared by every image, each named by the classes the network gives it, and per
//! image an overlay colouring each pixel by its concept.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use gradcam::backend::Backend;
use gradcam::cam::multi_layer::{normalised, target_layers};
use gradcam::dff;
use gradcam::image::{load_rgb8, preprocess_with, InputSize};
use gradcam::model::Network;
use gradcam::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::pass_size::PassSizes;
use crate::{input_size, inputs, load_network, parse_size, ModelArgs};

/// The bytes a factorisation takes at its peak: the matrix factorised (`channels` values a
/// position) with the NMF's factors, their transpose and the maps cut from them (`3k` more),
/// over the `held` positions read so far and `left` images still to read, counted at the
/// `fewest` positions any image had (exact at a fixed --size; a lower bound at `native`).
fn memory_needed(held: usize, fewest: usize, left: usize, channels: usize, k: usize) -> u64 {
    let positions = (left as u64)
        .saturating_mul(fewest as u64)
        .saturating_add(held as u64);
    positions.saturating_mul((channels as u64 + 3 * k as u64) * 4)
}

/// The run-wide files `dff` writes, over an earlier `dff` run's only (its dff.json is
/// there, or, from a run stopped before writing it, its `.dff.png` overlays): a file of the
/// same name somebody else put in `--out` is refused, not replaced.
fn refuse_foreign_reports(out: &Path) -> anyhow::Result<()> {
    let report = out.join("dff.json");
    let earlier = (std::fs::read(&report).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("concepts").is_some() && v.get("nmf_iterations").is_some());
    let overlays = (std::fs::read_dir(out).into_iter().flatten().flatten())
        .any(|e| e.file_name().to_string_lossy().ends_with(".dff.png"));
    if earlier || overlays {
        return Ok(());
    }
    for name in ["dff.json", "concepts.npy", "concepts_by_group.csv"] {
        if out.join(name).exists() {
            anyhow::bail!(
                "--out {}: holds a {name} that no `gradcam dff` run wrote (there is no dff.json \
                 or .dff.png of one); choose another --out, or move it",
                out.display()
            );
        }
    }
    Ok(())
}

/// The overlays an earlier run's dff.json in `out` lists (relative to `out`, as written now:
/// a report of an older version, with other paths, lists none) that are there now.
fn earlier_overlays(out: &Path) -> Vec<PathBuf> {
    let report = (std::fs::read(out.join(crate::resume::DFF_REPORT)).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let Some(images) = report.as_ref().and_then(|r| r["images"].as_array()) else {
        return Vec::new();
    };
    (images.iter())
        .filter_map(|im| im["overlay"].as_str())
        .map(Path::new)
        // Only a file name below `out` that a dff run writes (no `..`, no absolute path).
        .filter(|p| {
            p.is_relative()
                && p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
                && p.to_string_lossy().ends_with(".dff.png")
        })
        .map(|p| out.join(p))
        .filter(|p| p.is_file())
        .collect()
}

/// Images listed per concept in dff.json.
const TOP_IMAGES: usize = 8;

#[derive(Args)]
pub struct DffArgs {
    /// Images, or folders searched recursively for images; all are factorised together.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// The layer whose activations are factorised (default: the model's default target).
    #[arg(long)]
    layer: Option<String>,
    /// Number of concepts (NMF components; pytorch-grad-cam's default).
    #[arg(long, short = 'k', default_value_t = dff::COMPONENTS)]
    components: usize,
    /// Model input size: an integer S resizes to S×S, `native` keeps each image's size
    /// (default: the model's own input size if its file says, else 224).
    #[arg(long, value_parser = parse_size)]
    size: Option<InputSize>,
    /// Classes listed per concept in the report.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    top_k: u32,
    /// The image's weight in the overlay (pytorch-grad-cam's run_dff_on_image uses 0.3).
    #[arg(long, default_value_t = dff::IMAGE_WEIGHT)]
    image_weight: f64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: u32,
    /// Output folder: <stem>.dff.png per image, dff.json, concepts.npy ([channels, k]) and
    /// concepts_by_group.csv (each concept's mean share per first-level input folder).
    #[arg(long, short, default_value = "gradcam-out/dff")]
    out: PathBuf,
}

pub fn run(a: DffArgs) -> anyhow::Result<ExitCode> {
    if a.components == 0 {
        anyhow::bail!("--components must be at least 1");
    }
    if !(0.0..=1.0).contains(&a.image_weight) {
        anyhow::bail!("--image-weight {}: must lie in [0, 1]", a.image_weight);
    }
    let (files, failures) =
        inputs::collect(&a.inputs, Some((&a.out, &crate::resume::Written::All)));
    for (p, why) in &failures {
        eprintln!("error: {}: {why}", p.display());
    }
    if files.is_empty() {
        anyhow::bail!("no images to factorise");
    }
    if let Some((n, first)) = inputs::repeats(&files) {
        eprintln!(
            "note: {n} input(s) are files already given (the first: {}): each is factorised \
             again, its positions counted once more, and has an overlay of its own",
            first.display()
        );
    }
    let net = load_network(&a.model)?;
    with_network!(net, net => dff_all(a, &net, files, failures.len()))
}

fn dff_all<B: Backend>(
    a: DffArgs,
    net: &Network<B>,
    files: Vec<PathBuf>,
    mut failed: usize,
) -> anyhow::Result<ExitCode> {
    let graph = net.graph();
    let size = input_size(a.size, graph);
    let layer = normalised(a.layer.as_deref().unwrap_or(&graph.default_layer))?;
    if target_layers(&layer)?.len() != 1 {
        anyhow::bail!("--layer {layer}: DFF factorises one layer");
    }
    graph.target(&layer)?;
    let host = net.backend().host_activations();
    let mut passes = PassSizes::forward_to(graph, &layer, host, size, a.batch as usize)?;
    inputs::create_out_dir(&a.out)?;
    refuse_foreign_reports(&a.out)?;
    let earlier = earlier_overlays(&a.out);

    // The activations of every image that decodes, `batch` images of one size per pass.
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images  {msg}").expect("valid template"),
    );
    bar.set_message("activations");
    let mut kept: Vec<PathBuf> = Vec::new();
    let mut acts: Vec<Tensor> = Vec::new();
    let mut first_hw = None;
    // Positions held so far, the fewest of one image, and the layer's channels.
    let (mut held, mut fewest, mut channels) = (0usize, usize::MAX, 0usize);
    let memory = passes.memory();
    for (i, chunk) in files.chunks(a.batch as usize).enumerate() {
        let mut images = Vec::new();
        for f in chunk {
            match load_rgb8(f) {
                Ok(img) => images.push((f.clone(), img)),
                Err(e) => {
                    failed += 1;
                    // (The error names the file.)
                    bar.suspend(|| eprintln!("error: {e}"));
                }
            }
        }
        // Images of the same input size go through together, in their order.
        let mut done = vec![false; images.len()];
        for i in 0..images.len() {
            if done[i] {
                continue;
            }
            let hw = size.for_image(&images[i].1);
            let group: Vec<usize> = (i..images.len())
                .filter(|&j| !done[j] && size.for_image(&images[j].1) == hw)
                .collect();
            // On the CPU an image whose pass would not fit in memory is refused, and large
            // sizes go through fewer at a time (as explain's).
            if let Some(why) = passes.too_large(hw) {
                for &j in &group {
                    done[j] = true;
                    failed += 1;
                    bar.suspend(|| eprintln!("error: {}: {why}", images[j].0.display()));
                }
                continue;
            }
            let per_pass = passes.pass_of(hw, group.len());
            // A batch that fails (an image too small for the network at --size native) is
            // run again an image at a time, so only the culprit is lost.
            let activations = |idx: &[usize]| -> gradcam::Result<Tensor> {
                let refs: Vec<_> = idx.iter().map(|&j| &images[j].1).collect();
                let norm = &net.graph().normalization;
                let x = net.backend().upload(preprocess_with(&refs, hw, norm))?;
                Ok(dff::activations(net, x, &layer)?.0)
            };
            for part in group.chunks(per_pass) {
                let runs: Vec<(Vec<usize>, gradcam::Result<Tensor>)> = match activations(part) {
                    Ok(a) => vec![(part.to_vec(), Ok(a))],
                    Err(e) if part.len() == 1 => vec![(part.to_vec(), Err(e))],
                    Err(_) => (part.iter())
                        .map(|&j| (vec![j], activations(&[j])))
                        .collect(),
                };
                for (run, got) in runs {
                    run.iter().for_each(|&j| done[j] = true);
                    let act = match got {
                        Ok(act) => act,
                        Err(e) => {
                            failed += run.len();
                            for &j in &run {
                                bar.suspend(|| eprintln!("error: {}: {e}", images[j].0.display()));
                            }
                            continue;
                        }
                    };
                    let (_, c, h, w) = act.dims4();
                    for (slot, &j) in run.iter().enumerate() {
                        first_hw.get_or_insert(hw);
                        kept.push(images[j].0.clone());
                        let one = act.data()[slot * c * h * w..(slot + 1) * c * h * w].to_vec();
                        acts.push(Tensor::new([1, c, h, w], one));
                        (held, fewest, channels) = (held + h * w, fewest.min(h * w), c);
                    }
                }
            }
        }
        bar.inc(chunk.len() as u64);
        // Hours of forward passes are not spent on a factorisation that cannot fit.
        let left = files.len() - (files.len()).min((i + 1) * a.batch as usize);
        if let (Some(m), true) = (memory, held > 0) {
            let need = memory_needed(held, fewest, left, channels, a.components);
            if need > m {
                bar.finish_and_clear();
                anyhow::bail!(
                    "dff of {} images at {layer} needs about {} ({channels} channels and \
                     3 × {} concept values, 4 bytes each, per position: {} positions per image \
                     or more), more than {} {} of memory; factorise fewer images, at a \
                     smaller --size or at a layer of fewer positions",
                    files.len(),
                    crate::memory::amount(need),
                    a.components,
                    fewest,
                    crate::memory::whose(),
                    crate::memory::amount(m),
                );
            }
        }
    }
    let Some(hw0) = first_hw else {
        bar.finish_and_clear();
        eprintln!("error: no image could be factorised ({failed} input(s) failed, listed above)");
        return Ok(ExitCode::from(1));
    };
    let k = a.components;
    let channels = acts[0].dims4().1;
    if k > channels {
        bar.finish_and_clear();
        anyhow::bail!("-k/--components {k}: more concepts than the {channels} channels of {layer}");
    }
    // (Each position of each image is a row of the factorised matrix: more concepts than
    // rows leave some holding nothing.)
    if k > held {
        bar.finish_and_clear();
        anyhow::bail!(
            "-k/--components {k}: more concepts than the {held} positions of {layer} over the \
             images ({}); give fewer, or more images",
            kept.len()
        );
    }
    if let Some(note) = passes.cut_note("large images", "--batch") {
        bar.suspend(|| eprintln!("note: {note}"));
    }
    bar.set_message(format!("factorising into {k} concepts"));
    let f = dff::factorize(acts, k)?;
    if !f.converged {
        bar.suspend(|| {
            eprintln!(
                "note: the NMF stopped at its limit of {} iterations before its tolerance \
                 (as scikit-learn's would, with a ConvergenceWarning)",
                f.iterations
            )
        });
    }

    // Each concept's classes: the network after the layer on the concept.
    let scores = dff::concept_scores(net, &layer, &f.concepts, hw0)?;
    let label = |c: usize| {
        graph
            .labels
            .as_ref()
            .and_then(|l| l.get(c).cloned())
            .unwrap_or_else(|| format!("class {c}"))
    };
    let concept_classes: Vec<Option<Vec<serde_json::Value>>> = (0..k)
        .map(|i| {
            scores.as_ref().map(|s| {
                let nc = s.shape()[1];
                let logits = &s.data()[i * nc..(i + 1) * nc];
                let p = gradcam::explain::softmax(logits);
                let mut order: Vec<usize> = (0..nc).collect();
                order.sort_by(|&x, &y| p[y].total_cmp(&p[x]).then(x.cmp(&y)));
                (order.iter().take(a.top_k as usize))
                    .map(|&c| json!({"class": c, "label": label(c), "probability": p[c]}))
                    .collect()
            })
        })
        .collect();

    // Per image: the share of the layer's positions each concept holds, and the overlay.
    bar.set_message("overlays");
    bar.set_length(kept.len() as u64);
    bar.set_position(0);
    // (An image in the output folder named like another's overlay keeps its name: `a.png`
    // beside `a.dff.png` writes `a-2.dff.png`.)
    let over = inputs::stems_over_inputs(&kept, &a.out, &[".dff.png"]);
    let reserved: Vec<&str> = over.iter().map(String::as_str).collect();
    let stems = inputs::stems(&kept, &a.inputs, &reserved);
    let mut per_image = Vec::new();
    let mut shares: Vec<Vec<f32>> = Vec::new();
    let mut total = vec![0usize; k];
    let mut positions = 0usize;
    for ((path, maps), stem) in kept.iter().zip(&f.maps).zip(&stems) {
        let (mh, mw) = (maps.shape()[1], maps.shape()[2]);
        // Owners as the overlay colours them: each map normalised first.
        let owner = dff::concept_per_pixel(&dff::scale_maps(maps.data(), (mh, mw), (mh, mw)), k);
        let mut share = vec![0f32; k];
        for &o in &owner {
            share[o] += 1.0 / owner.len() as f32;
            total[o] += 1;
        }
        positions += owner.len();
        let out = a.out.join(format!("{stem}.dff.png"));
        let written = load_rgb8(path)
            .map_err(anyhow::Error::from)
            .and_then(|img| {
                let vis = dff::overlay(&img, maps.data(), (mh, mw), k, a.image_weight)?;
                if let Some(dir) = out.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                crate::explain::save_png(&vis, &out)
            });
        if let Err(e) = &written {
            failed += 1;
            bar.suspend(|| eprintln!("error: {}: {e:#}", path.display()));
        }
        let dominant = (0..k).fold(0, |b, c| if share[c] > share[b] { c } else { b });
        per_image.push(json!({
            "image": gradcam::path_text::text(path),
            // (Relative to dff.json's folder, as explain's reports name their files.)
            "overlay": written.is_ok().then(|| format!("{stem}.dff.png")),
            "share": share,
            "dominant": dominant,
        }));
        shares.push(share);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let concepts: Vec<serde_json::Value> = (0..k)
        .map(|i| {
            let [r, g, b] = dff::concept_colour(i, k);
            // The images where the concept holds most of the picture, most first.
            let mut order: Vec<usize> = (0..shares.len()).filter(|&n| shares[n][i] > 0.0).collect();
            order.sort_by(|&x, &y| shares[y][i].total_cmp(&shares[x][i]).then(x.cmp(&y)));
            let top: Vec<serde_json::Value> = (order.iter().take(TOP_IMAGES))
                .map(|&n| json!({"image": gradcam::path_text::text(&kept[n]), "share": shares[n][i]}))
                .collect();
            json!({
                "concept": i,
                "colour": format!("#{r:02x}{g:02x}{b:02x}"),
                "share": total[i] as f32 / positions.max(1) as f32,
                "images": order.len(),
                "classes": concept_classes[i],
                "top_images": top,
            })
        })
        .collect();
    gradcam::npy::write_f32(
        &a.out.join("concepts.npy"),
        f.concepts.shape(),
        f.concepts.data(),
    )?;
    // Per group (the folder given, and its first-level subfolder when the image lies below
    // one: `DATA/cats`; `.` for images given by name): each concept's share averaged over the
    // group's images, so a concept that one class or source holds more than the others (a
    // watermark, a background) stands out.
    let mut groups: std::collections::BTreeMap<String, (usize, Vec<f64>)> = Default::default();
    for (path, share) in kept.iter().zip(&shares) {
        let name = group_of(path, &a.inputs);
        let g = groups.entry(name).or_insert_with(|| (0, vec![0.0; k]));
        g.0 += 1;
        g.1.iter_mut().zip(share).for_each(|(t, &v)| *t += v as f64);
    }
    let mut csv = format!(
        "group,images,{}\n",
        (0..k)
            .map(|i| format!("concept_{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let group_json: Vec<serde_json::Value> = (groups.iter())
        .map(|(name, (n, sum))| {
            let mean: Vec<f64> = sum.iter().map(|v| v / *n as f64).collect();
            let cells: Vec<String> = mean.iter().map(|v| format!("{v:.4}")).collect();
            csv += &format!("{},{n},{}\n", crate::summary::field(name), cells.join(","));
            json!({"group": name, "images": n, "share": mean})
        })
        .collect();
    let csv_path = a.out.join("concepts_by_group.csv");
    std::fs::write(&csv_path, csv).with_context(|| format!("writing {}", csv_path.display()))?;
    let report = json!({
        "model": graph.arch,
        "layer": layer,
        "components": k,
        "nmf_iterations": f.iterations,
        "images": per_image,
        "concepts": concepts,
        "groups": group_json,
    });
    let path = a.out.join(crate::resume::DFF_REPORT);
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    // The overlays an earlier run into this folder listed and this one did not rewrite are
    // of its concepts, not these: gone, rather than left beside this run's.
    // (Compared case aside, as a macOS disk names files, and never an input read now.)
    let key = |p: &Path| inputs::canonical(p).to_string_lossy().to_lowercase();
    let now: std::collections::HashSet<String> = (stems.iter())
        .map(|s| key(&a.out.join(format!("{s}.dff.png"))))
        .chain(kept.iter().map(|p| key(p)))
        .collect();
    let stale: Vec<&PathBuf> = earlier.iter().filter(|p| !now.contains(&key(p))).collect();
    for p in &stale {
        if let Err(e) = std::fs::remove_file(p) {
            eprintln!(
                "warning: {}: an earlier run's overlay left: {e}",
                p.display()
            );
        }
    }
    if !stale.is_empty() {
        eprintln!(
            "note: removed {} overlays of the earlier dff run in {} (of other images)",
            stale.len(),
            a.out.display()
        );
    }
    // The concepts on the terminal, largest first.
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&x, &y| total[y].cmp(&total[x]));
    println!(
        "{} images, {} concepts at {layer} ({} NMF iterations)",
        kept.len(),
        k,
        f.iterations
    );
    for i in order {
        let names = concept_classes[i].as_ref().map_or_else(
            || "-".to_string(),
            |c| {
                c.iter()
                    .map(|v| {
                        let p = v["probability"].as_f64().unwrap_or(f64::NAN);
                        format!("{} {p:.2}", v["label"].as_str().unwrap_or(""))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
        println!(
            "concept {i:>2}  {:>5.1} % of positions  {names}",
            100.0 * total[i] as f32 / positions.max(1) as f32
        );
    }
    println!("wrote {}", a.out.display());
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// An image's group: the folder given that holds it (the first that does), joined with the
/// first folder below it on the image's path if any; `.` for an image given by name.
fn group_of(path: &std::path::Path, roots: &[PathBuf]) -> String {
    for root in roots.iter().filter(|r| r.is_dir()) {
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let mut parts = rel.components();
        let first = parts.next();
        let name = root.display().to_string();
        let name = name.trim_end_matches('/');
        return match (first, parts.next()) {
            (Some(sub), Some(_)) => format!("{name}/{}", sub.as_os_str().to_string_lossy()),
            _ => name.to_string(),
        };
    }
    ".".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ResNet-50's `layer4` at 224² (2048 channels, 7 × 7 positions), 16 concepts: 10 000
    /// images take 49 · (2048 + 48) · 4 bytes each, about 3.8 GiB, however many are read yet;
    /// at `native` the images still to read count at the fewest positions seen.
    #[test]
    fn memory_needed_counts_every_image_to_come() {
        let per_image = 49 * (2048 + 3 * 16) * 4;
        for read in [1, 10, 10_000] {
            assert_eq!(
                memory_needed(49 * read, 49, 10_000 - read, 2048, 16),
                10_000 * per_image as u64
            );
        }
        assert_eq!(
            memory_needed(100 + 20, 20, 3, 8, 1),
            (120 + 60) * (8 + 3) * 4
        );
        assert_eq!(memory_needed(usize::MAX, 1, usize::MAX, 2048, 16), u64::MAX);
    }
}
