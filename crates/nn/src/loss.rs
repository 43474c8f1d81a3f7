//! Softmax cross-entropy over a vocabulary, with ignored (padding) positions.

use ndarray::{Array2, ArrayView2};

use crate::error::{check_shape, Result};

/// Loss and gradient of a batch of predictions.
#[derive(Debug, Clone)]
pub struct CrossEntropy {
    /// Sum of `-log p(target)` over counted positions.
    pub sum: f64,
    /// Number of counted (non-ignored) positions.
    pub count: usize,
    /// `dL/dlogits` `[N, V]` of the mean loss `sum / count` (zero rows where ignored).
    pub grad: Array2<f32>,
}

impl CrossEntropy {
    /// Mean loss per counted position (0 when nothing was counted).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }
}

/// `logits` `[N, V]`, `targets` `[N]` (`None` = ignore this position).
pub fn softmax_cross_entropy(
    logits: ArrayView2<f32>,
    targets: &[Option<usize>],
) -> Result<CrossEntropy> {
    let (n, v) = logits.dim();
    check_shape(
        "softmax_cross_entropy",
        "logits",
        logits.shape(),
        &[Some(targets.len()), None],
    )?;
    if let Some(bad) = targets.iter().flatten().find(|&&t| t >= v) {
        return Err(crate::Error::Lengths {
            layer: "softmax_cross_entropy".into(),
            reason: format!("target {bad} is outside the vocabulary of {v}"),
        });
    }
    let count = targets.iter().flatten().count();
    let scale = if count == 0 { 0.0 } else { 1.0 / count as f32 };
    let mut grad = Array2::zeros((n, v));
    let mut sum = 0f64;
    for ((row, mut g), target) in logits.rows().into_iter().zip(grad.rows_mut()).zip(targets) {
        let Some(target) = *target else { continue };
        // Shift by the maximum so exp never overflows.
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut z = 0f32;
        for (gi, &l) in g.iter_mut().zip(row) {
            let e = (l - max).exp();
            *gi = e;
            z += e;
        }
        sum += f64::from(z.ln() + max - row[target]);
        let inv = scale / z;
        g.iter_mut().for_each(|x| *x *= inv);
        g[target] -= scale;
    }
    Ok(CrossEntropy { sum, count, grad })
}
