//! Character n-gram language model and shallow fusion.
//!
//! [`CharLm`] is an order-`N` model over a [`Vocab`]'s token ids, trained from text lines:
//! each line is normalised and encoded by [`Vocab::encode`] and wrapped as
//! `<sos> tokens <eos>`. `<sos>` is context only: it is never predicted, and neither is
//! `<pad>` (both get probability 0); `<eos>` is predicted like any character, `<unk>` too
//! (characters outside the vocabulary). Lines that are empty after normalisation are
//! skipped, in training and in [`CharLm::perplexity`] alike. A history is the tokens
//! before the predicted one, starting with `<sos>`; only its last `N - 1` count.
//!
//! ## Smoothing
//!
//! Interpolated modified Kneser-Ney (Chen & Goodman 1998), as KenLM builds it:
//!
//! ```text
//! p(w | h) = max(a(hw) - D(a(hw)), 0) / T(h)  +  gamma(h) * p(w | h')
//! gamma(h) = (D1 * N1(h) + D2 * N2(h) + D3 * N3+(h)) / T(h)
//! ```
//!
//! where `h'` is `h` without its oldest token, `T(h)` is the sum of `a(hw)` over `w`,
//! `Nr(h)` is the number of `w` with `a(hw) = r` (`N3+`: at least 3), and `D(a)` is
//! `D1`, `D2` or `D3` for `a = 1, 2, >= 3`. The counts `a` are raw counts for the
//! highest order and for n-grams that start with `<sos>` (nothing can precede them),
//! and for every other n-gram the number of distinct tokens seen right before it (its
//! continuation count). Below the unigrams lies the uniform distribution over the
//! `V - 2` predictable symbols (all but `<pad>` and `<sos>`), so every symbol that can
//! be predicted has a probability above 0 after any history. A history whose context
//! was never seen gives the distribution of its longest seen suffix (`gamma` = 1).
//!
//! The discounts of each order come from its counts of counts `n1..n4`:
//! `Y = n1 / (n1 + 2 n2)`, `Dr = r - (r + 1) Y n(r+1) / nr`. On small corpora that
//! formula can be undefined or leave `Dr` outside `(0, r)` (which would make `gamma`
//! zero, or a seen n-gram no likelier than an unseen one); such a discount is replaced
//! by KenLM's fallback `0.5`, `1.0` or `1.5`.
//!
//! The model is stored in backoff form: for each context seen in training, `ln gamma`
//! and, for each token seen after it, `ln p(w | h)` with the interpolation already
//! folded in, so a distribution is the uniform one, then for each ever longer matching
//! context: add `ln gamma`, overwrite the seen tokens. Each distribution sums to 1
//! (up to float rounding) by construction, for any history.
//!
//! ## File format `lasr-char-lm`, version 1
//!
//! All integers little-endian, floats IEEE 754 `f32` little-endian:
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | magic | 8 bytes | `LASR-CLM` |
//! | version | `u32` | 1 |
//! | order | `u32` | `N`, 1 to [`MAX_ORDER`] |
//! | symbols | `u32` | `V` |
//! | each symbol | `u32` length, then UTF-8 bytes | the vocabulary in id order |
//! | contexts | `u32` | `C >= 1` |
//! | entries | `u32` | total number of (context, token) entries |
//! | each context | `u32` parent, `u16` token, `u16` count, `f32` ln gamma, then `count` times (`u16` token, `f32` ln p) | see below |
//! | checksum | `u64` | FNV-1a 64 of every byte before it |
//!
//! Contexts are numbered by their position. Context 0 is the empty context (parent 0,
//! token 0). Context `c > 0` is its parent's context with `token` prepended as the new
//! oldest token, and its parent comes before it (`parent < c`). A context's entries are
//! sorted by token id, and hold `ln p(token | context)`; tokens absent from them get
//! `ln gamma + ln p(token | parent)`, and below context 0 lies `ln(1 / (V - 2))` for
//! every token but `<pad>` and `<sos>`.
//!
//! ## Shallow fusion
//!
//! [`Fused`] wraps any [`Decoder`] whose symbols are the model's: each step it returns
//! `decoder_log_prob + weight * lm_log_prob` for every symbol, the model's `<eos>`
//! probability applying to the decoder's `<eos>`.

use std::fmt;
use std::path::Path;

use crate::error::{Error, LmFileErrorKind, Result};
pub(crate) use crate::ngram::KeyHasher;
use crate::ngram::{self, Ngram};
use crate::search::{boxed, Decoder, Step};
use crate::vocab::Vocab;

pub use crate::ngram::{FORMAT_VERSION, MAX_ORDER};

/// The file format's magic bytes.
pub const FORMAT_MAGIC: [u8; 8] = *crate::ngram::KINDS[0].0;

/// An order-`N` character n-gram model with interpolated modified Kneser-Ney
/// smoothing; see the [module documentation](self).
#[derive(Clone)]
pub struct CharLm {
    vocab: Vocab,
    ngram: Ngram,
}

impl fmt::Debug for CharLm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CharLm")
            .field("order", &self.order())
            .field("vocab_size", &self.vocab.len())
            .field("contexts", &self.num_contexts())
            .field("entries", &self.num_entries())
            .finish()
    }
}

impl CharLm {
    /// Trains an order-`order` model on `lines` (one sentence each, normalised and
    /// encoded with `vocab`; empty ones are skipped).
    ///
    /// Errors ([`Error::Lm`]): `order` outside `1..=`[`MAX_ORDER`], a vocabulary of
    /// more than 65536 symbols, or no non-empty line.
    pub fn train<I>(lines: I, vocab: &Vocab, order: usize) -> Result<CharLm>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let ngram = Ngram::train(
            lines.into_iter().map(|line| vocab.encode(line.as_ref())),
            vocab.len(),
            order,
        )?;
        Ok(CharLm {
            vocab: vocab.clone(),
            ngram,
        })
    }

    /// The model's order `N`: it looks at the last `N - 1` tokens.
    pub fn order(&self) -> usize {
        self.ngram.order()
    }

    /// The vocabulary whose token ids the model predicts.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Contexts stored (the empty one included).
    pub fn num_contexts(&self) -> usize {
        self.ngram.num_contexts()
    }

    /// (context, token) entries stored: the distinct n-grams of all orders seen in
    /// training.
    pub fn num_entries(&self) -> usize {
        self.ngram.num_entries()
    }

    /// Natural log of `p(next | history)`; `history` is the tokens before `next`,
    /// starting with `<sos>` (only the last `N - 1` matter). `-inf` for `<pad>`,
    /// `<sos>` and ids outside the vocabulary. Equal to `log_probs(history)[next]`, to
    /// the bit.
    pub fn log_prob(&self, history: &[usize], next: usize) -> f32 {
        self.ngram.log_prob(history, next)
    }

    /// Natural-log probabilities of every symbol after `history` `[V]`.
    pub fn log_probs(&self, history: &[usize]) -> Vec<f32> {
        let mut out = vec![0.0; self.vocab.len()];
        self.log_probs_into(history, &mut out);
        out
    }

    /// [`CharLm::log_probs`] into `out` `[V]`, without allocating: one hash lookup
    /// per history token used, then `O(V)` work per matching context.
    ///
    /// # Panics
    /// If `out.len()` is not the vocabulary size.
    pub fn log_probs_into(&self, history: &[usize], out: &mut [f32]) {
        assert_eq!(
            out.len(),
            self.vocab.len(),
            "log_probs_into needs one slot per vocabulary symbol"
        );
        self.ngram.log_probs_into(history, out);
    }

    /// The search state after `<sos>` (see [`CharLm::advance`]).
    pub(crate) fn start(&self) -> u32 {
        self.ngram.start()
    }

    /// The state after `state` reads `token`: the longest context of the model that
    /// ends the history, which is all the model's next prediction depends on.
    pub(crate) fn advance(&self, state: u32, token: usize) -> u32 {
        self.ngram.advance(state, token)
    }

    /// [`CharLm::log_probs_into`] of the history that led to `state`.
    pub(crate) fn state_log_probs_into(&self, state: u32, out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.vocab.len());
        self.ngram.state_log_probs_into(state, out);
    }

    /// Natural log of the probability of one line (normalised and encoded as in
    /// training, `<eos>` included) and the number of symbols it predicts; `(0.0, 0)`
    /// for a line that is empty after normalisation.
    pub fn sentence_log_prob(&self, line: &str) -> (f64, usize) {
        let mut seq = vec![Vocab::SOS];
        seq.extend(self.vocab.encode(line));
        if seq.len() == 1 {
            return (0.0, 0);
        }
        seq.push(Vocab::EOS);
        let total = (1..seq.len())
            .map(|i| f64::from(self.log_prob(&seq[..i], seq[i])))
            .sum();
        (total, seq.len() - 1)
    }

    /// Perplexity per predicted symbol (characters and each line's `<eos>`) over
    /// `lines`: `exp(-sum ln p / symbols)`. Empty lines are skipped; NaN if nothing is
    /// left.
    pub fn perplexity<I>(&self, lines: I) -> f64
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let (mut total, mut symbols) = (0.0f64, 0usize);
        for line in lines {
            let (lp, n) = self.sentence_log_prob(line.as_ref());
            total += lp;
            symbols += n;
        }
        if symbols == 0 {
            return f64::NAN;
        }
        (-total / symbols as f64).exp()
    }

    /// The model in the `lasr-char-lm` format (see the [module documentation](self)).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.ngram
            .to_file_bytes(&FORMAT_MAGIC, self.vocab.symbols())
    }

    /// A model from bytes in the `lasr-char-lm` format, which must have been built
    /// over exactly `vocab`'s symbols. Any damage is an [`Error::LmFile`] (with no
    /// path), never a panic.
    pub fn from_bytes(bytes: &[u8], vocab: &Vocab) -> Result<CharLm> {
        parse(bytes, vocab).map_err(|kind| Error::LmFile { path: None, kind })
    }

    /// Writes [`CharLm::to_bytes`] to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        ngram::save(path.as_ref(), &self.to_bytes())
    }

    /// Reads a model saved by [`CharLm::save`]; errors name `path`.
    pub fn load(path: impl AsRef<Path>, vocab: &Vocab) -> Result<CharLm> {
        ngram::load(path.as_ref(), |bytes| parse(bytes, vocab))
    }
}

fn parse(bytes: &[u8], vocab: &Vocab) -> std::result::Result<CharLm, LmFileErrorKind> {
    let (symbols, ngram) = ngram::parse_file(bytes, &FORMAT_MAGIC)?;
    if symbols != vocab.symbols() {
        return Err(LmFileErrorKind::VocabMismatch {
            expected: vocab.symbols().to_vec(),
            found: symbols,
        });
    }
    Ok(CharLm {
        vocab: vocab.clone(),
        ngram,
    })
}

/// Shallow fusion of a [`Decoder`] with a [`CharLm`]: a decoder itself, whose
/// log-probabilities are `decoder + weight * lm` for every symbol.
///
/// `weight` must be finite and `>= 0`; since `lm` log-probabilities are `<= 0`, the
/// fused ones are never above the decoder's, so they stay `<= 0` as beam search's
/// stopping rule requires. The model gives `<pad>` and `<sos>` probability 0, so with
/// a positive weight they get `-inf` (with weight 0 the decoder's values are returned
/// untouched, exactly). The decoder must use the model's symbols: the same
/// `vocab_size`, `sos` and `eos` (checked when a search starts, by `initial`, and by
/// [`Fused::new`]). A length bonus is left to [`LengthNorm::Bonus`](crate::LengthNorm).
///
/// Errors of the wrapped decoder surface from the searches as one
/// [`Error::Decoder`], as they would unwrapped.
pub struct Fused<'a, D: Decoder + ?Sized> {
    pub decoder: &'a D,
    pub lm: &'a CharLm,
    pub weight: f32,
}

impl<'a, D: Decoder + ?Sized> Fused<'a, D> {
    /// Checks that `decoder` and `lm` share their symbols and that `weight` is finite
    /// and `>= 0` ([`Error::Lm`] otherwise).
    pub fn new(decoder: &'a D, lm: &'a CharLm, weight: f32) -> Result<Self> {
        let fused = Fused {
            decoder,
            lm,
            weight,
        };
        fused.check()?;
        Ok(fused)
    }

    fn check(&self) -> Result<()> {
        let (v, lm_v) = (self.decoder.vocab_size(), self.lm.vocab().len());
        if v != lm_v {
            return Err(Error::Lm(format!(
                "cannot fuse a decoder of {v} symbols with a language model of {lm_v}"
            )));
        }
        if self.decoder.sos() != Vocab::SOS || self.decoder.eos() != Vocab::EOS {
            return Err(Error::Lm(format!(
                "cannot fuse a decoder with sos {} and eos {} with a language model whose are {} and {}",
                self.decoder.sos(),
                self.decoder.eos(),
                Vocab::SOS,
                Vocab::EOS
            )));
        }
        if !(self.weight.is_finite() && self.weight >= 0.0) {
            return Err(Error::Lm(format!(
                "fusion weight must be finite and >= 0, not {}",
                self.weight
            )));
        }
        Ok(())
    }

    /// History slots per hypothesis: the last `order - 1` tokens consumed.
    fn width(&self) -> usize {
        self.lm.order() - 1
    }
}

/// Marks history slots before the first token consumed.
const NO_TOKEN: usize = usize::MAX;

/// State of [`Fused`] for `n` hypotheses: the decoder's state and each hypothesis's
/// last `order - 1` tokens consumed (`<sos>` first).
#[derive(Debug, Clone, PartialEq)]
pub struct FusedState<S> {
    /// The wrapped decoder's state.
    pub inner: S,
    /// `[rows, order - 1]` row-major, oldest first, [`NO_TOKEN`] before the start.
    history: Vec<usize>,
    rows: usize,
}

impl<S> FusedState<S> {
    /// Number of hypotheses.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The tokens hypothesis `row` has consumed that the model still looks at, oldest
    /// first (`<sos>` while it is among them). Panics if `row >= rows()`.
    pub fn history(&self, row: usize) -> &[usize] {
        assert!(
            row < self.rows,
            "row {row} of a state of {} rows",
            self.rows
        );
        let w = self.history.len() / self.rows.max(1);
        let h = &self.history[row * w..(row + 1) * w];
        let start = h.iter().position(|&t| t != NO_TOKEN).unwrap_or(w);
        &h[start..]
    }
}

impl<D: Decoder + ?Sized> Decoder for Fused<'_, D> {
    type State = FusedState<D::State>;
    type Error = Error;

    fn vocab_size(&self) -> usize {
        self.decoder.vocab_size()
    }

    fn sos(&self) -> usize {
        self.decoder.sos()
    }

    fn eos(&self) -> usize {
        self.decoder.eos()
    }

    fn encoder_len(&self) -> usize {
        self.decoder.encoder_len()
    }

    /// The decoder's initial state and an empty history: the first step consumes
    /// `<sos>`, which starts every history.
    fn initial(&self) -> Result<Self::State> {
        self.check()?;
        Ok(FusedState {
            inner: self.decoder.initial().map_err(boxed)?,
            history: vec![NO_TOKEN; self.width()],
            rows: 1,
        })
    }

    fn step(&self, prev: &[usize], state: Self::State) -> Result<Step<Self::State>> {
        let n = prev.len();
        if n != state.rows {
            return Err(Error::Contract(format!(
                "fused step got {n} previous tokens for a state of {} rows",
                state.rows
            )));
        }
        let FusedState {
            inner,
            mut history,
            rows,
        } = state;
        let w = self.width();
        // Each hypothesis consumes its `prev`: shift it into the history window.
        if w > 0 {
            for (row, &p) in history.chunks_exact_mut(w).zip(prev) {
                row.rotate_left(1);
                row[w - 1] = p;
            }
        }
        let mut out = self.decoder.step(prev, inner).map_err(boxed)?;
        let v = self.vocab_size();
        if out.log_probs.len() != n * v {
            return Err(Error::Contract(format!(
                "step for {n} hypotheses returned {} log-probabilities, expected {n} x {v}",
                out.log_probs.len()
            )));
        }
        if self.weight != 0.0 {
            let mut lm = vec![0.0f32; v];
            for i in 0..n {
                self.lm
                    .log_probs_into(&history[i * w..(i + 1) * w], &mut lm);
                for (x, &l) in out.log_probs[i * v..(i + 1) * v].iter_mut().zip(&lm) {
                    *x += self.weight * l;
                }
            }
        }
        Ok(Step {
            log_probs: out.log_probs,
            state: FusedState {
                inner: out.state,
                history,
                rows,
            },
            attention_peaks: out.attention_peaks,
        })
    }

    fn select(&self, state: Self::State, rows: &[usize]) -> Result<Self::State> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= state.rows) {
            return Err(Error::Contract(format!(
                "select asked for row {bad} of a state of {} rows",
                state.rows
            )));
        }
        let w = self.width();
        let mut history = Vec::with_capacity(rows.len() * w);
        for &r in rows {
            history.extend_from_slice(&state.history[r * w..(r + 1) * w]);
        }
        Ok(FusedState {
            inner: self.decoder.select(state.inner, rows).map_err(boxed)?,
            history,
            rows: rows.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_by_state_equal_rows_by_history_to_the_bit() {
        let lines = [
            "the cat sat on the mat",
            "a cat and a dog ate the hat",
            "that is what the cat said",
        ];
        let mut by_history = vec![0.0f32; Vocab::librispeech().len()];
        let mut by_state = by_history.clone();
        for order in [1, 2, 3, 6] {
            let lm = CharLm::train(lines, &Vocab::librispeech(), order).unwrap();
            let v = lm.vocab().clone();
            // Seen text, unseen text and letters the model never met after these.
            for text in ["the cat sat", "zq xj the", "hat that what"] {
                let mut history = vec![Vocab::SOS];
                let mut state = lm.start();
                for t in v.encode(text) {
                    lm.log_probs_into(&history, &mut by_history);
                    lm.state_log_probs_into(state, &mut by_state);
                    let a: Vec<u32> = by_history.iter().map(|x| x.to_bits()).collect();
                    let b: Vec<u32> = by_state.iter().map(|x| x.to_bits()).collect();
                    assert_eq!(a, b, "order {order}, {text:?} after {}", history.len());
                    history.push(t);
                    state = lm.advance(state, t);
                }
            }
        }
    }
}
