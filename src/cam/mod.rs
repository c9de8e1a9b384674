//! Grad-CAM and its post-processing.

mod gradcam;
pub mod jet;
pub mod postprocess;

pub use gradcam::{grad_cam, CamBatch, ClassSel};
pub use postprocess::{normalise_minmax, overlay, upsample_normalised};
