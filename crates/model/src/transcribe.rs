//! Audio to text with a [`ModelFile`]: features, listener, search, words with times.
//!
//! Three ways to decode (see [`DecodeOptions`]): attention beam search (greedy with a
//! beam of 1); the same with the n-best list re-ranked by
//! `(1 - w) * attention log-prob + w * CTC log-prob` when the model has a CTC head
//! (the CTC score punishes hypotheses that skip or repeat audio, which attention alone
//! does not see); or the CTC head's best path alone. Audio longer than
//! `max_chunk_seconds` is cut at its quietest frames into chunks the model was trained
//! on, each decoded apart, their texts joined.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use lasr_decode::{beam_search, CharLm, Fused, Lexicon, SearchOptions, Vocab, WordLm};
use lasr_features::{Audio, FrontEnd};
use lasr_nn::WeightFormat;
use ndarray::{s, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::file::ModelFile;
use crate::infer::InferenceWeights;
use crate::rnnlm::RnnLmScorer;

/// A word and when it was spoken, from the attention peaks (or CTC spikes) of its
/// letters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Word {
    pub word: String,
    /// Seconds from the start of the audio.
    pub start: f32,
    pub end: f32,
}

/// One candidate transcript.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alternative {
    pub text: String,
    /// Sum of token log-probabilities (natural log), `<eos>` included.
    pub log_prob: f64,
    /// CTC log-probability of the text, when it was used to rank (in a CTC prefix
    /// beam search with `ctc_prior_scale`, of the output with the letters' prior
    /// divided out, as the search ranked it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctc_log_prob: Option<f64>,
    /// The attention decoder's log-probability of the text (`<eos>` included), when
    /// it rescored a CTC search's n-best list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_log_prob: Option<f64>,
    /// The character n-gram model's log-probability of the text (`<eos>` included),
    /// when one was fused into a CTC prefix beam search.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lm_log_prob: Option<f64>,
    /// The LSTM language model's log-probability of the text (`<eos>` included),
    /// when it rescored a CTC search's n-best list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rnnlm_log_prob: Option<f64>,
    /// The backward LSTM language model's log-probability of the text (read right to
    /// left, the sentence start included), when it rescored a CTC search's n-best.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rnnlm_backward_log_prob: Option<f64>,
    /// The ensemble speller's log-probability of the text (`<eos>` included), when it
    /// rescored a CTC search's n-best list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensemble_speller_log_prob: Option<f64>,
    /// What ranked the alternatives (higher is better).
    pub score: f64,
}

/// The result for one audio: the best transcript, its words, and the n-best list
/// (best first, the best included; only the best when the audio was cut in chunks).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transcript {
    pub text: String,
    /// Token ids of the best transcript (without `<sos>`/`<eos>`).
    pub tokens: Vec<usize>,
    pub words: Vec<Word>,
    pub nbest: Vec<Alternative>,
    /// True when every chunk's best hypothesis ended with `<eos>` rather than at the
    /// length limit.
    pub finished: bool,
    /// Seconds of audio (of features: frames times the frame shift, without the
    /// front end's edge padding, when only features were given).
    pub duration: f32,
    /// Chunks the audio was cut into.
    pub chunks: usize,
    /// Wall-clock seconds spent (features included when a file or samples were given).
    pub seconds: f32,
}

impl Transcript {
    /// Processing time over audio time.
    pub fn real_time_factor(&self) -> f32 {
        self.seconds / self.duration.max(f32::MIN_POSITIVE)
    }
}

/// A character language model shared between threads (compared by identity).
#[derive(Clone)]
pub struct SharedLm(pub Arc<CharLm>);

impl std::fmt::Debug for SharedLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CharLm(order {})", self.0.order())
    }
}

impl PartialEq for SharedLm {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A word list shared between threads (compared by identity).
#[derive(Clone)]
pub struct SharedLexicon(pub Arc<Lexicon>);

impl std::fmt::Debug for SharedLexicon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lexicon({} words)", self.0.len())
    }
}

impl PartialEq for SharedLexicon {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A word language model shared between threads (compared by identity).
#[derive(Clone)]
pub struct SharedWordLm(pub Arc<WordLm>);

impl std::fmt::Debug for SharedWordLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WordLm(order {}, {} words)",
            self.0.order(),
            self.0.num_words()
        )
    }
}

impl PartialEq for SharedWordLm {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// An LSTM language model shared between threads (compared by identity).
#[derive(Clone)]
pub struct SharedRnnLm(pub Arc<RnnLmScorer>);

impl std::fmt::Debug for SharedRnnLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.0.config();
        write!(f, "RnnLm({} x {})", c.layers, c.hidden)
    }
}

impl PartialEq for SharedRnnLm {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// How to decode. Every field has a default; unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecodeOptions {
    /// Attention beam search settings (`beam_size` 1 is greedy).
    pub search: SearchOptions,
    /// Weight `w` of the CTC log-probability when ranking the beam's hypotheses:
    /// `(1 - w) * attention + w * CTC`. 0 ranks by attention (and `length_norm`)
    /// alone. Needs a model with a CTC head.
    pub ctc_weight: f32,
    /// Apply `ctc_weight` during the attention beam search (one-pass joint
    /// CTC/attention decoding, [`lasr_decode::joint`]) rather than re-ranking its
    /// final hypotheses: each step adds the CTC prefix score, so hypotheses that run
    /// past the audio or skip some of it leave the beam at once.
    pub ctc_joint: bool,
    /// Decode with the CTC head only, no attention: its best path when
    /// `search.beam_size` is 1 and there is no language model, else a CTC prefix beam
    /// search of that width with the language model fused.
    pub ctc_only: bool,
    /// CTC prefix beam search: score added per emitted character (offsets the
    /// language model's preference for short outputs).
    pub ctc_insertion_bonus: f32,
    /// Audio longer than this is cut at quiet points into chunks of at most this long.
    pub max_chunk_seconds: f32,
    /// Weight of the language model's log-probabilities in the search (shallow
    /// fusion: `decoder + lm_weight * LM`), when one is given.
    pub lm_weight: f32,
    /// The language model (data, not an option: never serialised).
    #[serde(skip)]
    pub lm: Option<SharedLm>,
    /// CTC prefix beam search with a `lexicon`: score subtracted per word outside it.
    pub oov_penalty: f32,
    /// Known words the CTC prefix beam search holds hypotheses to, at `oov_penalty`
    /// per unknown word (data, never serialised; see [`lasr_decode::lexicon`]).
    #[serde(skip)]
    pub lexicon: Option<SharedLexicon>,
    /// CTC prefix beam search with a `word_lm`: weight of its log-probabilities.
    pub word_lm_weight: f32,
    /// CTC prefix beam search with a `word_lm`: score added per word.
    pub word_bonus: f32,
    /// A word model the CTC prefix beam search scores finished words with; its words
    /// are the known words, as a `lexicon`'s (data, never serialised; see
    /// [`lasr_decode::word_lm`]).
    #[serde(skip)]
    pub word_lm: Option<SharedWordLm>,
    /// CTC prefix beam search: weight of the attention decoder's log-probability
    /// added to the score of each of the `rescore_nbest` best hypotheses, which are
    /// then re-ranked (attention rescoring, as in WeNet); 0 turns it off. The
    /// attention decoder only reads finished hypotheses here, so it cannot run on or
    /// stop early as it can when it searches on its own. Left out of the model
    /// file when 0, so that files without it stay readable by earlier versions.
    #[serde(skip_serializing_if = "is_zero")]
    pub attention_rescore_weight: f32,
    /// How many of the CTC search's best hypotheses `attention_rescore_weight`
    /// rescores; they are the n-best list then.
    #[serde(skip_serializing_if = "is_default_nbest")]
    pub rescore_nbest: usize,
    /// CTC prefix beam search: the share, in `[0, 2]`, of the character LM's weight
    /// (`lm_weight`) that the LSTM language model takes over when it re-ranks the
    /// `rescore_nbest` best hypotheses. Their language-model term becomes
    /// `lm_weight * ((1 - share) * log P_ngram + share * log P_lstm)`: each gains
    /// `share * lm_weight * (log P_lstm - log P_ngram)` (with no n-gram fused, just
    /// `share * lm_weight * log P_lstm`), beside the attention decoder's term when
    /// that is on too. A share rather than a weight of its own, so that the
    /// search's `ctc_insertion_bonus`, tuned against the n-gram's cost per
    /// character, stays in balance whatever `lm_weight` is. Past 1 it extrapolates:
    /// the LSTM's disagreement with the n-gram counts for more than the n-gram's
    /// weight (the n-gram's own term turns negative), with the two weights still
    /// summing to `lm_weight`, so the balance holds. 0 or no `rnnlm` turns
    /// it off. Left out of the model file when 0, so that files without it stay
    /// readable by earlier versions (files with it are refused by those).
    #[serde(skip_serializing_if = "is_zero")]
    pub rnnlm_share: f32,
    /// The LSTM language model `rnnlm_share` applies to (data, never serialised;
    /// see [`crate::rnnlm`]).
    #[serde(skip)]
    pub rnnlm: Option<SharedRnnLm>,
    /// A backward LSTM language model (trained with `reversed`) beside or instead of
    /// `rnnlm`: with both, the LSTM log-probability `rnnlm_share` applies to is the
    /// mean of theirs (data, never serialised).
    #[serde(skip)]
    pub rnnlm_backward: Option<SharedRnnLm>,
    /// CTC prefix beam search: weight of the ensemble speller's log-probability
    /// ([`crate::ensemble_speller`], a speller attending over every listener of the
    /// ensemble; the model file must hold one) added to the score of each of the
    /// `rescore_nbest` best hypotheses, beside `attention_rescore_weight`'s main
    /// speller term. 0 turns it off; left out of the model file when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub ensemble_speller_weight: f32,
    /// CTC-only decoding (`ctc_only`): how much of the letters' label prior to divide
    /// out of the CTC output before the prefix search, `s` in `ln p(k | x_t) - s * (ln
    /// q_k - sum_j q_j ln q_j)` for each letter `k` ([`crate::prior`]; the model file
    /// must hold a prior, from `lasr prior`). Above 0 the prefix search runs even at
    /// beam 1 with no LM (in place of the best path, whose score reads normalised
    /// rows). Attention searches, with or without CTC scores, ignore it. 0 turns it
    /// off; left out of the model file when 0, so that files without it stay readable
    /// by earlier versions.
    #[serde(skip_serializing_if = "is_zero")]
    pub ctc_prior_scale: f32,
    /// The weight format the other settings were chosen with, to make
    /// [`ModelFile::inference_weights`] in (decoding itself uses whatever weights it
    /// is given). f32, the file's weights unchanged, unless set; left out of the
    /// model file when f32, so that files without it stay readable by earlier
    /// versions.
    #[serde(skip_serializing_if = "is_f32", with = "weight_format")]
    pub weights: WeightFormat,
}

fn is_f32(w: &WeightFormat) -> bool {
    *w == WeightFormat::F32
}

/// A [`WeightFormat`] as its name (`"int8"`).
mod weight_format {
    use lasr_nn::WeightFormat;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(w: &WeightFormat, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(w.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<WeightFormat, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

fn is_zero(v: &f32) -> bool {
    *v == 0.0
}

/// [`DecodeOptions::rescore_nbest`] unless set.
const DEFAULT_RESCORE_NBEST: usize = 8;

fn is_default_nbest(n: &usize) -> bool {
    *n == DEFAULT_RESCORE_NBEST
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            search: SearchOptions::default(),
            ctc_weight: 0.0,
            ctc_joint: false,
            ctc_only: false,
            ctc_insertion_bonus: 0.0,
            max_chunk_seconds: 25.0,
            lm_weight: 0.3,
            lm: None,
            oov_penalty: 0.0,
            lexicon: None,
            word_lm_weight: 0.0,
            word_bonus: 0.0,
            word_lm: None,
            attention_rescore_weight: 0.0,
            rescore_nbest: DEFAULT_RESCORE_NBEST,
            rnnlm_share: 0.0,
            rnnlm: None,
            rnnlm_backward: None,
            ensemble_speller_weight: 0.0,
            ctc_prior_scale: 0.0,
            weights: WeightFormat::F32,
        }
    }
}

impl DecodeOptions {
    /// Checks the options against a model.
    pub fn validate(&self, model: &ModelFile) -> Result<()> {
        self.search.validate()?;
        if !(0.0..=1.0).contains(&self.ctc_weight) {
            return Err(Error::Model(format!(
                "ctc_weight {} must lie in [0, 1]",
                self.ctc_weight
            )));
        }
        if self.ctc_joint && (self.ctc_only || self.ctc_weight == 0.0) {
            return Err(Error::Model(
                "joint CTC/attention decoding scores an attention search: give it a ctc_weight above 0 and no ctc_only"
                    .into(),
            ));
        }
        if (self.ctc_weight > 0.0 || self.ctc_only) && model.las.ctc.is_none() {
            return Err(Error::Model(
                "CTC decoding asked for, but this model has no CTC head (ctc_weight 0 in its config)"
                    .into(),
            ));
        }
        if !model.las.config.trains_speller()
            && (!self.ctc_only || self.attention_rescore_weight > 0.0)
        {
            return Err(Error::Model(
                "this model was trained with CTC alone (ctc_weight 1) and its attention decoder \
                 is untrained: decode with ctc_only (--ctc-only) and no attention re-ranking"
                    .into(),
            ));
        }
        if !(self.lm_weight.is_finite() && self.lm_weight >= 0.0) {
            return Err(Error::Model(format!(
                "lm_weight {} must be finite and >= 0",
                self.lm_weight
            )));
        }
        if self.lexicon.is_some() && !self.ctc_only {
            return Err(Error::Model(
                "a lexicon constrains CTC prefix beam search only: decode with ctc_only (--ctc-only)"
                    .into(),
            ));
        }
        if self.word_lm.is_some() && !self.ctc_only {
            return Err(Error::Model(
                "a word language model scores CTC prefix beam search only: decode with ctc_only (--ctc-only)"
                    .into(),
            ));
        }
        if self.word_lm.is_some() && self.lexicon.is_some() {
            return Err(Error::Model(
                "a word language model brings its own word list: give it or a lexicon, not both"
                    .into(),
            ));
        }
        if !(self.word_lm_weight.is_finite() && self.word_lm_weight >= 0.0) {
            return Err(Error::Model(format!(
                "word_lm_weight {} must be finite and >= 0",
                self.word_lm_weight
            )));
        }
        if !(self.attention_rescore_weight.is_finite() && self.attention_rescore_weight >= 0.0) {
            return Err(Error::Model(format!(
                "attention_rescore_weight {} must be finite and >= 0",
                self.attention_rescore_weight
            )));
        }
        if self.attention_rescore_weight > 0.0 && !self.ctc_only {
            return Err(Error::Model(
                "attention rescoring re-ranks a CTC prefix beam search: decode with ctc_only (--ctc-only)"
                    .into(),
            ));
        }
        if !(self.ensemble_speller_weight.is_finite() && self.ensemble_speller_weight >= 0.0) {
            return Err(Error::Model(format!(
                "ensemble_speller_weight {} must be finite and >= 0",
                self.ensemble_speller_weight
            )));
        }
        if self.ensemble_speller_weight > 0.0 {
            if !self.ctc_only {
                return Err(Error::Model(
                    "the ensemble speller re-ranks a CTC prefix beam search: decode with ctc_only (--ctc-only)"
                        .into(),
                ));
            }
            if model.ensemble_speller.is_none() {
                return Err(Error::Model(
                    "ensemble speller re-ranking asked for, but this model file holds no ensemble speller (lasr speller trains one)"
                        .into(),
                ));
            }
        }
        if !(0.0..=2.0).contains(&self.ctc_prior_scale) {
            return Err(Error::Model(format!(
                "ctc_prior_scale {} must lie in [0, 2] (1 divides the letters' whole prior out)",
                self.ctc_prior_scale
            )));
        }
        if self.ctc_prior_scale > 0.0 {
            match &model.ctc_prior {
                None => {
                    return Err(Error::Model(
                        "ctc_prior_scale asked for, but this model file holds no CTC prior (lasr prior measures one)"
                            .into(),
                    ))
                }
                Some(p) => p.validate(model.las.config.vocab_size)?,
            }
        }
        if !(0.0..=2.0).contains(&self.rnnlm_share) {
            return Err(Error::Model(format!(
                "rnnlm_share {} must lie in [0, 2]: it is the share of the character LM's weight the LSTM takes over (past 1, the n-gram's term turns negative)",
                self.rnnlm_share
            )));
        }
        for (lm, backward) in [(&self.rnnlm, false), (&self.rnnlm_backward, true)] {
            let Some(lm) = lm else { continue };
            if lm.0.config().reversed != backward {
                let (given, other) = if backward {
                    ("rnnlm_backward", "rnnlm")
                } else {
                    ("rnnlm", "rnnlm_backward")
                };
                return Err(Error::Model(format!(
                    "{given} holds a model that reads sentences the other way: put it in {other}"
                )));
            }
            if !self.ctc_only {
                return Err(Error::Model(
                    "an LSTM language model re-ranks a CTC prefix beam search: decode with ctc_only (--ctc-only)"
                        .into(),
                ));
            }
            if lm.0.vocab() != &model.vocab {
                return Err(Error::Model(
                    "the LSTM language model was trained on another vocabulary than the model's"
                        .into(),
                ));
            }
        }
        if self.rescore_nbest == 0 {
            return Err(Error::Model("rescore_nbest must be at least 1".into()));
        }
        if !self.word_bonus.is_finite() {
            return Err(Error::Model(format!(
                "word_bonus {} must be finite",
                self.word_bonus
            )));
        }
        if !(self.oov_penalty.is_finite() && self.oov_penalty >= 0.0) {
            return Err(Error::Model(format!(
                "oov_penalty {} must be finite and >= 0",
                self.oov_penalty
            )));
        }
        if !self.ctc_insertion_bonus.is_finite() {
            return Err(Error::Model(format!(
                "ctc_insertion_bonus {} must be finite",
                self.ctc_insertion_bonus
            )));
        }
        if !(self.max_chunk_seconds.is_finite() && self.max_chunk_seconds >= 1.0) {
            return Err(Error::Model(format!(
                "max_chunk_seconds {} must be at least 1",
                self.max_chunk_seconds
            )));
        }
        Ok(())
    }
}

/// Groups tokens into words at spaces; a word spans its letters' frames plus one
/// listener frame (`seconds_per_frame`), shifted by `offset` seconds (negative for the
/// front end's edge padding) and held within `[0, duration]`.
fn words(
    vocab: &Vocab,
    tokens: &[usize],
    frames: &[usize],
    spf: f32,
    offset: f32,
    duration: f32,
) -> Vec<Word> {
    let mut out = Vec::new();
    let mut current: Option<(String, usize, usize)> = None;
    for (&tok, &frame) in tokens.iter().zip(frames) {
        let symbol = vocab.decode(&[tok]);
        if symbol == " " || symbol.is_empty() {
            out.extend(current.take());
            continue;
        }
        let w = current.get_or_insert_with(|| (String::new(), frame, frame));
        w.0.push_str(&symbol);
        w.1 = w.1.min(frame);
        w.2 = w.2.max(frame);
    }
    out.extend(current);
    out.into_iter()
        .map(|(word, a, b)| Word {
            word,
            start: (offset + a as f32 * spf).clamp(0.0, duration),
            end: (offset + (b + 1) as f32 * spf).clamp(0.0, duration),
        })
        .collect()
}

/// Frame indices where features `[T, F]` are cut into chunks of at most `max` frames:
/// each cut is the quietest point (lowest mean feature over a 10-frame window) in the
/// second half of the span it ends, leaving at least `max(max / 4, min_tail)` frames
/// after it (pass the model's reduction, so no chunk is shorter than a listener frame).
/// Returns the chunk starts and the end, `[0, .., T]`.
pub fn chunk_bounds(feats: ArrayView2<f32>, max: usize, min_tail: usize) -> Vec<usize> {
    let t = feats.nrows();
    let max = max.max(2);
    let energy: Vec<f32> = feats
        .rows()
        .into_iter()
        .map(|r| r.sum() / r.len().max(1) as f32)
        .collect();
    let window = 10.min(t.max(1));
    let mut bounds = vec![0];
    let mut start = 0;
    // Leave at least a quarter chunk after each cut, so the last chunk is never a
    // sliver shorter than a listener frame.
    let tail = (max / 4).max(min_tail).min(max / 2);
    while t - start > max {
        let hi = (start + max).min(t - tail);
        let lo = (start + max / 2).min(hi);
        let mut best = (hi, f32::INFINITY);
        for cut in lo..=hi {
            let a = cut.saturating_sub(window / 2);
            let b = (a + window).min(t);
            let e = energy[a..b].iter().sum::<f32>() / (b - a).max(1) as f32;
            if e < best.1 {
                best = (cut, e);
            }
        }
        start = best.0;
        bounds.push(start);
    }
    bounds.push(t);
    bounds
}

struct Chunk {
    tokens: Vec<usize>,
    frames: Option<Vec<usize>>,
    finished: bool,
    nbest: Vec<Alternative>,
}

/// A CTC head's logits `[T, V]` as row-major natural-log probabilities `[T, V]`, what
/// both CTC searches read.
fn ctc_log_probs(logits: ndarray::Array2<f32>) -> ndarray::Array2<f32> {
    let mut lp = logits.as_standard_layout().into_owned();
    lasr_nn::activation::log_softmax_rows(lp.view_mut());
    lp
}

impl ModelFile {
    /// Seconds of audio per listener frame.
    pub fn seconds_per_frame(&self) -> f32 {
        self.las.config.reduction() as f32 * self.front_end.features.frame_shift_ms / 1000.0
    }

    fn decode_chunk(
        &self,
        weights: &InferenceWeights,
        feats: ArrayView2<f32>,
        options: &DecodeOptions,
    ) -> Result<Chunk> {
        let decoder = self.las.encode(weights, feats)?;
        let blank = self.las.config.blank;
        if options.ctc_only {
            let speller = self
                .ensemble_speller
                .as_ref()
                .filter(|_| options.ensemble_speller_weight > 0.0);
            let (logits, members) =
                self.chunk_ctc_logits_with(weights, &decoder, feats, speller.is_some())?;
            if options.search.beam_size > 1
                || options.lm.is_some()
                || options.lexicon.is_some()
                || options.word_lm.is_some()
                || options.attention_rescore_weight > 0.0
                || ((options.rnnlm.is_some() || options.rnnlm_backward.is_some())
                    && options.rnnlm_share > 0.0)
                || speller.is_some()
                // The best path's score reads normalised rows; the prefix search
                // (one prefix per frame at beam 1) takes the corrected output as is.
                || options.ctc_prior_scale > 0.0
            {
                let ensemble = match speller {
                    Some(es) => {
                        let mut parts = vec![decoder.listener_states()];
                        parts.extend(members.iter().map(|m| m.view()));
                        let states =
                            ndarray::concatenate(ndarray::Axis(1), &parts).map_err(|e| {
                                Error::Model(format!("listener states do not line up: {e}"))
                            })?;
                        Some(es.encode(weights, states.view())?)
                    }
                    None => None,
                };
                return self.ctc_beam(&decoder, ensemble.as_ref(), logits, options);
            }
            let (tokens, frames) = lasr_nn::ctc_greedy(logits.view(), blank);
            let ctc = -lasr_nn::ctc_score(logits.view(), &tokens, blank);
            return Ok(Chunk {
                nbest: vec![Alternative {
                    text: self.vocab.decode(&tokens),
                    log_prob: ctc,
                    ctc_log_prob: Some(ctc),
                    attention_log_prob: None,
                    lm_log_prob: None,
                    rnnlm_log_prob: None,
                    rnnlm_backward_log_prob: None,
                    ensemble_speller_log_prob: None,
                    score: ctc,
                }],
                tokens,
                frames: Some(frames),
                finished: true,
            });
        }
        let ctc_logits = if options.ctc_weight > 0.0 {
            Some(self.chunk_ctc_logits(weights, &decoder, feats)?)
        } else {
            None
        };
        let ctc_log_probs = match (&ctc_logits, options.ctc_joint) {
            (Some(l), true) => Some(ctc_log_probs(l.clone())),
            _ => None,
        };
        // ESPnet's CTC pre-beam: CTC scores the 1.5 x beam best tokens by attention
        // (`<eos>` among them).
        let candidates = (options.search.beam_size * 3).div_ceil(2).max(2);
        let joint = match &ctc_log_probs {
            Some(lp) => Some(lasr_decode::JointCtc::new(
                &decoder,
                lp.as_slice().expect("standard layout"),
                lp.nrows(),
                blank,
                options.ctc_weight,
                candidates,
            )?),
            None => None,
        };
        let mut hyps = match (&options.lm, &joint) {
            (Some(lm), Some(j)) => {
                beam_search(&Fused::new(j, &lm.0, options.lm_weight)?, &options.search)?
            }
            (Some(lm), None) => beam_search(
                &Fused::new(&decoder, &lm.0, options.lm_weight)?,
                &options.search,
            )?,
            (None, Some(j)) => beam_search(j, &options.search)?,
            (None, None) => beam_search(&decoder, &options.search)?,
        };
        let mut ctc_scores = vec![None; hyps.len()];
        if let Some(logits) = &ctc_logits {
            let w = f64::from(options.ctc_weight);
            for (h, c) in hyps.iter_mut().zip(&mut ctc_scores) {
                let ctc = -lasr_nn::ctc_score(logits.view(), &h.tokens, blank);
                *c = Some(ctc);
                // Joint decoding has ranked by CTC already, step by step.
                if !options.ctc_joint {
                    h.score = (1.0 - w) * h.log_prob + w * ctc;
                }
            }
            let mut order: Vec<usize> = (0..hyps.len()).collect();
            // Hypotheses CTC cannot align score -inf and sink to the end.
            order.sort_by(|&a, &b| hyps[b].score.total_cmp(&hyps[a].score));
            hyps = order.iter().map(|&i| hyps[i].clone()).collect();
            ctc_scores = order.iter().map(|&i| ctc_scores[i]).collect();
        }
        let best = hyps
            .first()
            .ok_or_else(|| Error::Model("beam search returned nothing".into()))?;
        Ok(Chunk {
            tokens: best.tokens.clone(),
            frames: best.attention_peaks.clone(),
            finished: best.finished,
            nbest: hyps
                .iter()
                .zip(ctc_scores)
                .map(|(h, ctc)| Alternative {
                    text: self.vocab.decode(&h.tokens),
                    log_prob: h.log_prob,
                    ctc_log_prob: ctc,
                    attention_log_prob: None,
                    lm_log_prob: None,
                    rnnlm_log_prob: None,
                    rnnlm_backward_log_prob: None,
                    ensemble_speller_log_prob: None,
                    score: h.score,
                })
                .collect(),
        })
    }

    /// The CTC prefix beam search over `logits`, its n-best re-ranked by `decoder`'s
    /// speller, the ensemble speller's `ensemble` and the LSTM LM as `options` ask.
    fn ctc_beam(
        &self,
        decoder: &crate::infer::UtteranceDecoder<'_>,
        ensemble: Option<&crate::infer::UtteranceDecoder<'_>>,
        logits: ndarray::Array2<f32>,
        options: &DecodeOptions,
    ) -> Result<Chunk> {
        let (frames, v) = logits.dim();
        let mut lp = ctc_log_probs(logits);
        if options.ctc_prior_scale > 0.0 {
            let prior = self.ctc_prior.as_ref().ok_or_else(|| {
                Error::Model(
                    "ctc_prior_scale asked for, but this model file holds no CTC prior".into(),
                )
            })?;
            crate::prior::correct(
                &mut lp,
                &prior.letter_shift(&self.vocab, self.las.config.blank),
                options.ctc_prior_scale,
            );
        }
        let search = lasr_decode::CtcSearchOptions {
            beam_size: options.search.beam_size,
            lm_weight: if options.lm.is_some() {
                options.lm_weight
            } else {
                0.0
            },
            insertion_bonus: options.ctc_insertion_bonus,
            oov_penalty: options.oov_penalty,
            word_lm_weight: options.word_lm_weight,
            word_bonus: options.word_bonus,
            ..Default::default()
        };
        let words = match (&options.word_lm, &options.lexicon) {
            (Some(w), _) => Some(lasr_decode::Words::Lm(w.0.as_ref())),
            (None, Some(l)) => Some(lasr_decode::Words::List(l.0.as_ref())),
            (None, None) => None,
        };
        let mut hyps = lasr_decode::ctc_beam_search_with(
            lp.as_slice().expect("standard layout"),
            frames,
            v,
            self.las.config.blank,
            options.lm.as_ref().map(|lm| lm.0.as_ref()),
            words,
            &search,
        )?;
        let mut attention = vec![None; hyps.len()];
        let mut rnnlm = vec![None; hyps.len()];
        let mut joint = vec![None; hyps.len()];
        let mut backward = vec![None; hyps.len()];
        let lstms = (options.rnnlm.is_some() || options.rnnlm_backward.is_some())
            && options.rnnlm_share > 0.0;
        if options.attention_rescore_weight > 0.0 || lstms || ensemble.is_some() {
            // Only rescored hypotheses stay: their scores and the others' are not on
            // one scale.
            hyps.truncate(options.rescore_nbest);
            let seqs: Vec<Vec<usize>> = hyps.iter().map(|h| h.tokens.clone()).collect();
            if options.attention_rescore_weight > 0.0 {
                attention = lasr_decode::score_sequences(decoder, &seqs)?
                    .into_iter()
                    .map(Some)
                    .collect();
            } else {
                attention = vec![None; hyps.len()];
            }
            let refs: Vec<&[usize]> = seqs.iter().map(Vec::as_slice).collect();
            let score = |lm: &Option<SharedRnnLm>| -> Result<Vec<Option<f64>>> {
                match lm.as_ref().filter(|_| options.rnnlm_share > 0.0) {
                    Some(lm) => Ok(lm.0.log_probs(&refs)?.into_iter().map(Some).collect()),
                    None => Ok(vec![None; refs.len()]),
                }
            };
            rnnlm = score(&options.rnnlm)?;
            backward = score(&options.rnnlm_backward)?;
            joint = match ensemble {
                Some(d) => lasr_decode::score_sequences(d, &seqs)?
                    .into_iter()
                    .map(Some)
                    .collect(),
                None => vec![None; hyps.len()],
            };
            let wa = f64::from(options.attention_rescore_weight);
            let wr = f64::from(options.rnnlm_share) * f64::from(options.lm_weight);
            let we = f64::from(options.ensemble_speller_weight);
            for ((((h, a), f), b), e) in hyps
                .iter_mut()
                .zip(&attention)
                .zip(&rnnlm)
                .zip(&backward)
                .zip(&joint)
            {
                h.score += we * e.unwrap_or(0.0);
                // Both directions: their mean is the LSTM's log-probability.
                let r = match (f, b) {
                    (Some(f), Some(b)) => Some(0.5 * (f + b)),
                    (f, b) => f.or(*b),
                };
                // The LSTM takes its share of the character n-gram's weight: the
                // n-gram's score per character is what `ctc_insertion_bonus` was
                // tuned to offset, and an LSTM added on top would tip that balance
                // toward shorter texts (it did: more deletions, CER up).
                if let Some(r) = r {
                    h.score += wr * (r - h.lm_log_prob);
                }
                h.score += wa * a.unwrap_or(0.0);
            }
            let mut order: Vec<usize> = (0..hyps.len()).collect();
            // Stable: ties keep the CTC search's order.
            order.sort_by(|&a, &b| hyps[b].score.total_cmp(&hyps[a].score));
            hyps = order.iter().map(|&i| hyps[i].clone()).collect();
            attention = order.iter().map(|&i| attention[i]).collect();
            rnnlm = order.iter().map(|&i| rnnlm[i]).collect();
            backward = order.iter().map(|&i| backward[i]).collect();
            joint = order.iter().map(|&i| joint[i]).collect();
        }
        let best = hyps
            .first()
            .ok_or_else(|| Error::Model("CTC beam search returned nothing".into()))?;
        Ok(Chunk {
            tokens: best.tokens.clone(),
            frames: Some(best.frames.clone()),
            finished: true,
            nbest: hyps
                .iter()
                .zip(attention)
                .zip(rnnlm)
                .zip(backward)
                .zip(joint)
                .map(
                    |(
                        (((h, attention_log_prob), rnnlm_log_prob), rnnlm_backward_log_prob),
                        ensemble_speller_log_prob,
                    )| {
                        Alternative {
                            text: self.vocab.decode(&h.tokens),
                            log_prob: h.ctc_log_prob
                                + f64::from(search.lm_weight) * h.lm_log_prob
                                + f64::from(search.word_lm_weight) * h.word_lm_log_prob,
                            ctc_log_prob: Some(h.ctc_log_prob),
                            attention_log_prob,
                            lm_log_prob: options.lm.as_ref().map(|_| h.lm_log_prob),
                            rnnlm_log_prob,
                            rnnlm_backward_log_prob,
                            ensemble_speller_log_prob,
                            score: h.score,
                        }
                    },
                )
                .collect(),
        })
    }

    /// This model's weights laid out for decoding, the packed ones in `format` (see
    /// [`crate::Las::inference_weights`]): make them once and pass them to every
    /// `transcribe_*` call.
    pub fn inference_weights(&self, format: WeightFormat) -> InferenceWeights {
        let mut w = self.las.inference_weights(format);
        w.members = self.members.iter().map(|m| m.pack(format)).collect();
        w.member_configs = self.members.iter().map(|m| m.config.clone()).collect();
        w.ensemble_speller = self.ensemble_speller.as_ref().map(|es| {
            (
                [
                    es.speller.cell0.prepare_packed(format),
                    es.speller.cell1.prepare_packed(format),
                ],
                es.config.clone(),
                es.input_dim(),
            )
        });
        w
    }

    /// CTC log-probabilities `[U, V]` of normalised features `[T, F]` taken as one
    /// chunk (no cutting): the main model's, or for an ensemble the mixture of its
    /// models' ([`crate::ensemble`]). `weights` are this model's
    /// [`ModelFile::inference_weights`].
    pub fn ctc_log_probs(
        &self,
        weights: &InferenceWeights,
        feats: ArrayView2<f32>,
    ) -> Result<ndarray::Array2<f32>> {
        let decoder = self.las.encode(weights, feats)?;
        Ok(ctc_log_probs(
            self.chunk_ctc_logits(weights, &decoder, feats)?,
        ))
    }

    /// CTC logits `[U, V]` of one chunk's features `[T, F]`: the main model's, or
    /// for an ensemble the mixture's log-probabilities ([`crate::ensemble`]), which
    /// every reader of logits takes as they are (log-softmax leaves them unchanged).
    fn chunk_ctc_logits(
        &self,
        weights: &InferenceWeights,
        decoder: &crate::infer::UtteranceDecoder<'_>,
        feats: ArrayView2<f32>,
    ) -> Result<ndarray::Array2<f32>> {
        Ok(self
            .chunk_ctc_logits_with(weights, decoder, feats, false)?
            .0)
    }

    /// [`ModelFile::chunk_ctc_logits`], and if `keep_states` the members' listener
    /// states `[U, D_k]` each, in order (else none).
    fn chunk_ctc_logits_with(
        &self,
        weights: &InferenceWeights,
        decoder: &crate::infer::UtteranceDecoder<'_>,
        feats: ArrayView2<f32>,
        keep_states: bool,
    ) -> Result<(ndarray::Array2<f32>, Vec<ndarray::Array2<f32>>)> {
        let logits = decoder
            .ctc_logits()?
            .ok_or_else(|| Error::Model("this model has no CTC head".into()))?;
        if self.members.is_empty() {
            return Ok((logits, Vec::new()));
        }
        let states = self.member_states(weights, feats)?;
        let mut parts = vec![ctc_log_probs(logits)];
        let mut shares = vec![self.main_weight()];
        for (m, h) in self.members.iter().zip(&states) {
            parts.push(ctc_log_probs(m.ctc.forward(h.view())?));
            shares.push(m.weight);
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        let mixed = crate::ensemble::mix_log_probs(&views, &shares)?;
        Ok((mixed, if keep_states { states } else { Vec::new() }))
    }

    /// Each member's listener states `[U, D_k]` of normalised features `[T, F]`;
    /// `weights` are this model's [`ModelFile::inference_weights`].
    pub(crate) fn member_states(
        &self,
        weights: &InferenceWeights,
        feats: ArrayView2<f32>,
    ) -> Result<Vec<ndarray::Array2<f32>>> {
        if weights.members.len() != self.members.len()
            || self
                .members
                .iter()
                .zip(&weights.member_configs)
                .any(|(m, c)| m.config != *c)
        {
            return Err(Error::Config(format!(
                "inference weights hold {} ensemble members, the model {} (or of other shapes): make them with ModelFile::inference_weights",
                weights.members.len(),
                self.members.len()
            )));
        }
        self.members
            .iter()
            .zip(&weights.members)
            .map(|(m, w)| m.listen(feats, w))
            .collect()
    }

    /// Transcribes normalised features `[T, F]` (as `front_end` makes them, edge
    /// padding included: times are of the audio, without it), cutting
    /// them into chunks of at most `options.max_chunk_seconds`; `weights` are this
    /// model's [`ModelFile::inference_weights`].
    pub fn transcribe_features(
        &self,
        weights: &InferenceWeights,
        feats: ArrayView2<f32>,
        options: &DecodeOptions,
    ) -> Result<Transcript> {
        let start = Instant::now();
        options.validate(self)?;
        let shift = self.front_end.features.frame_shift_ms / 1000.0;
        let max = (options.max_chunk_seconds / shift) as usize;
        let bounds = chunk_bounds(feats, max, self.las.config.reduction());
        let spf = self.seconds_per_frame();
        let pad = self.front_end.pad_frames;
        let duration = feats.nrows().saturating_sub(2 * pad) as f32 * shift;
        let mut t = Transcript {
            text: String::new(),
            tokens: Vec::new(),
            words: Vec::new(),
            nbest: Vec::new(),
            finished: true,
            duration,
            chunks: bounds.len() - 1,
            seconds: 0.0,
        };
        for pair in bounds.windows(2) {
            let chunk =
                self.decode_chunk(weights, feats.slice(s![pair[0]..pair[1], ..]), options)?;
            let offset = (pair[0] as f32 - pad as f32) * shift;
            if let Some(frames) = &chunk.frames {
                t.words.extend(words(
                    &self.vocab,
                    &chunk.tokens,
                    frames,
                    spf,
                    offset,
                    duration,
                ));
            }
            if let (false, false, Some(space)) = (
                t.tokens.is_empty(),
                chunk.tokens.is_empty(),
                self.vocab.id(' '),
            ) {
                t.tokens.push(space);
            }
            t.tokens.extend(&chunk.tokens);
            t.finished &= chunk.finished;
            if t.chunks == 1 {
                t.nbest = chunk.nbest;
            }
        }
        t.text = self.vocab.decode(&t.tokens);
        if t.chunks > 1 {
            t.nbest = vec![Alternative {
                text: t.text.clone(),
                log_prob: f64::NAN,
                ctc_log_prob: None,
                attention_log_prob: None,
                lm_log_prob: None,
                rnnlm_log_prob: None,
                rnnlm_backward_log_prob: None,
                ensemble_speller_log_prob: None,
                score: f64::NAN,
            }];
        }
        t.seconds = start.elapsed().as_secs_f32();
        Ok(t)
    }

    /// Attention weights `[L, U]` of the model reading `tokens` (a transcript, without
    /// `<sos>`/`<eos>`) over features `[T, F]`: row `l` is where output step `l`
    /// looked (the last row is the `<eos>` step). For alignment plots.
    pub fn attention(
        &self,
        feats: ArrayView2<f32>,
        tokens: &[usize],
    ) -> Result<ndarray::Array2<f32>> {
        let batch = crate::las::Batch {
            feats: feats.insert_axis(ndarray::Axis(1)).to_owned(),
            lengths: vec![feats.nrows()],
            targets: vec![tokens.to_vec()],
            seeds: None,
        };
        let (_, cache) = self.las.forward(&batch)?;
        let attention = cache.attention().ok_or_else(|| {
            Error::Model(
                "this model was trained with CTC alone (ctc_weight 1): its speller never \
                 learned to attend"
                    .into(),
            )
        })?;
        Ok(attention.index_axis_move(ndarray::Axis(1), 0))
    }

    /// A front end for this model (one per thread).
    pub fn front_end(&self) -> Result<FrontEnd> {
        Ok(FrontEnd::new(self.front_end.clone())?)
    }

    /// Transcribes decoded audio (any rate; `name` labels errors).
    pub fn transcribe_audio(
        &self,
        weights: &InferenceWeights,
        front: &mut FrontEnd,
        audio: Audio,
        name: &Path,
        options: &DecodeOptions,
    ) -> Result<Transcript> {
        let start = Instant::now();
        let duration = audio.duration_secs() as f32;
        let feats = front
            .audio_features(audio)
            .map_err(|e| Error::Audio(e.in_file(name)))?;
        let mut t = self
            .transcribe_features(weights, feats.view(), options)
            .map_err(|e| match e {
                Error::Batch(m) => Error::Batch(format!("{}: {m}", name.display())),
                other => other,
            })?;
        t.duration = duration;
        // Word times were held inside the features' span; the audio's own length is
        // the tighter bound (the last frame may run past it).
        for w in &mut t.words {
            w.start = w.start.min(duration);
            w.end = w.end.min(duration);
        }
        t.seconds = start.elapsed().as_secs_f32();
        Ok(t)
    }

    /// Transcribes an audio file (any WAV or FLAC); errors name the file.
    pub fn transcribe_file(
        &self,
        weights: &InferenceWeights,
        front: &mut FrontEnd,
        path: &Path,
        options: &DecodeOptions,
    ) -> Result<Transcript> {
        let start = Instant::now();
        let audio = lasr_features::load(path)?;
        let mut t = self.transcribe_audio(weights, front, audio, path, options)?;
        t.seconds = start.elapsed().as_secs_f32();
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_times_leave_out_the_edge_padding_and_stay_inside_the_audio() {
        let vocab = Vocab::librispeech();
        let tokens = vocab.encode("AB CD");
        // Listener frames of 40 ms; the front end added 0.2 s before the audio, so
        // frame 5 is the audio's first instant and frame 30 is past its 0.9 s end.
        let frames = [3, 6, 7, 10, 30];
        let w = words(&vocab, &tokens, &frames, 0.04, -0.2, 0.9);
        let times: Vec<(&str, f32, f32)> = w
            .iter()
            .map(|w| (w.word.as_str(), w.start, w.end))
            .collect();
        let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
        assert_eq!(times.len(), 2, "{times:?}");
        assert_eq!((times[0].0, times[1].0), ("ab", "cd"));
        // "AB" starts in the padding (3 * 0.04 - 0.2 < 0), so at 0; ends after frame 6.
        assert!(
            close(times[0].1, 0.0) && close(times[0].2, 0.08),
            "{times:?}"
        );
        // "CD" starts at frame 10 and would end at 31 * 0.04 - 0.2 = 1.04 s: held to 0.9.
        assert!(
            close(times[1].1, 0.2) && close(times[1].2, 0.9),
            "{times:?}"
        );
    }

    #[test]
    fn rescoring_fields_stay_out_of_files_at_their_defaults_and_read_back() {
        // Model files written without rescoring must not carry fields that versions
        // before it refuse (`deny_unknown_fields`).
        let plain = serde_json::to_string(&DecodeOptions::default()).unwrap();
        assert!(!plain.contains("rescore"), "{plain}");
        assert!(!plain.contains("rnnlm"), "{plain}");
        let o = DecodeOptions {
            attention_rescore_weight: 0.5,
            rescore_nbest: 4,
            rnnlm_share: 0.25,
            ..DecodeOptions::default()
        };
        let json = serde_json::to_string(&o).unwrap();
        assert!(json.contains("\"rescore_nbest\":4"), "{json}");
        assert!(json.contains("\"rnnlm_share\":0.25"), "{json}");
        let back: DecodeOptions = serde_json::from_str(&json).unwrap();
        assert_eq!(back, o);
        let back: DecodeOptions = serde_json::from_str(&plain).unwrap();
        assert_eq!(back, DecodeOptions::default());
    }

    #[test]
    fn a_weight_format_is_written_by_name_only_when_not_f32() {
        let plain = serde_json::to_string(&DecodeOptions::default()).unwrap();
        assert!(!plain.contains("weights"), "{plain}");
        let o = DecodeOptions {
            weights: WeightFormat::Int8,
            ..DecodeOptions::default()
        };
        let json = serde_json::to_string(&o).unwrap();
        assert!(json.contains("\"weights\":\"int8\""), "{json}");
        assert_eq!(serde_json::from_str::<DecodeOptions>(&json).unwrap(), o);
        let err = serde_json::from_str::<DecodeOptions>(r#"{"weights": "int4"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("int4") && err.contains("f32, bf16 or int8"),
            "{err}"
        );
    }
}
