//! Grad-CAM (Selvaraju et al., arXiv 1610.02391) for torchvision VGG and ResNet models loaded
//! from safetensors, fast enough to explain whole data sets.
//!
//! The pipeline: [`image`] decodes and preprocesses, [`model`] builds the network from the
//! weights, [`cam`] runs the forward pass, the backward-data pass down to the target layer only,
//! and the post-processing (upsample, normalise, colormap overlay). Every op goes through
//! [`backend::Backend`].

pub mod backend;
pub mod cam;
pub mod dff;
mod error;
pub mod eval;
pub mod explain;
pub mod image;
pub mod model;
pub mod npy;
pub mod parity;
mod tensor;

pub use error::{Error, Result};
pub use tensor::Tensor;
