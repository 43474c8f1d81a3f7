//! One-pass joint CTC/attention decoding.
//!
//! [`JointCtc`] wraps an attention [`Decoder`] so that every step scores a token `c`
//! after a hypothesis `g` by
//!
//! ```text
//! (1 - w) * ln p_att(c | g)  +  w * (ln psi(g + c) - ln psi(g))
//! ```
//!
//! where `psi(h)`, the CTC *prefix probability* of `h`, is the probability that the
//! labelling of the CTC head's output starts with `h` (Watanabe et al., "Hybrid
//! CTC/attention architecture for end-to-end speech recognition", 2017, Algorithm 2),
//! and `psi(g + <eos>)` is the probability that the labelling is exactly `g`. Summed
//! over a finished hypothesis, the CTC terms telescope to `ln P_ctc(g)`, so its
//! `log_prob` is `(1 - w) * ln P_att(g) + w * ln P_ctc(g)`: the re-ranking score of
//! attention hypotheses by CTC, but applied while searching, so hypotheses that run on
//! past the audio or skip part of it (which CTC gives next to no probability) leave
//! the beam at once instead of crowding it. CTC is never above 1, so every step's
//! value stays `<= 0`, as beam search's stopping rule requires.
//!
//! Per hypothesis the state carries the CTC forward variables `gamma_n(t)`,
//! `gamma_b(t)` (paths over frames `0..=t` that collapse to the hypothesis and end in
//! its last symbol, or in a blank) for each candidate extension, so that extending
//! by the token the search picks costs nothing more. Each step costs `O(T)` per
//! hypothesis and scored candidate; `candidates` limits CTC scoring to the best tokens
//! by attention (the others get probability 0), as ESPnet's CTC pre-beam does.

use crate::ctc::{check_input, log_add};
use crate::error::{Error, Result};
use crate::search::{boxed, Decoder, Step};

/// An attention [`Decoder`] whose steps add CTC prefix scores (see the
/// [module documentation](self)).
pub struct JointCtc<'a, D: Decoder + ?Sized> {
    decoder: &'a D,
    /// `[frames, V]` natural-log CTC probabilities (each row a log-softmax).
    log_probs: &'a [f32],
    frames: usize,
    blank: usize,
    weight: f64,
    candidates: usize,
}

/// The state of [`JointCtc`]: the wrapped decoder's, and per hypothesis the CTC
/// forward variables of its candidate extensions.
pub struct JointState<S> {
    inner: S,
    rows: Vec<Row>,
}

/// One hypothesis's CTC scores for each one-token extension scored at the last step:
/// `psi[c]` (natural log; `-inf` if not scored) and, at `gamma[slot[c] * 2T..]`, the
/// extension's `gamma_n` then `gamma_b`, `T` values each.
#[derive(Clone)]
struct Row {
    psi: Vec<f64>,
    slot: Vec<u32>,
    gamma: Vec<f64>,
}

/// `slot` of a token without forward variables.
const NO_SLOT: u32 = u32::MAX;

impl<'a, D: Decoder + ?Sized> JointCtc<'a, D> {
    /// `log_probs` `[frames, V]` row-major: the CTC head's log-softmax for the
    /// utterance `decoder` decodes, over the decoder's `V` symbols with `blank` among
    /// them; `weight` `w` in `(0, 1]`; `candidates` (at least 1): CTC scores `<eos>`
    /// and the `max(candidates - 1, 1)` best other tokens by attention per hypothesis
    /// and step.
    ///
    /// Errors: [`Error::Options`] for a weight or a candidate count out of range,
    /// [`Error::Input`] for `log_probs` of another shape, a NaN or `+inf` in them, or
    /// a `blank` that is the decoder's `<sos>` or `<eos>` or outside its vocabulary.
    pub fn new(
        decoder: &'a D,
        log_probs: &'a [f32],
        frames: usize,
        blank: usize,
        weight: f32,
        candidates: usize,
    ) -> Result<Self> {
        // Weight 0 is the wrapped decoder itself, without the cost.
        if !(weight > 0.0 && weight <= 1.0) {
            return Err(Error::Options(format!(
                "the CTC weight must lie in (0, 1], not {weight}"
            )));
        }
        if candidates == 0 {
            return Err(Error::Options("CTC candidates must be at least 1".into()));
        }
        check_input(log_probs, frames, decoder.vocab_size(), blank)?;
        if blank == decoder.sos() || blank == decoder.eos() {
            return Err(Error::Input(format!(
                "CTC blank {blank} must not be the decoder's <sos> or <eos>"
            )));
        }
        Ok(JointCtc {
            decoder,
            log_probs,
            frames,
            blank,
            weight: f64::from(weight),
            candidates,
        })
    }

    fn y(&self, t: usize, c: usize) -> f64 {
        f64::from(self.log_probs[t * self.decoder.vocab_size() + c])
    }

    /// The row of the empty hypothesis: only `<sos>` "scored", with `psi` 1, no path
    /// ending in a symbol, and every all-blank path.
    fn initial_row(&self) -> Row {
        let (v, t_len) = (self.decoder.vocab_size(), self.frames);
        let mut psi = vec![f64::NEG_INFINITY; v];
        let mut slot = vec![NO_SLOT; v];
        let mut gamma = vec![f64::NEG_INFINITY; 2 * t_len];
        let sos = self.decoder.sos();
        psi[sos] = 0.0;
        slot[sos] = 0;
        let mut acc = 0.0;
        for (t, g) in gamma[t_len..].iter_mut().enumerate() {
            acc += self.y(t, self.blank);
            *g = acc;
        }
        Row { psi, slot, gamma }
    }
}

impl<D: Decoder + ?Sized> Decoder for JointCtc<'_, D> {
    type State = JointState<D::State>;
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

    fn initial(&self) -> Result<Self::State> {
        Ok(JointState {
            inner: self.decoder.initial().map_err(boxed)?,
            rows: vec![self.initial_row()],
        })
    }

    fn step(&self, prev: &[usize], state: Self::State) -> Result<Step<Self::State>> {
        let v = self.decoder.vocab_size();
        let t_len = self.frames;
        let (sos, eos) = (self.decoder.sos(), self.decoder.eos());
        if state.rows.len() != prev.len() {
            return Err(Error::Input(format!(
                "{} tokens for a state of {} hypotheses",
                prev.len(),
                state.rows.len()
            )));
        }
        let out = self.decoder.step(prev, state.inner).map_err(boxed)?;
        if out.log_probs.len() != prev.len() * v {
            return Err(Error::Input(format!(
                "the decoder gave {} log-probabilities for {} hypotheses of {v} symbols",
                out.log_probs.len(),
                prev.len()
            )));
        }
        let w = self.weight;
        let mut log_probs = out.log_probs;
        let mut rows = Vec::with_capacity(prev.len());
        let mut order: Vec<usize> = Vec::with_capacity(v);
        for (i, (&last, old)) in prev.iter().zip(&state.rows).enumerate() {
            let at = &mut log_probs[i * v..(i + 1) * v];
            // The hypothesis `g` is the extension `last` of the row's own prefix.
            let slot = match old.slot.get(last) {
                Some(&s) if s != NO_SLOT => s as usize,
                // A token CTC did not score had probability 0, and so has every
                // extension of it (a search keeps one only when nothing else is left).
                _ => {
                    at.fill(f32::NEG_INFINITY);
                    rows.push(Row {
                        psi: vec![f64::NEG_INFINITY; v],
                        slot: vec![NO_SLOT; v],
                        gamma: Vec::new(),
                    });
                    continue;
                }
            };
            let psi_g = old.psi[last];
            let (gn_g, gb_g) = old.gamma[slot * 2 * t_len..(slot + 1) * 2 * t_len].split_at(t_len);
            // CTC scores the best tokens by attention, and always `<eos>`.
            order.clear();
            order.extend((0..v).filter(|&c| c != eos && c != sos && c != self.blank));
            order.sort_by(|&a, &b| at[b].total_cmp(&at[a]).then(a.cmp(&b)));
            order.truncate(self.candidates.saturating_sub(1).max(1).min(order.len()));
            let mut row = Row {
                psi: vec![f64::NEG_INFINITY; v],
                slot: vec![NO_SLOT; v],
                gamma: vec![f64::NEG_INFINITY; order.len() * 2 * t_len],
            };
            for (k, &c) in order.iter().enumerate() {
                row.slot[c] = k as u32;
                if t_len == 0 {
                    continue;
                }
                let g = &mut row.gamma[k * 2 * t_len..(k + 1) * 2 * t_len];
                let (gn, gb) = g.split_at_mut(t_len);
                // Before frame 0 only the empty prefix has probability (1).
                let phi0 = if last == sos { 0.0 } else { f64::NEG_INFINITY };
                gn[0] = phi0 + self.y(0, c);
                let mut psi = gn[0];
                for t in 1..t_len {
                    let phi = if c == last {
                        gb_g[t - 1]
                    } else {
                        log_add(gb_g[t - 1], gn_g[t - 1])
                    };
                    let yc = self.y(t, c);
                    gn[t] = log_add(gn[t - 1], phi) + yc;
                    gb[t] = log_add(gb[t - 1], gn[t - 1]) + self.y(t, self.blank);
                    psi = log_add(psi, phi + yc);
                }
                row.psi[c] = psi;
            }
            let psi_eos = match t_len {
                0 => {
                    if last == sos {
                        0.0
                    } else {
                        f64::NEG_INFINITY
                    }
                }
                _ => log_add(gn_g[t_len - 1], gb_g[t_len - 1]),
            };
            row.psi[eos] = psi_eos;
            for (c, x) in at.iter_mut().enumerate() {
                let ctc = (row.psi[c] - psi_g).min(0.0);
                let joint = if w == 1.0 {
                    ctc
                } else {
                    (1.0 - w) * f64::from(*x) + w * ctc
                };
                // Unscored tokens, and those CTC rules out, get probability 0.
                *x = if row.psi[c] == f64::NEG_INFINITY || psi_g == f64::NEG_INFINITY {
                    f32::NEG_INFINITY
                } else {
                    joint as f32
                };
            }
            rows.push(row);
        }
        Ok(Step {
            log_probs,
            state: JointState {
                inner: out.state,
                rows,
            },
            attention_peaks: out.attention_peaks,
        })
    }

    fn select(&self, state: Self::State, rows: &[usize]) -> Result<Self::State> {
        if let Some(&r) = rows.iter().find(|&&r| r >= state.rows.len()) {
            return Err(Error::Input(format!(
                "row {r} of a state of {} hypotheses",
                state.rows.len()
            )));
        }
        Ok(JointState {
            rows: rows.iter().map(|&r| state.rows[r].clone()).collect(),
            inner: self.decoder.select(state.inner, rows).map_err(boxed)?,
        })
    }
}
