//! Decoding with a trained model: the listener runs once per utterance, then the
//! speller runs step by step for a batch of hypotheses through
//! [`lasr_decode::Decoder`], so greedy and beam search work on it unchanged.
//!
//! Decoding reads the recurrent weights from [`InferenceWeights`], laid out once per
//! model for one-vector products (optionally as bfloat16 or int8, see
//! [`lasr_nn::packed`]): made per utterance, the speller's would cost more than its
//! greedy decoding saves.

use ndarray::{concatenate, Array2, ArrayView2, Axis};

use lasr_decode::{Decoder, Step};
use lasr_nn::{Linear, PackedRecurrent, WeightFormat};

use crate::cells::{CellState, PreparedCell};
use crate::ensemble_speller::EnsembleSpeller;
use crate::error::{Error, Result};
use crate::las::{Las, Speller};

/// A model's recurrent weights laid out for decoding ([`Las::inference_weights`]):
/// each listener layer's `weight_hh` (in int8 its `weight_ih` too) and both speller
/// cells' weights packed for one-vector products, and the speller's transposed
/// weights for beams (f32 and bf16; int8 beams run the packed products). Make it once
/// per model and again whenever the model's weights change.
#[derive(Debug, Clone)]
pub struct InferenceWeights {
    /// The config of the model they were made from (checked by [`Las::encode`]).
    config: crate::ModelConfig,
    format: WeightFormat,
    /// Per listener layer, bottom first: both directions' packed weights.
    listener: Vec<[PackedRecurrent; 2]>,
    cell0: PreparedCell,
    cell1: PreparedCell,
    /// Per ensemble member ([`crate::ModelFile::inference_weights`]): its listener's
    /// packed weights, as `listener`.
    pub(crate) members: Vec<Vec<[PackedRecurrent; 2]>>,
    /// The members' configs, checked against the model's as `config` is.
    pub(crate) member_configs: Vec<crate::ModelConfig>,
    /// The ensemble speller's cells ([`crate::ModelFile::inference_weights`]), when
    /// the file holds one, with its config and input width (checked by
    /// [`EnsembleSpeller::encode`] as `config` is).
    pub(crate) ensemble_speller: Option<([PreparedCell; 2], crate::ModelConfig, usize)>,
}

impl InferenceWeights {
    /// The storage format of the packed weights.
    pub fn format(&self) -> WeightFormat {
        self.format
    }
}

/// One utterance encoded by the listener, ready to be decoded by a speller: the
/// model's own, or the ensemble speller over every listener's states
/// ([`EnsembleSpeller::encode`]).
pub struct UtteranceDecoder<'a> {
    /// Sizes and specials of the speller.
    config: &'a crate::ModelConfig,
    speller: &'a Speller,
    /// The speller's cells packed for one-vector products.
    cells: [&'a PreparedCell; 2],
    /// The CTC head over `h`, if any (never for the ensemble speller, whose states
    /// are a projection).
    ctc: Option<&'a Linear>,
    /// Listener states `[U, D]` (for the ensemble speller, projected ones).
    h: Array2<f32>,
    /// Attention keys `W_h h + b` `[U, A]`.
    keys: Array2<f32>,
}

/// Speller state of `n` hypotheses: both cells' states (`h`, and `c` for the LSTM,
/// `[n, S]`), and the last attention context `[n, D]`.
#[derive(Debug, Clone)]
pub struct SpellerState {
    s0: CellState,
    s1: CellState,
    ctx: Array2<f32>,
    /// Last attention weights `[n, U]` (location-aware attention only).
    alpha: Option<Array2<f32>>,
}

impl Las {
    /// This model's weights laid out for [`Las::encode`], the packed ones stored in
    /// `format` (f32 is exactly the file's weights; bf16 halves what each step reads,
    /// int8 quarters it).
    pub fn inference_weights(&self, format: WeightFormat) -> InferenceWeights {
        InferenceWeights {
            config: self.config.clone(),
            format,
            listener: self.listener.pack(format),
            cell0: self.speller.cell0.prepare_packed(format),
            cell1: self.speller.cell1.prepare_packed(format),
            members: Vec::new(),
            member_configs: Vec::new(),
            ensemble_speller: None,
        }
    }

    /// Runs the listener over one utterance's features `[T, F]` (at least
    /// `config.reduction()` frames); `weights` must be this model's
    /// [`Las::inference_weights`], made since its weights last changed (only the
    /// config is checked: weights of another checkpoint of the same shape pass).
    pub fn encode<'a>(
        &'a self,
        weights: &'a InferenceWeights,
        feats: ArrayView2<f32>,
    ) -> Result<UtteranceDecoder<'a>> {
        if weights.config != self.config {
            return Err(Error::Config(
                "inference weights made from another model (different config)".into(),
            ));
        }
        let (frames, dim) = feats.dim();
        if dim != self.config.input_dim {
            return Err(Error::Batch(format!(
                "features are {dim} wide, the model reads {}",
                self.config.input_dim
            )));
        }
        if frames < self.config.reduction() {
            return Err(Error::Batch(format!(
                "{frames} frames are fewer than the {} one listener frame needs",
                self.config.reduction()
            )));
        }
        let h = self.listener.infer_packed(feats, &weights.listener)?;
        let keys = self.speller.attention.keys(h.view().insert_axis(Axis(1)))?;
        Ok(UtteranceDecoder {
            config: &self.config,
            speller: &self.speller,
            cells: [&weights.cell0, &weights.cell1],
            ctc: self.ctc.as_ref(),
            h,
            keys: keys.index_axis_move(Axis(1), 0),
        })
    }
}

impl EnsembleSpeller {
    /// Readies one utterance for this speller: every listener's states `[U, D_all]`
    /// ([`crate::ModelFile::listen_all`]) projected; `weights` are the model file's
    /// [`crate::ModelFile::inference_weights`], made with this speller in the file.
    pub fn encode<'a>(
        &'a self,
        weights: &'a InferenceWeights,
        states: ArrayView2<f32>,
    ) -> Result<UtteranceDecoder<'a>> {
        let Some(([cell0, cell1], config, input_dim)) = &weights.ensemble_speller else {
            return Err(Error::Config(
                "inference weights made without the ensemble speller: make them with ModelFile::inference_weights".into(),
            ));
        };
        if *config != self.config || *input_dim != self.input_dim() {
            return Err(Error::Config(
                "inference weights made from another ensemble speller (different config or input width)".into(),
            ));
        }
        if states.ncols() != self.input_dim() || states.nrows() == 0 {
            return Err(Error::Batch(format!(
                "{} listener states of {} per frame; the ensemble speller reads at least one frame of {}",
                states.nrows(),
                states.ncols(),
                self.input_dim()
            )));
        }
        let h = self.project(states)?;
        let keys = self.speller.attention.keys(h.view().insert_axis(Axis(1)))?;
        Ok(UtteranceDecoder {
            config: &self.config,
            speller: &self.speller,
            cells: [cell0, cell1],
            ctc: None,
            h,
            keys: keys.index_axis_move(Axis(1), 0),
        })
    }
}

impl UtteranceDecoder<'_> {
    /// Listener states `[U, D]` (for alignment plots).
    pub fn listener_states(&self) -> ArrayView2<'_, f32> {
        self.h.view()
    }

    /// CTC logits `[U, V]` over the listener states, if the model has a CTC head.
    pub fn ctc_logits(&self) -> Result<Option<Array2<f32>>> {
        Ok(self.ctc.map(|c| c.forward(self.h.view())).transpose()?)
    }
}

impl Decoder for UtteranceDecoder<'_> {
    type State = SpellerState;
    type Error = Error;

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn sos(&self) -> usize {
        self.config.sos
    }

    fn eos(&self) -> usize {
        self.config.eos
    }

    fn encoder_len(&self) -> usize {
        self.h.nrows()
    }

    fn initial(&self) -> Result<SpellerState> {
        let sp = self.speller;
        Ok(SpellerState {
            s0: sp.cell0.zero_state(1),
            s1: sp.cell1.zero_state(1),
            ctx: Array2::zeros((1, self.h.ncols())),
            alpha: self.speller.attention.location.as_ref().map(|_| {
                lasr_nn::AdditiveAttention::initial_weights(self.h.nrows(), &[self.h.nrows()])
            }),
        })
    }

    fn step(&self, prev: &[usize], st: SpellerState) -> Result<Step<SpellerState>> {
        let sp = self.speller;
        let e = sp.emb.forward(prev)?;
        let in0 = concatenate(Axis(1), &[e.view(), st.ctx.view()]).expect("same rows");
        let [c0, c1] = self.cells;
        let s0 = sp.cell0.step(Some(c0), in0.view(), &st.s0)?;
        let s1 = sp.cell1.step(Some(c1), s0.h.view(), &st.s1)?;
        // Every hypothesis attends over the same utterance.
        let (ctx, alpha) = sp.attention.infer_step(
            self.h.view(),
            self.keys.view(),
            s1.h.view(),
            st.alpha.as_ref().map(|a| a.view()),
        )?;
        let peaks = alpha
            .rows()
            .into_iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, &w)| {
                        if w > best.1 {
                            (i, w)
                        } else {
                            best
                        }
                    })
                    .0
            })
            .collect();
        let out_in = concatenate(Axis(1), &[s1.h.view(), ctx.view()]).expect("same rows");
        let mut logits = sp.out.forward(out_in.view())?;
        lasr_nn::activation::log_softmax_rows(logits.view_mut());
        Ok(Step {
            log_probs: logits.into_raw_vec_and_offset().0,
            state: SpellerState {
                s0,
                s1,
                ctx,
                alpha: st.alpha.is_some().then_some(alpha),
            },
            attention_peaks: Some(peaks),
        })
    }

    fn select(&self, st: SpellerState, rows: &[usize]) -> Result<SpellerState> {
        let pick = |a: &Array2<f32>| a.select(Axis(0), rows);
        Ok(SpellerState {
            s0: st.s0.select(rows),
            s1: st.s1.select(rows),
            ctx: pick(&st.ctx),
            alpha: st.alpha.as_ref().map(pick),
        })
    }
}
