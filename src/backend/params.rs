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

    /// The geometry of the conv whose forward pass is this one's backward-data pass, for a
    /// kernel R×S: with stride 1, dilation 1 and one group, ∂L/∂x = conv2d(∂L/∂y, w flipped
    /// in space with its K and C axes swapped, padding R−1−p); None for other convs (a stride
    /// would need zeros between ∂L/∂y's values) and for padding beyond R−1.
    pub fn transposed(&self, (r, s): (usize, usize)) -> Option<Conv2dParams> {
        let one = (self.stride, self.dilation, self.groups) == ((1, 1), (1, 1), 1);
        (one && self.padding.0 < r && self.padding.1 < s).then(|| Conv2dParams {
            padding: (r - 1 - self.padding.0, s - 1 - self.padding.1),
            ..Default::default()
        })
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

/// floor((n + 2p - d(k-1) - 1) / s) + 1, or None when that is below 1;
/// none too for a zero kernel, stride or dilation, and sizes past usize.
fn out_len(n: usize, k: usize, s: usize, p: usize, d: usize) -> Option<usize> {
    if k == 0 || s == 0 || d == 0 {
        return None;
    }
    let span = d.checked_mul(k - 1)?.checked_add(1)?;
    let padded = n.checked_add(p.checked_mul(2)?)?;
    if padded < span {
        return None;
    }
    Some((padded - span) / s + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transposed conv's padding gives back the input's size; strides, dilation, groups
    /// and padding beyond the kernel have none.
    #[test]
    fn transposed_geometry() {
        for (k, pad, h) in [
            (3, 1, 7),
            (3, 0, 9),
            (1, 0, 5),
            (5, 2, 11),
            (7, 3, 8),
            (3, 2, 4),
        ] {
            let p = Conv2dParams::new(1, pad);
            let t = p.transposed((k, k)).unwrap();
            let (oh, ow) = p.out_hw((h, h + 1), (k, k)).unwrap();
            assert_eq!(
                t.out_hw((oh, ow), (k, k)),
                Some((h, h + 1)),
                "k {k} pad {pad}"
            );
        }
        assert!(Conv2dParams::new(2, 1).transposed((3, 3)).is_none());
        assert!(Conv2dParams::new(1, 3).transposed((3, 3)).is_none());
        let grouped = Conv2dParams {
            groups: 2,
            ..Conv2dParams::new(1, 1)
        };
        assert!(grouped.transposed((3, 3)).is_none());
        let dilated = Conv2dParams {
            dilation: (2, 2),
            ..Conv2dParams::new(1, 1)
        };
        assert!(dilated.transposed((3, 3)).is_none());
    }

    /// PyTorch's sizes (`F.conv2d(torch.zeros(1, 1, 7, 7), torch.zeros(1, 1, 3, 3), stride=2,
    /// padding=1).shape[2:]` is 4×4); no size, rather than a panic or a wrapped-around one,
    /// for a zero kernel, stride or dilation and for sizes past usize.
    #[test]
    fn output_sizes() {
        let p = Conv2dParams::new(2, 1);
        assert_eq!(p.out_hw((7, 7), (3, 3)), Some((4, 4)));
        assert_eq!(p.out_hw((1, 1), (5, 5)), None);
        assert_eq!(p.out_hw((7, 7), (0, 3)), None);
        assert_eq!(Conv2dParams::new(0, 1).out_hw((7, 7), (3, 3)), None);
        let undilated = Conv2dParams {
            dilation: (0, 1),
            ..p
        };
        assert_eq!(undilated.out_hw((7, 7), (3, 3)), None);
        assert_eq!(p.out_hw((usize::MAX, 7), (3, 3)), None);
        assert_eq!(Pool2dParams::new(3, 0, 1).out_hw((7, 7)), None);
    }
}
