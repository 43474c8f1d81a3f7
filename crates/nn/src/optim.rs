//! Optimisers and gradient clipping over any [`Module`].
//!
//! Gradients and optimiser state are values of the model's own type, so they are
//! walked in the same order as the parameters and carry the same names (the optimiser
//! state can be checkpointed like a model).

use ndarray::{ArrayViewD, ArrayViewMutD};

use crate::error::{Error, Result};
use crate::module::Module;

/// Global L2 norm of all gradients (f64 accumulation).
pub fn grad_norm<M: Module>(grads: &M) -> f64 {
    let mut sum = 0f64;
    grads.visit("", &mut |_, t| {
        sum += t.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
    });
    sum.sqrt()
}

/// Scales all gradients so their global norm is at most `max_norm`; returns the norm
/// before clipping. A NaN or infinite gradient is an error naming the first tensor that
/// holds one, so training stops loudly instead of writing NaNs into the model.
pub fn clip_grad_norm<M: Module>(grads: &mut M, max_norm: f32) -> Result<f64> {
    let norm = grad_norm(grads);
    if !norm.is_finite() {
        let mut bad = None;
        grads.visit("", &mut |name, t| {
            if bad.is_none() && t.iter().any(|v| !v.is_finite()) {
                bad = Some(name);
            }
        });
        return Err(Error::NonFinite {
            tensor: bad.unwrap_or_else(|| "gradients (norm overflow)".into()),
        });
    }
    if norm > f64::from(max_norm) {
        let scale = (f64::from(max_norm) / norm) as f32;
        grads.visit_mut("", &mut |_, mut t| t.mapv_inplace(|v| v * scale));
    }
    Ok(norm)
}

/// Adam (Kingma & Ba), with PyTorch's defaults and update rule
/// (`torch.optim.Adam`, no amsgrad, L2 weight decay added to the gradient).
#[derive(Debug, Clone)]
pub struct Adam<M: Module> {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Parameters whose names start with one of these are left alone, moments and
    /// all (PyTorch's leaving them out of the optimizer): a part of the model the
    /// objective does not train would otherwise still drift under weight decay. Their
    /// gradients still count in [`clip_grad_norm`]: freeze only what gets none.
    pub frozen: Vec<String>,
    /// Steps taken so far.
    pub t: u64,
    /// First-moment estimates, shaped and named like the model.
    pub m: M,
    /// Second-moment estimates.
    pub v: M,
}

impl<M: Module> Adam<M> {
    /// Fresh state for `model`; betas 0.9 and 0.999, eps 1e-8.
    pub fn new(model: &M, lr: f32) -> Self {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            frozen: Vec::new(),
            t: 0,
            m: model.zeros_like(),
            v: model.zeros_like(),
        }
    }

    /// One update of `params` from `grads`.
    pub fn step(&mut self, params: &mut M, grads: &M) {
        self.t += 1;
        let t = self.t as i32;
        let (b1, b2, eps, wd) = (self.beta1, self.beta2, self.eps, self.weight_decay);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        let step = self.lr / bc1;
        let mut gs: Vec<ArrayViewD<f32>> = Vec::new();
        grads.visit("", &mut |_, g| gs.push(g));
        let mut ms: Vec<ArrayViewMutD<f32>> = Vec::new();
        self.m.visit_mut("", &mut |_, m| ms.push(m));
        let mut vs: Vec<ArrayViewMutD<f32>> = Vec::new();
        self.v.visit_mut("", &mut |_, v| vs.push(v));
        let mut k = 0;
        let frozen = &self.frozen;
        params.visit_mut("", &mut |name, mut p| {
            let (g, m, v) = (&gs[k], &mut ms[k], &mut vs[k]);
            k += 1;
            if frozen.iter().any(|f| name.starts_with(f.as_str())) {
                return;
            }
            ndarray::Zip::from(&mut p)
                .and(g)
                .and(m)
                .and(v)
                .for_each(|p, &g, m, v| {
                    let g = g + wd * *p;
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    *p -= step * *m / ((*v / bc2).sqrt() + eps);
                });
        });
    }
}

/// Learning rate as a function of the optimiser step: a linear warm-up to `peak`,
/// then either constant or a cosine decay to `final_fraction * peak` at `total_steps`.
/// A pure function of the step, so a resumed run follows the same curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub peak: f32,
    /// Steps of linear warm-up (0: start at `peak`).
    pub warmup_steps: u64,
    /// Steps in the whole run; the decay reaches its floor at the last of them (index
    /// `total_steps - 1`) and holds afterwards.
    pub total_steps: u64,
    /// `None`: constant after warm-up; `Some(f)`: cosine decay down to `f * peak`.
    pub final_fraction: Option<f32>,
}

impl LrSchedule {
    /// The rate for the step with 0-based index `step`.
    pub fn at(&self, step: u64) -> f32 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f32 / self.warmup_steps as f32;
        }
        let Some(f) = self.final_fraction else {
            return self.peak;
        };
        let span = self
            .total_steps
            .saturating_sub(self.warmup_steps + 1)
            .max(1);
        let p = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
        self.peak * (f64::from(f) + (1.0 - f64::from(f)) * cosine) as f32
    }
}

/// Plain stochastic gradient descent with optional momentum (PyTorch's rule).
#[derive(Debug, Clone)]
pub struct Sgd<M: Module> {
    pub lr: f32,
    pub momentum: f32,
    /// Velocity, shaped and named like the model.
    pub velocity: M,
}

impl<M: Module> Sgd<M> {
    pub fn new(model: &M, lr: f32, momentum: f32) -> Self {
        Sgd {
            lr,
            momentum,
            velocity: model.zeros_like(),
        }
    }

    /// One update of `params` from `grads`.
    pub fn step(&mut self, params: &mut M, grads: &M) {
        let (lr, mu) = (self.lr, self.momentum);
        let mut gs: Vec<ArrayViewD<f32>> = Vec::new();
        grads.visit("", &mut |_, g| gs.push(g));
        let mut bs: Vec<ArrayViewMutD<f32>> = Vec::new();
        self.velocity.visit_mut("", &mut |_, b| bs.push(b));
        let mut k = 0;
        params.visit_mut("", &mut |_, mut p| {
            ndarray::Zip::from(&mut p)
                .and(&gs[k])
                .and(&mut bs[k])
                .for_each(|p, &g, b| {
                    *b = mu * *b + g;
                    *p -= lr * *b;
                });
            k += 1;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::LrSchedule;

    #[test]
    fn schedule_warms_up_linearly_then_decays_by_cosine() {
        let s = LrSchedule {
            peak: 1e-3,
            warmup_steps: 10,
            total_steps: 111,
            final_fraction: Some(0.1),
        };
        assert!((s.at(0) - 1e-4).abs() < 1e-9);
        assert!((s.at(4) - 5e-4).abs() < 1e-9);
        assert!((s.at(9) - 1e-3).abs() < 1e-9);
        assert!((s.at(10) - 1e-3).abs() < 1e-9);
        // Half-way through the decay: the mean of peak and floor.
        assert!((s.at(60) - 0.55e-3).abs() < 1e-8);
        assert!((s.at(110) - 1e-4).abs() < 1e-9);
        assert!((s.at(10_000) - 1e-4).abs() < 1e-9);
        let mut last = f32::INFINITY;
        for step in 10..=110 {
            assert!(s.at(step) <= last, "decay is monotone");
            last = s.at(step);
        }
        let flat = LrSchedule {
            final_fraction: None,
            warmup_steps: 0,
            ..s
        };
        assert!((0..200).all(|k| flat.at(k) == 1e-3));
    }
}
