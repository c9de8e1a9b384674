//! The CAM methods and their post-processing.

pub mod aug_smooth;
pub mod colormap;
pub mod eigen;
pub mod finer;
mod full_grad;
pub mod kpca;
mod methods;
pub mod multi_layer;
pub mod postprocess;
pub mod sess;
mod shapley;
pub mod target;

pub use colormap::{Colormap, OverlayStyle};
pub use eigen::principal_projection;
pub use finer::Finer;
pub use methods::{
    argmax, check_fem_k, explain, grad_cam, CamBatch, CamRequest, ClassSel, Method, FEM_K,
};
pub use postprocess::{deprocess, normalise_minmax, overlay, overlay_with, upsample_normalised};
pub use target::Target;
