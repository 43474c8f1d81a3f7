//! CTC ensembles: further acoustic models whose per-frame CTC distributions are mixed
//! with the main model's before any search reads them.
//!
//! A member is a listener and its CTC head (a model's speller plays no part in CTC
//! decoding, so the file leaves it out). Each frame's distribution is the mixture
//! `p(k | t) = w_0 p_0(k | t) + sum_m w_m p_m(k | t)`, the members' weights `w_m`
//! stored in the file and the main model taking the rest. Mixing posteriors rather
//! than weights works across independently trained models, whose parameters have
//! nothing to do with each other: averaging checkpoints of one run gained nothing
//! here, a second run's listener gained more than any training phase (DEVELOPERS.md).
//! Members read the main model's features, so they share its feature settings; a
//! member trained with other CMVN statistics has the difference folded into its first
//! layer when it joins ([`fold_cmvn`]). They must reduce time as much as the main
//! model does, so that their frames line up.

use ndarray::{Array2, ArrayView2, ArrayViewD, ArrayViewMutD, Axis};
use rand::Rng;

use lasr_nn::module::join;
use lasr_nn::{Linear, Module, PackedRecurrent, WeightFormat};

use lasr_features::Cmvn;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::las::{Las, Listener};

/// Makes `listener`, trained on features normalised by `own`, read features
/// normalised by `given` instead (`None`: raw features, mean 0 and deviation 1),
/// exactly up to rounding. Both are affine per dimension, so a `given`-normalised
/// frame `y` is `own`-normalised as `a * y + c` with `a = s_given / s_own` and
/// `c = (m_given - m_own) / s_own`; the first layer's input weights of each
/// direction become `W diag(a)` and its input bias `b + W c`.
pub fn fold_cmvn(listener: &mut Listener, own: Option<&Cmvn>, given: Option<&Cmvn>) -> Result<()> {
    let mut width = 0;
    listener.l0.visit("", &mut |name, t| {
        if name.starts_with("weight_ih") {
            width = t.shape()[1];
        }
    });
    // A stacking first layer reads `stack` frames side by side: the same statistics
    // repeat across its input.
    let stack = listener.stack;
    if stack == 0 || width % stack != 0 {
        return Err(Error::Model(format!(
            "a first layer {width} wide cannot read {stack} stacked frames"
        )));
    }
    let frame_dim = width / stack;
    let stats = |c: Option<&Cmvn>| -> Result<(Vec<f64>, Vec<f64>)> {
        match c {
            None => Ok((vec![0.0; frame_dim], vec![1.0; frame_dim])),
            Some(c) if c.mean.len() == frame_dim && c.std.len() == frame_dim => Ok((
                c.mean.iter().map(|&v| f64::from(v)).collect(),
                c.std.iter().map(|&v| f64::from(v)).collect(),
            )),
            Some(c) => Err(Error::Model(format!(
                "CMVN statistics of {} means and {} deviations, the member's listener reads {frame_dim} features",
                c.mean.len(),
                c.std.len()
            ))),
        }
    };
    let tile = |v: Vec<f64>| v.repeat(stack);
    let (m_own, s_own) = stats(own).map(|(m, s)| (tile(m), tile(s)))?;
    let (m_given, s_given) = stats(given).map(|(m, s)| (tile(m), tile(s)))?;
    let a: Vec<f64> = s_given.iter().zip(&s_own).map(|(g, o)| g / o).collect();
    let c: Vec<f64> = (0..width)
        .map(|j| (m_given[j] - m_own[j]) / s_own[j])
        .collect();
    if let Some(j) = (0..width).find(|&j| !(a[j].is_finite() && a[j] > 0.0 && c[j].is_finite())) {
        return Err(Error::Model(format!(
            "CMVN dimension {} cannot be folded (deviations {} and {}, means {} and {})",
            j % frame_dim,
            s_own[j],
            s_given[j],
            m_own[j],
            m_given[j]
        )));
    }
    // Each direction's `W c`, from the weights before they are scaled.
    let mut shifts: Vec<(String, Vec<f64>)> = Vec::new();
    let mut biases: Vec<String> = Vec::new();
    listener.l0.visit("", &mut |name, t| {
        if let Some(dir) = name.strip_prefix("bias_ih") {
            biases.push(dir.to_string());
        }
        if let Some(dir) = name.strip_prefix("weight_ih") {
            let w = t
                .into_dimensionality::<ndarray::Ix2>()
                .expect("weights are 2-D");
            let shift = w
                .rows()
                .into_iter()
                .map(|row| row.iter().zip(&c).map(|(&w, &c)| f64::from(w) * c).sum())
                .collect();
            shifts.push((dir.to_string(), shift));
        }
    });
    // Checked before anything changes, so a refusal leaves the listener as it was.
    if shifts.is_empty() || shifts.iter().any(|(d, _)| !biases.contains(d)) {
        return Err(Error::Model(
            "the listener's first layer has no input bias to fold CMVN into".into(),
        ));
    }
    listener.l0.visit_mut("", &mut |name, mut t| {
        if name.starts_with("weight_ih") {
            for mut row in t.rows_mut() {
                for (w, &a) in row.iter_mut().zip(&a) {
                    *w = (f64::from(*w) * a) as f32;
                }
            }
        } else if let Some(dir) = name.strip_prefix("bias_ih") {
            if let Some((_, shift)) = shifts.iter().find(|(d, _)| d == dir) {
                for (b, &s) in t.iter_mut().zip(shift) {
                    *b = (f64::from(*b) + s) as f32;
                }
            }
        }
    });
    Ok(())
}

/// One further acoustic model of an ensemble: a listener and its CTC head.
#[derive(Debug, Clone, PartialEq)]
pub struct CtcMember {
    /// The config of the model it came from (its speller sizes are kept for the
    /// record; only the listener's and the CTC head's shapes matter).
    pub config: ModelConfig,
    pub listener: Listener,
    pub ctc: Linear,
    /// Its share of the mixture, in (0, 1); the main model has 1 minus the members'.
    pub weight: f32,
    /// How it was made (its model file's `info`), as JSON; `Null` if unknown.
    pub info: serde_json::Value,
}

impl CtcMember {
    /// The listener and CTC head of `las` (which must have a CTC head), mixed in with
    /// `weight`.
    pub fn from_las(las: Las, weight: f32) -> Result<CtcMember> {
        let Some(ctc) = las.ctc else {
            return Err(Error::Config(
                "an ensemble member needs a CTC head (ctc_weight > 0 in its config)".into(),
            ));
        };
        Ok(CtcMember {
            config: las.config,
            listener: las.listener,
            ctc,
            weight,
            info: serde_json::Value::Null,
        })
    }

    /// A freshly initialised member of `config`'s shapes (weights to be loaded).
    pub(crate) fn new(config: ModelConfig, weight: f32, rng: &mut impl Rng) -> Result<Self> {
        config.validate()?;
        if !config.has_ctc() {
            return Err(Error::Config(
                "an ensemble member needs a CTC head (ctc_weight > 0 in its config)".into(),
            ));
        }
        Ok(CtcMember {
            listener: Listener::new(&config, rng),
            ctc: Linear::new(config.listener_dim(), config.vocab_size, true, rng),
            config,
            weight,
            info: serde_json::Value::Null,
        })
    }

    /// The listener's recurrent weights packed for [`CtcMember::listen`].
    pub fn pack(&self, format: WeightFormat) -> Vec<[PackedRecurrent; 2]> {
        self.listener.pack(format)
    }

    /// Listener states `[U, D]` of one utterance's normalised features `[T, F]`
    /// (its CTC logits are `ctc.forward` of them); `w` is this member's
    /// [`CtcMember::pack`].
    pub fn listen(
        &self,
        feats: ArrayView2<f32>,
        w: &[[PackedRecurrent; 2]],
    ) -> Result<Array2<f32>> {
        self.listener.infer_packed(feats, w)
    }
}

impl Module for CtcMember {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, ArrayViewD<'a, f32>)) {
        self.listener.visit(&join(prefix, "listener"), f);
        self.ctc.visit(&join(prefix, "ctc"), f);
    }

    fn visit_mut<'a>(
        &'a mut self,
        prefix: &str,
        f: &mut dyn FnMut(String, ArrayViewMutD<'a, f32>),
    ) {
        self.listener.visit_mut(&join(prefix, "listener"), f);
        self.ctc.visit_mut(&join(prefix, "ctc"), f);
    }

    fn zeros_like(&self) -> Self {
        CtcMember {
            config: self.config.clone(),
            listener: self.listener.zeros_like(),
            ctc: self.ctc.zeros_like(),
            weight: self.weight,
            info: self.info.clone(),
        }
    }
}

/// The per-frame mixture `log sum_k w_k exp(lp_k)` of log-distributions `parts`
/// (each `[U, V]`, rows normalised) with `weights` (positive, summing to 1): a
/// log-distribution `[U, V]` again. Computed against each entry's largest part, so
/// nothing underflows where one model is sure and another is not.
pub fn mix_log_probs(parts: &[ArrayView2<f32>], weights: &[f32]) -> Result<Array2<f32>> {
    let Some(first) = parts.first() else {
        return Err(Error::Config("nothing to mix".into()));
    };
    if parts.len() != weights.len() {
        return Err(Error::Config(format!(
            "{} distributions but {} weights",
            parts.len(),
            weights.len()
        )));
    }
    if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
        return Err(Error::Config(format!("mixture weight {w} is not positive")));
    }
    if let Some(p) = parts.iter().find(|p| p.dim() != first.dim()) {
        return Err(Error::Batch(format!(
            "ensemble CTC outputs differ in shape: {:?} and {:?} (frames, symbols)",
            first.dim(),
            p.dim()
        )));
    }
    let mut out = Array2::<f32>::zeros(first.dim());
    for (t, mut row) in out.axis_iter_mut(Axis(0)).enumerate() {
        for (k, o) in row.iter_mut().enumerate() {
            let top = parts
                .iter()
                .map(|p| p[[t, k]])
                .fold(f32::NEG_INFINITY, f32::max);
            if top == f32::NEG_INFINITY {
                *o = top;
                continue;
            }
            let s: f32 = parts
                .iter()
                .zip(weights)
                .map(|(p, &w)| w * (p[[t, k]] - top).exp())
                .sum();
            *o = top + s.ln();
        }
    }
    Ok(out)
}
