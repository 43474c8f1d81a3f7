//! Fully connected layer: `y = x W^T + b` (PyTorch's `nn.Linear`).

use ndarray::{Array1, Array2, ArrayView2, ArrayViewD, ArrayViewMutD, Axis};
use rand::Rng;

use crate::error::{check_shape, Result};
use crate::linalg::matmul;
use crate::module::{join, Module};

/// `weight` `[out, in]`, `bias` `[out]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    pub weight: Array2<f32>,
    pub bias: Option<Array1<f32>>,
}

impl Linear {
    /// PyTorch's default initialisation: uniform in `±1/sqrt(in)`.
    pub fn new(input: usize, output: usize, bias: bool, rng: &mut impl Rng) -> Self {
        let bound = 1.0 / (input as f32).sqrt();
        Linear {
            weight: crate::init::uniform((output, input), bound, rng),
            bias: bias.then(|| crate::init::uniform(output, bound, rng)),
        }
    }

    /// Input width.
    pub fn input_dim(&self) -> usize {
        self.weight.ncols()
    }

    /// Output width.
    pub fn output_dim(&self) -> usize {
        self.weight.nrows()
    }

    /// `x` `[n, in]` -> `y` `[n, out]`. Backward needs only `x`, which the caller keeps.
    pub fn forward(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        check_shape(
            "Linear",
            "input",
            x.shape(),
            &[None, Some(self.input_dim())],
        )?;
        let mut y = Array2::zeros((x.nrows(), self.output_dim()));
        if let Some(b) = &self.bias {
            y.assign(
                &b.broadcast((x.nrows(), self.output_dim()))
                    .expect("bias is [out]"),
            );
        }
        matmul(y.view_mut(), x, self.weight.t(), self.bias.is_some());
        Ok(y)
    }

    /// Adds `dL/dW`, `dL/db` into `grads` and returns `dL/dx` `[n, in]`, given the
    /// forward input `x` `[n, in]` and `dy` `[n, out]`.
    pub fn backward(
        &self,
        x: ArrayView2<f32>,
        dy: ArrayView2<f32>,
        grads: &mut Linear,
    ) -> Result<Array2<f32>> {
        check_shape(
            "Linear",
            "input",
            x.shape(),
            &[None, Some(self.input_dim())],
        )?;
        check_shape(
            "Linear",
            "output gradient",
            dy.shape(),
            &[Some(x.nrows()), Some(self.output_dim())],
        )?;
        matmul(grads.weight.view_mut(), dy.t(), x, true);
        if let Some(gb) = &mut grads.bias {
            *gb += &dy.sum_axis(Axis(0));
        }
        let mut dx = Array2::zeros(x.raw_dim());
        matmul(dx.view_mut(), dy, self.weight.view(), false);
        Ok(dx)
    }
}

impl Module for Linear {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, ArrayViewD<'a, f32>)) {
        f(join(prefix, "weight"), self.weight.view().into_dyn());
        if let Some(b) = &self.bias {
            f(join(prefix, "bias"), b.view().into_dyn());
        }
    }

    fn visit_mut<'a>(
        &'a mut self,
        prefix: &str,
        f: &mut dyn FnMut(String, ArrayViewMutD<'a, f32>),
    ) {
        f(join(prefix, "weight"), self.weight.view_mut().into_dyn());
        if let Some(b) = &mut self.bias {
            f(join(prefix, "bias"), b.view_mut().into_dyn());
        }
    }

    fn zeros_like(&self) -> Self {
        Linear {
            weight: Array2::zeros(self.weight.raw_dim()),
            bias: self.bias.as_ref().map(|b| Array1::zeros(b.raw_dim())),
        }
    }
}
