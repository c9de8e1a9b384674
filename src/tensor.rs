//! A host tensor: a shape and a contiguous row-major `Vec<f32>`. Activations are NCHW.

/// A host tensor: inputs, logits, channel weights and maps come back as these.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// Panics if `data.len()` does not match the shape: callers inside the library build
    /// both from the same numbers, so a mismatch is a bug, not bad input.
    pub fn new(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Self {
        let shape = shape.into();
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor data does not match shape {shape:?}"
        );
        Tensor { shape, data }
    }

    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Vec<usize>>) -> Self {
        let shape = shape.into();
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    /// A tensor with every value `v`.
    pub fn full(shape: impl Into<Vec<usize>>, v: f32) -> Self {
        let mut t = Self::zeros(shape);
        t.data.fill(v);
        t
    }

    /// The dimensions, outermost first (NCHW for activations).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values, row-major, to change in place.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// The values, without a copy.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// The number of values (the product of the shape).
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether some dimension is zero.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Same data, new shape with the same number of elements.
    ///
    /// # Panics
    /// If the element counts differ (a backend's `reshape` checks and returns an error).
    pub fn reshape(mut self, shape: impl Into<Vec<usize>>) -> Self {
        let shape = shape.into();
        assert_eq!(shape.iter().product::<usize>(), self.data.len());
        self.shape = shape;
        self
    }

    /// NCHW dimensions; panics on a tensor that is not 4-D (a library bug).
    pub fn dims4(&self) -> (usize, usize, usize, usize) {
        match self.shape[..] {
            [n, c, h, w] => (n, c, h, w),
            _ => panic!("expected a 4-D tensor, got {:?}", self.shape),
        }
    }

    /// Images `start..end` along the first axis.
    ///
    /// # Panics
    /// If `start..end` is not within the first axis, or the tensor has no dims.
    pub fn slice_batch(&self, start: usize, end: usize) -> Tensor {
        let per: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        Tensor::new(shape, self.data[start * per..end * per].to_vec())
    }

    /// Largest absolute difference; NaN anywhere counts as infinitely different.
    ///
    /// # Panics
    /// If the two tensors differ in shape.
    pub fn max_abs_diff(&self, other: &Tensor) -> f32 {
        assert_eq!(self.shape, other.shape, "shapes differ");
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| {
                let d = (a - b).abs();
                if d.is_nan() {
                    f32::INFINITY
                } else {
                    d
                }
            })
            .fold(0.0, f32::max)
    }
}
