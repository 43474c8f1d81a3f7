//! Connectionist temporal classification (Graves et al., 2006): the loss of a labelling
//! summed over every frame alignment that collapses to it, and best-path decoding.
//!
//! The forward-backward recursions run in log space and f64 per utterance (utterances in
//! parallel): a 20 s utterance at 25 frames/s with 300 characters is 375 x 601 cells, a
//! few milliseconds, so precision costs nothing that matters. An utterance too short for
//! its labelling (fewer frames than labels plus repeated pairs) has no alignment: its
//! loss is infinite, it is reported in [`Ctc::infeasible`] and contributes neither loss
//! nor gradient (PyTorch's `zero_infinity=True`).

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis};
use rayon::prelude::*;

use crate::error::{check_shape, Error, Result};

/// Loss and gradient of a batch.
#[derive(Debug, Clone)]
pub struct Ctc {
    /// `-log p(target | x)` of each utterance; infinite where no alignment exists.
    pub losses: Vec<f64>,
    /// Sum of the finite losses.
    pub sum: f64,
    /// Labels in the utterances with a finite loss (the usual normaliser).
    pub labels: usize,
    /// Utterances with no alignment, skipped.
    pub infeasible: Vec<usize>,
    /// `d sum / d logits` `[T, B, V]`; zero past each length and for skipped utterances.
    pub grad: Array3<f32>,
}

fn log_add(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    hi + (lo - hi).exp().ln_1p()
}

/// Log-softmax of each row, in f64.
fn log_softmax(logits: ArrayView2<f32>) -> Array2<f64> {
    let mut out = logits.mapv(f64::from);
    for mut row in out.rows_mut() {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z = row.iter().map(|&x| (x - max).exp()).sum::<f64>().ln() + max;
        row.mapv_inplace(|x| x - z);
    }
    out
}

/// One utterance: `logits` `[T, V]`, `target` without blanks. Returns the loss and
/// `d loss / d logits` `[T, V]` (zero when the loss is infinite).
fn one(logits: ArrayView2<f32>, target: &[usize], blank: usize) -> (f64, Array2<f32>) {
    let (steps, v) = logits.dim();
    let mut grad = Array2::zeros((steps, v));
    // Extended labelling: blank, y1, blank, y2, ..., blank.
    let ext: Vec<usize> = (0..2 * target.len() + 1)
        .map(|s| if s % 2 == 0 { blank } else { target[s / 2] })
        .collect();
    let n = ext.len();
    if steps == 0 {
        return (f64::INFINITY, grad);
    }
    let lp = log_softmax(logits);
    // A label may skip the blank before it unless it repeats the label before that.
    let can_skip = |s: usize| s >= 2 && ext[s] != blank && ext[s] != ext[s - 2];
    let mut alpha = Array2::from_elem((steps, n), f64::NEG_INFINITY);
    alpha[[0, 0]] = lp[[0, blank]];
    if n > 1 {
        alpha[[0, 1]] = lp[[0, ext[1]]];
    }
    for t in 1..steps {
        for s in 0..n {
            let mut a = alpha[[t - 1, s]];
            if s >= 1 {
                a = log_add(a, alpha[[t - 1, s - 1]]);
            }
            if can_skip(s) {
                a = log_add(a, alpha[[t - 1, s - 2]]);
            }
            if a > f64::NEG_INFINITY {
                alpha[[t, s]] = a + lp[[t, ext[s]]];
            }
        }
    }
    let last = steps - 1;
    let mut log_p = alpha[[last, n - 1]];
    if n > 1 {
        log_p = log_add(log_p, alpha[[last, n - 2]]);
    }
    if log_p == f64::NEG_INFINITY {
        return (f64::INFINITY, grad);
    }
    let mut beta = Array2::from_elem((steps, n), f64::NEG_INFINITY);
    beta[[last, n - 1]] = lp[[last, ext[n - 1]]];
    if n > 1 {
        beta[[last, n - 2]] = lp[[last, ext[n - 2]]];
    }
    for t in (0..last).rev() {
        for s in 0..n {
            let mut b = beta[[t + 1, s]];
            if s + 1 < n {
                b = log_add(b, beta[[t + 1, s + 1]]);
            }
            if s + 2 < n && can_skip(s + 2) {
                b = log_add(b, beta[[t + 1, s + 2]]);
            }
            if b > f64::NEG_INFINITY {
                beta[[t, s]] = b + lp[[t, ext[s]]];
            }
        }
    }
    // alpha + beta counts frame t's emission twice; the occupation of (t, s) is
    // exp(alpha + beta - lp - log_p), and d loss / d logit = softmax - occupation.
    let mut occupation = vec![0f64; v];
    for t in 0..steps {
        occupation.iter_mut().for_each(|o| *o = 0.0);
        for s in 0..n {
            let g = alpha[[t, s]] + beta[[t, s]];
            if g > f64::NEG_INFINITY {
                occupation[ext[s]] += (g - lp[[t, ext[s]]] - log_p).exp();
            }
        }
        for (k, o) in occupation.iter().enumerate() {
            grad[[t, k]] = (lp[[t, k]].exp() - o) as f32;
        }
    }
    (-log_p, grad)
}

/// CTC loss of a batch. `logits` `[T, B, V]` (unnormalised), `lengths` `[B]` frames of
/// each utterance, `targets` `[B]` label sequences (no `blank` inside).
pub fn ctc_loss(
    logits: ArrayView3<f32>,
    lengths: &[usize],
    targets: &[Vec<usize>],
    blank: usize,
) -> Result<Ctc> {
    let (steps, b, v) = logits.dim();
    check_shape(
        "ctc_loss",
        "logits",
        logits.shape(),
        &[None, Some(lengths.len()), None],
    )?;
    let bad = |reason: String| Error::Lengths {
        layer: "ctc_loss".into(),
        reason,
    };
    if targets.len() != b {
        return Err(bad(format!("{} targets for {b} utterances", targets.len())));
    }
    if blank >= v {
        return Err(bad(format!("blank {blank} outside the vocabulary of {v}")));
    }
    if let Some(&l) = lengths.iter().find(|&&l| l > steps) {
        return Err(bad(format!("length {l} exceeds the {steps} frames given")));
    }
    for (i, t) in targets.iter().enumerate() {
        if let Some(&x) = t.iter().find(|&&x| x >= v || x == blank) {
            return Err(bad(format!(
                "target {i} holds {x}: labels must be below {v} and not the blank {blank}"
            )));
        }
    }
    let results: Vec<(f64, Array2<f32>)> = (0..b)
        .into_par_iter()
        .map(|i| {
            let x = logits.slice(ndarray::s![..lengths[i], i, ..]);
            one(x, &targets[i], blank)
        })
        .collect();
    let mut grad = Array3::zeros((steps, b, v));
    let (mut sum, mut labels, mut infeasible, mut losses) = (0.0, 0, Vec::new(), Vec::new());
    for (i, (loss, g)) in results.into_iter().enumerate() {
        losses.push(loss);
        if loss.is_finite() {
            sum += loss;
            labels += targets[i].len();
            grad.slice_mut(ndarray::s![..lengths[i], i, ..]).assign(&g);
        } else {
            infeasible.push(i);
        }
    }
    Ok(Ctc {
        losses,
        sum,
        labels,
        infeasible,
        grad,
    })
}

/// `-log p(target | x)` of one utterance, `logits` `[T, V]`; infinite when no alignment
/// exists. For rescoring hypotheses.
pub fn ctc_score(logits: ArrayView2<f32>, target: &[usize], blank: usize) -> f64 {
    one(logits, target, blank).0
}

/// Best-path decoding of one utterance `logits` `[T, V]`: the most likely label of each
/// frame, repeats merged, blanks dropped. Returns the labels and, for each, the frame
/// where it was first emitted.
pub fn ctc_greedy(logits: ArrayView2<f32>, blank: usize) -> (Vec<usize>, Vec<usize>) {
    let (mut labels, mut frames) = (Vec::new(), Vec::new());
    let mut prev = blank;
    for (t, row) in logits.axis_iter(Axis(0)).enumerate() {
        let best = row
            .iter()
            .enumerate()
            .fold((blank, f32::NEG_INFINITY), |acc, (k, &x)| {
                if x > acc.1 {
                    (k, x)
                } else {
                    acc
                }
            })
            .0;
        if best != blank && best != prev {
            labels.push(best);
            frames.push(t);
        }
        prev = best;
    }
    (labels, frames)
}
