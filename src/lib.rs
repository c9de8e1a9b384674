//! Grad-CAM (Selvaraju et al., arXiv 1610.02391) for torchvision VGG and ResNet models loaded
//! from safetensors, fast enough to explain whole data sets.
//!
//! The pipeline: [`image`] decodes and preprocesses, [`model`] builds the network from the
//! weights, [`cam`] runs the forward pass, the backward-data pass down to the target layer only,
//! and the post-processing (upsample, normalise, colormap overlay). Every op goes through
//! [`backend::Backend`]. [`eval`] scores maps (localisation, deletion / insertion, ROAD, ...);
//! [`dff`] factorises a set of images' activations into shared concepts.
//!
//! ```
//! use std::path::Path;
//!
//! use gradcam::backend::CpuBackend;
//! use gradcam::explain::{explain_batch, ExplainConfig, Timings};
//! use gradcam::image::{load_rgb8, preprocess, InputSize};
//! use gradcam::model::{self, Network};
//!
//! // The demo model (a small ResNet on 128×128 scenes of 8 shapes) on the CPU.
//! let net = Network::new(model::load("assets/demo/model.safetensors", None)?, CpuBackend::fast())?;
//! let a = load_rgb8(Path::new("assets/demo/heldout/0001.png"))?;
//! let b = load_rgb8(Path::new("assets/demo/heldout/0002.png"))?;
//!
//! // Grad-CAM for each image's predicted class at the default layer (layer4).
//! let cfg = ExplainConfig { size: InputSize::Square(128), ..Default::default() };
//! let out = explain_batch(&net, &[&a, &b], &cfg, &mut Timings::default())?;
//! assert_eq!(out[0].cam.len(), 128 * 128);
//! assert!(out[0].overlay.is_some());
//!
//! // ROAD of the first map (pytorch-grad-cam's ROADCombined over the class probability).
//! let x = preprocess(&[&a], (128, 128));
//! let p = out[0].probability;
//! let cfg = gradcam::eval::road::RoadConfig::default();
//! let road = gradcam::eval::road::road_scores(&net, &x, &out[0].cam, out[0].class, p, &cfg, 18)?;
//! assert!(road.unwrap().combined().is_finite());
//!
//! // Deep Feature Factorization: 4 concepts shared by both images, each named by the head.
//! let (act, _) = gradcam::dff::activations(&net, preprocess(&[&a, &b], (128, 128)), "layer4")?;
//! let f = gradcam::dff::factorize(vec![act], 4)?;
//! assert_eq!(f.concepts.shape(), [128, 4]);
//! let scores = gradcam::dff::concept_scores(&net, "layer4", &f.concepts, (128, 128))?;
//! assert_eq!(scores.unwrap().shape(), [4, 8]);
//! # Ok::<(), gradcam::Error>(())
//! ```

pub mod backend;
pub mod cam;
pub mod csv;
pub mod dff;
mod error;
pub mod eval;
pub mod explain;
pub mod image;
pub mod model;
pub mod npy;
pub mod parity;
pub mod path_text;
mod tensor;

pub use error::{Error, Result};
pub use tensor::Tensor;

/// An amount of memory for messages, in powers of 1024 (as `GRADCAM_MEMORY` takes them):
/// `23.5 GiB`, `488 MiB`, `12 KiB`, `100 bytes`.
pub fn memory_amount(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.0} MiB", b / (1u64 << 20) as f64)
    } else if bytes >= 1 << 10 {
        format!("{:.0} KiB", b / 1024.0)
    } else {
        format!("{bytes} bytes")
    }
}
