//! Finite-difference gradient checks, for every layer's tests and for models built
//! from them.
//!
//! The loss is `L = sum(r * y)` for a fixed random `r`, so `dL/dy = r`; it is summed in
//! f64 so that the central difference `(L(p + e) - L(p - e)) / 2e` is not drowned by
//! the rounding of the sum itself.

use ndarray::{ArrayD, ArrayViewD};

use crate::module::Module;

/// Worst disagreement found in one tensor.
#[derive(Debug, Clone)]
pub struct Discrepancy {
    pub tensor: String,
    pub index: usize,
    pub analytic: f64,
    pub numeric: f64,
    /// `|a - n| / max(|a| + |n|, floor)`.
    pub error: f64,
}

/// Relative error with an absolute floor, so that two near-zero gradients agree.
pub fn relative_error(a: f64, n: f64, floor: f64) -> f64 {
    (a - n).abs() / (a.abs() + n.abs()).max(floor)
}

/// `sum(r * y)` in f64.
pub fn projection(r: ArrayViewD<f32>, y: ArrayViewD<f32>) -> f64 {
    assert_eq!(r.shape(), y.shape(), "projection: r and y differ in shape");
    r.iter()
        .zip(y.iter())
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum()
}

/// Elements of a tensor of `len` to probe: all of them up to `max`, else an even spread
/// that always includes the first and the last.
pub fn probe_indices(len: usize, max: usize) -> Vec<usize> {
    if len <= max {
        return (0..len).collect();
    }
    (0..max).map(|i| i * (len - 1) / (max - 1)).collect()
}

/// Compares `analytic` (the gradients backward accumulated) with central differences
/// of `loss` for every parameter of `model`, probing up to `max_per_tensor` elements
/// per tensor. Returns the worst element of each tensor.
pub fn check_params<M: Module + Clone>(
    model: &M,
    analytic: &M,
    loss: &dyn Fn(&M) -> f64,
    eps: f32,
    max_per_tensor: usize,
    floor: f64,
) -> Vec<Discrepancy> {
    let mut grads: Vec<(String, Vec<f32>)> = Vec::new();
    analytic.visit("", &mut |name, t| {
        grads.push((name, t.iter().copied().collect()))
    });
    let mut out = Vec::new();
    for (k, (name, g)) in grads.iter().enumerate() {
        let mut worst: Option<Discrepancy> = None;
        for idx in probe_indices(g.len(), max_per_tensor) {
            let mut numeric = 0.0;
            for sign in [1.0f32, -1.0] {
                let mut m = model.clone();
                let mut seen = 0;
                m.visit_mut("", &mut |_, mut t| {
                    if seen == k {
                        let v = t.iter_mut().nth(idx).expect("index in range");
                        *v += sign * eps;
                    }
                    seen += 1;
                });
                numeric += f64::from(sign) * loss(&m);
            }
            numeric /= 2.0 * f64::from(eps);
            let a = f64::from(g[idx]);
            let error = relative_error(a, numeric, floor);
            if worst.as_ref().is_none_or(|w| error > w.error) {
                worst = Some(Discrepancy {
                    tensor: name.clone(),
                    index: idx,
                    analytic: a,
                    numeric,
                    error,
                });
            }
        }
        out.extend(worst);
    }
    out
}

/// Like [`check_params`] for a layer's input: `analytic` is `dL/dx` from backward.
pub fn check_input(
    x: &ArrayD<f32>,
    analytic: &ArrayD<f32>,
    loss: &dyn Fn(&ArrayD<f32>) -> f64,
    eps: f32,
    max: usize,
    floor: f64,
) -> Discrepancy {
    assert_eq!(
        x.shape(),
        analytic.shape(),
        "check_input: x and dx differ in shape"
    );
    let mut worst: Option<Discrepancy> = None;
    for idx in probe_indices(x.len(), max) {
        let mut numeric = 0.0;
        for sign in [1.0f32, -1.0] {
            let mut xp = x.clone();
            *xp.iter_mut().nth(idx).expect("index in range") += sign * eps;
            numeric += f64::from(sign) * loss(&xp);
        }
        numeric /= 2.0 * f64::from(eps);
        let a = f64::from(*analytic.iter().nth(idx).expect("index in range"));
        let error = relative_error(a, numeric, floor);
        if worst.as_ref().is_none_or(|w| error > w.error) {
            worst = Some(Discrepancy {
                tensor: "input".into(),
                index: idx,
                analytic: a,
                numeric,
                error,
            });
        }
    }
    worst.expect("x is not empty")
}
