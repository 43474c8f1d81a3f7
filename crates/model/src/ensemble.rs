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
//! Members read the main model's features, so they share its front end; they must
//! reduce time as much as it does, so that their frames line up.

use ndarray::{Array2, ArrayView2, ArrayViewD, ArrayViewMutD, Axis};
use rand::Rng;

use lasr_nn::module::join;
use lasr_nn::{Linear, Module, PackedRecurrent, WeightFormat};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::las::{Las, Listener};

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

    /// The listener's recurrent weights packed for [`CtcMember::ctc_logits`].
    pub fn pack(&self, format: WeightFormat) -> Vec<[PackedRecurrent; 2]> {
        self.listener.pack(format)
    }

    /// CTC logits `[U, V]` of one utterance's normalised features `[T, F]`; `w` is
    /// this member's [`CtcMember::pack`].
    pub fn ctc_logits(
        &self,
        feats: ArrayView2<f32>,
        w: &[[PackedRecurrent; 2]],
    ) -> Result<Array2<f32>> {
        let h = self.listener.infer_packed(feats, w)?;
        Ok(self.ctc.forward(h.view())?)
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
