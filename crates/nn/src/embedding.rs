//! Lookup table: row `id` of `weight` (PyTorch's `nn.Embedding`).

use ndarray::{Array2, ArrayView2, ArrayViewD, ArrayViewMutD};
use rand::Rng;

use crate::error::{check_shape, Error, Result};
use crate::module::{join, Module};

/// `weight` `[vocab, dim]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub weight: Array2<f32>,
}

impl Embedding {
    /// Initialised uniform in `±1/sqrt(dim)` (PyTorch uses N(0, 1); a smaller scale
    /// keeps the first LSTM's gates out of saturation).
    pub fn new(vocab: usize, dim: usize, rng: &mut impl Rng) -> Self {
        Embedding {
            weight: crate::init::uniform((vocab, dim), 1.0 / (dim as f32).sqrt(), rng),
        }
    }

    fn check_ids(&self, ids: &[usize]) -> Result<()> {
        if let Some(&bad) = ids.iter().find(|&&i| i >= self.weight.nrows()) {
            return Err(Error::Lengths {
                layer: "Embedding".into(),
                reason: format!(
                    "id {bad} is outside the vocabulary of {}",
                    self.weight.nrows()
                ),
            });
        }
        Ok(())
    }

    /// `ids` `[n]` -> `[n, dim]`.
    pub fn forward(&self, ids: &[usize]) -> Result<Array2<f32>> {
        self.check_ids(ids)?;
        let mut y = Array2::zeros((ids.len(), self.weight.ncols()));
        for (mut row, &id) in y.rows_mut().into_iter().zip(ids) {
            row.assign(&self.weight.row(id));
        }
        Ok(y)
    }

    /// Adds `dy` `[n, dim]` into the rows of `grads.weight` that `ids` picked.
    pub fn backward(
        &self,
        ids: &[usize],
        dy: ArrayView2<f32>,
        grads: &mut Embedding,
    ) -> Result<()> {
        self.check_ids(ids)?;
        check_shape(
            "Embedding",
            "output gradient",
            dy.shape(),
            &[Some(ids.len()), Some(self.weight.ncols())],
        )?;
        for (row, &id) in dy.rows().into_iter().zip(ids) {
            let mut g = grads.weight.row_mut(id);
            g += &row;
        }
        Ok(())
    }
}

impl Module for Embedding {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, ArrayViewD<'a, f32>)) {
        f(join(prefix, "weight"), self.weight.view().into_dyn());
    }

    fn visit_mut<'a>(
        &'a mut self,
        prefix: &str,
        f: &mut dyn FnMut(String, ArrayViewMutD<'a, f32>),
    ) {
        f(join(prefix, "weight"), self.weight.view_mut().into_dyn());
    }

    fn zeros_like(&self) -> Self {
        Embedding {
            weight: Array2::zeros(self.weight.raw_dim()),
        }
    }
}
