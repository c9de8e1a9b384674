//! What the GPU backend's tensors and options are: storage types, the convolution arithmetic,
//! the tensor-core tile, and the device tensor itself.

/// How a tensor is stored on the device (arithmetic is f32 either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    Bf16,
    F16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 | DType::F16 => 2,
        }
    }
    /// The `<t>` of kernel entry names.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
        }
    }

    /// f32 values as this type's little-endian bytes, rounded to nearest even (the `half`
    /// crate, as the kernels round).
    pub fn encode(self, v: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            DType::Bf16 => v
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            DType::F16 => v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
        }
    }

    /// This type's little-endian bytes as f32 values (exact).
    pub fn decode(self, b: &[u8]) -> Vec<f32> {
        match self {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::Bf16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }
}

pub struct GpuTensor<B> {
    /// The logical shape, NCHW for 4-D tensors whatever the layout in memory.
    pub(super) shape: Vec<usize>,
    pub(super) buf: B,
    pub(super) dtype: DType,
    /// Stored channels-last ([N][H][W][C]): only outputs of the channels-last convolutions
    /// (GRADCAM_CONV_NHWC=1); every other op reads NCHW and transposes such an input first.
    pub(super) nhwc: bool,
    /// f32 values all exact in TF32 (the outputs of TF32 channels-last convs, transpositions
    /// that rounded, and what keeps values: ReLU, max pooling, copies): what a channels-last
    /// TF32 conv, whose cp.async copies do not round, may read as it is.
    pub(super) tf32_exact: bool,
}

impl<B> GpuTensor<B> {
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Stored channels-last (see [`super::GpuBackend::with_conv_nhwc`]).
    pub fn is_channels_last(&self) -> bool {
        self.nhwc
    }
    pub(super) fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A tensor as given, or a converted copy.
pub(super) enum Converted<'a, T> {
    Given(&'a T),
    Made(T),
}

impl<T> std::ops::Deref for Converted<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Converted::Given(t) => t,
            Converted::Made(t) => t,
        }
    }
}

/// Arithmetic of the convolutions (the bulk of the work; at BF16 and F16 the linear layers
/// too, whose 16-bit products are exact in f32); everything else is f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 FMAs: the same numbers as the CPU backend and pytorch-grad-cam on the CPU.
    F32,
    /// Tensor cores with operands rounded to TF32 (10 mantissa bits), f32 accumulation: what
    /// PyTorch's cuDNN convolutions do by default (`torch.backends.cudnn.allow_tf32`).
    #[default]
    Tf32,
    /// bf16 tensors in memory (activations, gradients, weights: half the traffic) and BF16
    /// tensor-core convolutions (8 mantissa bits), f32 accumulation; the CAM weights and maps
    /// are computed and kept in f32. As `torch.autocast(dtype=torch.bfloat16)`.
    Bf16,
    /// f16 tensors in memory and F16 tensor-core convolutions (10 mantissa bits, TF32's
    /// precision, but a range of ±65504 and gradual underflow below 6.1e-5), f32 accumulation;
    /// CAM weights and maps in f32. As `torch.autocast(dtype=torch.float16)`.
    F16,
}

impl Precision {
    /// How network tensors are stored under this precision.
    pub fn storage(self) -> DType {
        match self {
            Precision::Bf16 => DType::Bf16,
            Precision::F16 => DType::F16,
            Precision::F32 | Precision::Tf32 => DType::F32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

/// Tile side of the tensor-core convolutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvTile {
    /// 128x128 for large GEMMs (≥ 128 output channels, ≥ 8192 output pixels), else 64x64.
    Auto,
    T64,
    T128,
}

impl ConvTile {
    pub(super) fn from_env() -> Self {
        match std::env::var("GRADCAM_CONV_TILE").as_deref() {
            Ok("64") => ConvTile::T64,
            Ok("128") => ConvTile::T128,
            _ => ConvTile::Auto,
        }
    }
}
