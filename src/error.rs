//! One error type for the library: every failure a user can cause names what went wrong and
//! where (the file, the tensor, the expected and found shapes, the valid choices).

use std::path::PathBuf;

/// Every failure the library reports. Its message is meant to be shown as it is: it names
/// the file, tensor, layer or class concerned and, where there is one, what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    ///
    /// The reason is part of the message and not also the error's `source()`, so a printer
    /// of error chains (anyhow's `{:#}`) does not print it twice.
    #[error("{path}: {}", io_words(error))]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A model file that is not a readable safetensors file (a pickle, a truncated download).
    #[error("{path}: not a valid safetensors file: {reason}")]
    BadSafetensors { path: PathBuf, reason: String },
    /// A PyTorch `torch.save` file (.pth, .pt) whose state_dict cannot be read.
    #[error("{path}: not a readable PyTorch state_dict: {reason}")]
    BadPth { path: PathBuf, reason: String },
    /// A tensor the architecture needs is not in the model file; `hint` names tensors
    /// of similar names or the likely cause (a head saved inside a Sequential, a missing
    /// downsample or bias).
    #[error("{path}: tensor `{name}` is missing{hint}")]
    MissingTensor {
        path: PathBuf,
        name: String,
        hint: String,
    },
    /// A tensor whose shape does not fit the architecture read from the others.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected}")]
    BadShape {
        path: PathBuf,
        name: String,
        /// As written in the message: `[64, 3, 7, 7]`.
        expected: String,
        found: Vec<usize>,
    },
    /// A weight stored in a type other than F32, F64, F16 or BF16 (integer or 8-bit
    /// quantised checkpoints).
    #[error(
        "{path}: tensor `{name}` has dtype {dtype}; only F32, F64, F16 and BF16 are supported"
    )]
    BadDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    /// The tensors match no supported architecture (VGG, ResNet and their variants), or
    /// an `--arch` that is unknown or does not fit the file.
    #[error("cannot recognise the architecture: {0}")]
    UnknownArch(String),
    /// A layer name the model does not have; `valid` lists those it has.
    #[error("unknown layer `{name}`; valid layers: {valid}")]
    UnknownLayer { name: String, valid: String },
    /// A layer that exists but cannot be explained (no spatial map, as `fc`).
    #[error("layer `{name}` cannot be a Grad-CAM target: {reason}")]
    BadTarget { name: String, reason: String },
    /// A class index past the model's head.
    #[error("class {class} is out of range: the model has {num_classes} classes (0..={max})", max = num_classes.saturating_sub(1))]
    ClassOutOfRange { class: usize, num_classes: usize },
    /// A file that is not an image this library decodes, or a damaged one.
    #[error("{path}: cannot decode image: {reason}")]
    BadImage { path: PathBuf, reason: String },
    /// An input tensor of the wrong rank, channels or size for the network.
    #[error("input shape {found:?} does not fit: {reason}")]
    BadInput { found: Vec<usize>, reason: String },
    /// The device ran out of memory; a batch that hits this is split and retried.
    #[error("out of device memory: {0}")]
    OutOfMemory(String),
    /// No usable GPU: what is missing and where we looked.
    #[error("{0}")]
    NoDevice(String),
    /// A CUDA driver, NVRTC or kernel failure other than running out of memory.
    #[error("CUDA: {0}")]
    Cuda(String),
    /// Infinities or NaNs in a network's results: an overflow (f16 tops out at 65504) or a
    /// corrupt model.
    #[error(
        "the network produced infinities or NaNs in the {what} on {backend}{first}: an \
         overflow (at --precision f16 any value beyond ±65504; bf16 and tf32 have f32's range) \
         or a corrupt model"
    )]
    NonFinite {
        what: String,
        backend: String,
        /// Empty, or where the forward pass first went wrong (", first in the output of …").
        first: String,
    },
    /// Arguments that do not go together or are out of range; the message says which.
    #[error("{0}")]
    Invalid(String),
}

/// The library's result, [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The common I/O failures in plain words (as the CLI's own input checks put them); the rest
/// as the OS words them, without its error number.
fn io_words(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => "no such file or folder".into(),
        K::PermissionDenied => "permission denied".into(),
        K::IsADirectory => "a folder, not a file".into(),
        K::NotADirectory => "a part of the path is a file, not a folder".into(),
        _ => {
            let s = e.to_string();
            match s.rfind(" (os error ") {
                Some(i) if s.ends_with(')') => s[..i].to_string(),
                _ => s,
            }
        }
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error,
        }
    }
}
