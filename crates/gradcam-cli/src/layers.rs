//! `gradcam layers MODEL`: every target-able module path with its output shape.

use std::process::ExitCode;

use clap::Args;
use gradcam::image::InputSize;

use crate::{input_size, load_graph, parse_size};

#[derive(Args)]
pub struct LayersArgs {
    /// Weights with torchvision's state_dict names: safetensors, or a torch.save .pth/.pt
    /// (default: the demo model).
    model: Option<std::path::PathBuf>,
    /// The same, as the other commands take it.
    #[arg(
        long = "model",
        short = 'm',
        value_name = "MODEL",
        conflicts_with = "model"
    )]
    model_flag: Option<std::path::PathBuf>,
    /// Force the architecture instead of detecting it.
    #[arg(long)]
    arch: Option<String>,
    /// Input size the shapes are computed for (default: the model's own, else 224).
    #[arg(long, value_parser = parse_size)]
    size: Option<InputSize>,
}

pub fn run(a: LayersArgs) -> anyhow::Result<ExitCode> {
    let g = load_graph(a.model.or(a.model_flag).as_deref(), a.arch.as_deref(), None)?;
    let hw = match input_size(a.size, &g) {
        InputSize::Square(s) => s,
        InputSize::Native => anyhow::bail!("`layers` needs a numeric --size"),
    };
    let shapes = g.shapes(&[1, g.in_channels, hw, hw])?;
    use std::fmt::Write as _;
    let mut text = String::new();
    writeln!(
        text,
        "{} ({} classes); default Grad-CAM layer: {}; shapes for a {hw}x{hw} input",
        g.arch, g.num_classes, g.default_layer
    )?;
    let width = g.layers.iter().map(|l| l.name.len()).max().unwrap_or(0);
    for l in &g.layers {
        let s = &shapes[l.node];
        let what = if l.kind == "conv" || l.kind == "linear" {
            g.nodes[l.node].op.describe(&g.param_shapes)
        } else {
            l.kind.clone()
        };
        writeln!(
            text,
            "{:width$}  {:<20}  {what}",
            l.name,
            format!("{:?}", &s[1..])
        )?;
    }
    // A closed pipe (`gradcam layers M | head`) is not an error worth a message.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
    Ok(ExitCode::SUCCESS)
}
