//! Geometry of convolutions and pools, with PyTorch's output-size rule.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
        }
    }
}

impl Conv2dParams {
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dParams {
            stride: (stride, stride),
            padding: (padding, padding),
            ..Default::default()
        }
    }

    /// Output H×W for an input H×W and kernel R×S; None when the kernel does not fit.
    pub fn out_hw(&self, in_hw: (usize, usize), k: (usize, usize)) -> Option<(usize, usize)> {
        Some((
            out_len(in_hw.0, k.0, self.stride.0, self.padding.0, self.dilation.0)?,
            out_len(in_hw.1, k.1, self.stride.1, self.padding.1, self.dilation.1)?,
        ))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dParams {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
}

impl Pool2dParams {
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        Pool2dParams {
            kernel: (kernel, kernel),
            stride: (stride, stride),
            padding: (padding, padding),
            dilation: (1, 1),
        }
    }

    pub fn out_hw(&self, in_hw: (usize, usize)) -> Option<(usize, usize)> {
        Some((
            out_len(
                in_hw.0,
                self.kernel.0,
                self.stride.0,
                self.padding.0,
                self.dilation.0,
            )?,
            out_len(
                in_hw.1,
                self.kernel.1,
                self.stride.1,
                self.padding.1,
                self.dilation.1,
            )?,
        ))
    }
}

/// floor((n + 2p - d(k-1) - 1) / s) + 1, or None when that is below 1.
fn out_len(n: usize, k: usize, s: usize, p: usize, d: usize) -> Option<usize> {
    let span = d * (k - 1) + 1;
    let padded = n + 2 * p;
    if padded < span {
        return None;
    }
    Some((padded - span) / s + 1)
}
