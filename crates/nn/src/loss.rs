//! Softmax cross-entropy over a vocabulary, with ignored (padding) positions and
//! optional label smoothing.

use ndarray::{Array2, ArrayView2};

use crate::error::{check_shape, Result};

/// Loss and gradient of a batch of predictions.
#[derive(Debug, Clone)]
pub struct CrossEntropy {
    /// Sum of `-log p(target)` over counted positions: the plain negative
    /// log-likelihood, whatever the smoothing, so runs with and without it compare.
    pub sum: f64,
    /// Sum of the smoothed loss that `grad` differentiates,
    /// `(1 - eps) * -log p(target) + eps * mean_v -log p(v)` (equal to `sum` when
    /// `eps` is 0).
    pub smoothed_sum: f64,
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
    softmax_cross_entropy_smoothed(logits, targets, 0.0)
}

/// Cross-entropy against targets smoothed as PyTorch's
/// `CrossEntropyLoss(label_smoothing=eps)` does: the target keeps `1 - eps` of the
/// probability mass and every class (the target included) gets `eps / V`.
/// `logits` `[N, V]`, `targets` `[N]` (`None` = ignore), `eps` in `[0, 1)`.
pub fn softmax_cross_entropy_smoothed(
    logits: ArrayView2<f32>,
    targets: &[Option<usize>],
    eps: f32,
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
    if !(0.0..1.0).contains(&eps) {
        return Err(crate::Error::Lengths {
            layer: "softmax_cross_entropy".into(),
            reason: format!("label smoothing {eps} is outside [0, 1)"),
        });
    }
    let count = targets.iter().flatten().count();
    let scale = if count == 0 { 0.0 } else { 1.0 / count as f32 };
    let uniform = eps / v as f32;
    let mut grad = Array2::zeros((n, v));
    let (mut sum, mut smoothed_sum) = (0f64, 0f64);
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
        let log_z = z.ln() + max;
        let nll = f64::from(log_z - row[target]);
        sum += nll;
        smoothed_sum += if eps > 0.0 {
            let mean_nll =
                f64::from(log_z) - row.iter().map(|&l| f64::from(l)).sum::<f64>() / v as f64;
            (1.0 - f64::from(eps)) * nll + f64::from(eps) * mean_nll
        } else {
            nll
        };
        let inv = scale / z;
        g.iter_mut().for_each(|x| *x = *x * inv - scale * uniform);
        g[target] -= scale * (1.0 - eps);
    }
    Ok(CrossEntropy {
        sum,
        smoothed_sum,
        count,
        grad,
    })
}
