//! Greedy and beam search over any autoregressive [`Decoder`].
//!
//! The model side implements [`Decoder`] for one utterance (it holds that utterance's
//! encoder output); the search asks it for one step at a time over a batch made of
//! every live hypothesis, so the model runs one batched product per output position
//! instead of one per hypothesis.
//!
//! Scores: a hypothesis's `log_prob` is the sum of the log-probabilities of its tokens
//! and, when finished, of its `<eos>`. The ranking `score` applies [`LengthNorm`] with
//! `L` = decoder steps it took (tokens, plus one for `<eos>` when finished).
//!
//! Beam search keeps, at each step, the `beam_size` best one-token extensions of the
//! live hypotheses (by `log_prob`; all of them have the same length, so every
//! [`LengthNorm`] would rank them alike). Extensions ending in `<eos>` are finished and
//! leave the beam; the others are the next step's live hypotheses. The search stops
//! when no hypothesis is live, when the length limit is reached, or when no live
//! hypothesis could still finish with a better score than the best finished one.
//! That last test is exact, not a heuristic, provided the decoder's log-probabilities
//! are `<= 0` (a log-softmax); it has to allow a live hypothesis to reach the length
//! limit, so with [`LengthNorm::Power`] or a positive [`LengthNorm::Bonus`] the search
//! usually runs to the limit, which `max_len_per_frame` keeps proportional to the
//! utterance.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An autoregressive model decoding one utterance, one step at a time, for a batch of
/// hypotheses.
///
/// Rows everywhere are hypotheses: row `i` of a state, of `prev` and of the step's
/// outputs belong to the same hypothesis.
pub trait Decoder {
    /// Decoder state of a batch of hypotheses (LSTM cells, attention context...).
    type State;
    /// What a failing step reports; surfaces as [`Error::Decoder`], except that a
    /// decoder whose error type is this crate's [`Error`] (a wrapper such as
    /// [`Fused`](crate::Fused)) has its errors passed through unchanged, so that the
    /// wrapped model's error still surfaces as one [`Error::Decoder`].
    type Error: std::error::Error + Send + Sync + 'static;

    /// Output symbols `V`, specials included: the width of each log-probability row.
    fn vocab_size(&self) -> usize;

    /// Token fed at the first step.
    fn sos(&self) -> usize;

    /// Token that finishes a hypothesis.
    fn eos(&self) -> usize;

    /// Frames `U` of the encoder output this decoder attends over. Attention peaks
    /// must be below it; [`SearchOptions::max_len_per_frame`] scales with it.
    fn encoder_len(&self) -> usize;

    /// State of a batch of one hypothesis before any token.
    fn initial(&self) -> std::result::Result<Self::State, Self::Error>;

    /// One step for `n = prev.len()` hypotheses: `prev` `[n]` holds each one's last
    /// token (`sos()` at the first step), `state` their states (`n` rows).
    /// Returns log-probabilities of the next token `[n, V]` and the states after
    /// consuming `prev` (`n` rows, same order).
    fn step(
        &self,
        prev: &[usize],
        state: Self::State,
    ) -> std::result::Result<Step<Self::State>, Self::Error>;

    /// The rows `rows` `[n']` of a state of `n` rows, in that order, repeats allowed:
    /// a state of `n'` rows. Beam search calls it after each step to follow the
    /// surviving hypotheses; it skips the call when `rows` is `0..n`.
    fn select(
        &self,
        state: Self::State,
        rows: &[usize],
    ) -> std::result::Result<Self::State, Self::Error>;
}

/// What one [`Decoder::step`] returns for `n` hypotheses.
#[derive(Debug, Clone, PartialEq)]
pub struct Step<S> {
    /// Log-probabilities `[n, V]` row-major; the stopping rule of beam search assumes
    /// they are `<= 0`. NaN and `+inf` are refused.
    pub log_probs: Vec<f32>,
    /// States after this step, `n` rows.
    pub state: S,
    /// Encoder frame each hypothesis's attention peaked at `[n]`, for timestamps; give
    /// `Some` at every step or at none.
    pub attention_peaks: Option<Vec<usize>>,
}

/// How a hypothesis's log-probability becomes its ranking score, with `L` the decoder
/// steps it took (tokens, plus one for `<eos>` when finished).
///
/// Serialised as `"none"`, `{"power": alpha}` or `{"bonus": per_step}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthNorm {
    /// `score = log_prob`; favours short hypotheses.
    #[default]
    None,
    /// `score = log_prob / L^alpha`, `alpha >= 0` (1 is the mean log-probability per step).
    Power(f32),
    /// `score = log_prob + bonus * L`.
    Bonus(f32),
}

impl LengthNorm {
    /// Ranking score of a hypothesis with summed log-probability `log_prob` that took
    /// `steps >= 1` decoder steps.
    pub fn score(&self, log_prob: f64, steps: usize) -> f64 {
        let l = steps as f64;
        match *self {
            LengthNorm::None => log_prob,
            LengthNorm::Power(alpha) => log_prob / l.powf(f64::from(alpha)),
            LengthNorm::Bonus(bonus) => log_prob + f64::from(bonus) * l,
        }
    }

    /// The best score any finished continuation of a live hypothesis (`log_prob` after
    /// `steps` steps) can reach within `max_steps`, given log-probabilities `<= 0`.
    fn bound(&self, log_prob: f64, steps: usize, max_steps: usize) -> f64 {
        if steps >= max_steps {
            return f64::NEG_INFINITY;
        }
        match *self {
            LengthNorm::None => log_prob,
            // log_prob only falls, and dividing a non-positive number by a larger
            // power raises it most at the longest allowed length.
            LengthNorm::Power(_) => self.score(log_prob.min(0.0), max_steps),
            LengthNorm::Bonus(bonus) if bonus >= 0.0 => self.score(log_prob, max_steps),
            LengthNorm::Bonus(_) => self.score(log_prob, steps + 1),
        }
    }
}

/// Search settings. Every field has a default, unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchOptions {
    /// Hypotheses kept per step (beam search only); 1 is greedy search.
    pub beam_size: usize,
    /// Most decoder steps per hypothesis, `<eos>` included, so a hypothesis has at
    /// most this many tokens.
    pub max_len: usize,
    /// If set, also at most `ceil(max_len_per_frame * U)` steps for `U` encoder
    /// frames (at least 1). The default 3.0 is about 37 characters per second for
    /// the default 80 ms encoder frames, twice a fast reader's rate.
    pub max_len_per_frame: Option<f32>,
    /// Score used to rank hypotheses of different lengths.
    pub length_norm: LengthNorm,
    /// Beam search only: a hypothesis may end only where `<eos>`'s log-probability is
    /// within this margin (nats) of the best other token's, so that a wide beam does
    /// not fill with hypotheses that stopped early on an unlikely `<eos>`. Greedy
    /// search ends only on an `<eos>` that is the best token anyway, so a beam of 1
    /// still equals it.
    pub eos_threshold: Option<f32>,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            beam_size: 8,
            max_len: 1000,
            max_len_per_frame: Some(3.0),
            length_norm: LengthNorm::None,
            eos_threshold: None,
        }
    }
}

impl SearchOptions {
    /// Checks every field's range; [`Error::Options`] names the first one out of it.
    pub fn validate(&self) -> Result<()> {
        if self.beam_size == 0 {
            return Err(Error::Options("beam_size must be at least 1".into()));
        }
        if self.max_len == 0 {
            return Err(Error::Options("max_len must be at least 1".into()));
        }
        if let Some(r) = self.max_len_per_frame {
            if !(r.is_finite() && r > 0.0) {
                return Err(Error::Options(format!(
                    "max_len_per_frame must be positive and finite, not {r}"
                )));
            }
        }
        if let Some(t) = self.eos_threshold {
            if !(t.is_finite() && t >= 0.0) {
                return Err(Error::Options(format!(
                    "eos_threshold must be non-negative and finite, not {t}"
                )));
            }
        }
        match self.length_norm {
            LengthNorm::Power(a) if !(a.is_finite() && a >= 0.0) => Err(Error::Options(format!(
                "length_norm power must be non-negative and finite, not {a}"
            ))),
            LengthNorm::Bonus(b) if !b.is_finite() => Err(Error::Options(format!(
                "length_norm bonus must be finite, not {b}"
            ))),
            _ => Ok(()),
        }
    }

    /// Most decoder steps for an utterance of `encoder_len` encoder frames: `max_len`,
    /// lowered by `max_len_per_frame` if set, and never below 1.
    pub fn max_steps(&self, encoder_len: usize) -> usize {
        let relative = self.max_len_per_frame.map_or(usize::MAX, |r| {
            // A float-to-int `as` saturates, so absurd products cannot wrap.
            (f64::from(r) * encoder_len as f64).ceil() as usize
        });
        self.max_len.min(relative).max(1)
    }
}

/// One decoded hypothesis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hypothesis {
    /// Token ids `[n]`, without `<sos>` and `<eos>`.
    pub tokens: Vec<usize>,
    /// Encoder frame the attention peaked at when each token was emitted `[n]`, if the
    /// decoder reports peaks; frame `u` starts at `u * frame_shift * reduction`.
    pub attention_peaks: Option<Vec<usize>>,
    /// Sum of log-probabilities of the tokens, and of `<eos>` when finished.
    pub log_prob: f64,
    /// What ranked it: [`LengthNorm::score`] of `log_prob`.
    pub score: f64,
    /// Ended with `<eos>`; `false` means it was cut at the length limit.
    pub finished: bool,
}

/// Greedy search: the most probable next token at each step, until `<eos>` or
/// [`SearchOptions::max_steps`] steps. `beam_size` is ignored; `length_norm` sets only
/// the reported score. Ties go to the lower token id, as in [`beam_search`], so that a
/// beam of 1 gives exactly this result.
pub fn greedy<D: Decoder + ?Sized>(decoder: &D, options: &SearchOptions) -> Result<Hypothesis> {
    options.validate()?;
    let v = check_decoder(decoder)?;
    let max_steps = options.max_steps(decoder.encoder_len());
    let eos = decoder.eos();
    let mut state = decoder.initial().map_err(boxed)?;
    let mut prev = decoder.sos();
    let mut tokens = Vec::new();
    let mut peaks = Vec::new();
    let mut peaks_given = None;
    let mut log_prob = 0.0f64;
    let mut finished = false;
    for _ in 0..max_steps {
        let out = decoder.step(&[prev], state).map_err(boxed)?;
        check_step(&out, 1, v, decoder.encoder_len(), &mut peaks_given)?;
        // The same sums and the same first-wins tie rule as `keep_best`, so that a beam
        // of one cannot drift from this path by rounding or by ties.
        let mut token = 0;
        let mut best = f64::NEG_INFINITY;
        for (t, &x) in out.log_probs.iter().enumerate() {
            let total = log_prob + f64::from(x);
            if t == 0 || total.total_cmp(&best) == Ordering::Greater {
                (token, best) = (t, total);
            }
        }
        log_prob = best;
        if token == eos {
            finished = true;
            break;
        }
        tokens.push(token);
        if let Some(p) = &out.attention_peaks {
            peaks.push(p[0]);
        }
        prev = token;
        state = out.state;
    }
    let steps = tokens.len() + usize::from(finished);
    Ok(Hypothesis {
        score: options.length_norm.score(log_prob, steps),
        tokens,
        attention_peaks: peaks_given.unwrap_or(false).then_some(peaks),
        log_prob,
        finished,
    })
}

/// Beam search as the module documentation describes, with `beam_size` hypotheses and
/// at most [`SearchOptions::max_steps`] steps: an n-best list `[1..=beam_size]`, best
/// score first, all distinct. If any hypothesis finished, the list holds only finished
/// ones; otherwise it holds the live hypotheses cut at the length limit.
pub fn beam_search<D: Decoder + ?Sized>(
    decoder: &D,
    options: &SearchOptions,
) -> Result<Vec<Hypothesis>> {
    options.validate()?;
    let v = check_decoder(decoder)?;
    let k = options.beam_size;
    let norm = options.length_norm;
    let max_steps = options.max_steps(decoder.encoder_len());
    let eos = decoder.eos();

    // Hypotheses are paths in a tree of emitted tokens; storing back-pointers keeps
    // each step's work O(k) instead of copying every prefix.
    let mut tree: Vec<Node> = Vec::new();
    let mut live = vec![Live {
        node: None,
        log_prob: 0.0,
        last: decoder.sos(),
    }];
    let mut finished: Vec<Finished> = Vec::new();
    let mut state = decoder.initial().map_err(boxed)?;
    let mut prev = vec![decoder.sos()];
    let mut peaks_given = None;
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut steps = 0;
    while steps < max_steps {
        steps += 1;
        let out = decoder.step(&prev, state).map_err(boxed)?;
        check_step(&out, live.len(), v, decoder.encoder_len(), &mut peaks_given)?;

        candidates.clear();
        for (parent, (h, row)) in live.iter().zip(out.log_probs.chunks_exact(v)).enumerate() {
            let eos_allowed = options.eos_threshold.is_none_or(|margin| {
                let best_other = row
                    .iter()
                    .enumerate()
                    .filter(|&(t, _)| t != eos)
                    .map(|(_, &x)| x)
                    .fold(f32::NEG_INFINITY, f32::max);
                row[eos] >= best_other - margin
            });
            candidates.extend(
                row.iter()
                    .enumerate()
                    .filter(|&(token, _)| eos_allowed || token != eos)
                    .map(|(token, &x)| Candidate {
                        log_prob: h.log_prob + f64::from(x),
                        parent,
                        token,
                    }),
            );
        }
        // An extension of probability 0 can never become anything: unless nothing
        // else is left, it takes no place in the beam.
        if candidates.iter().any(|c| c.log_prob > f64::NEG_INFINITY) {
            candidates.retain(|c| c.log_prob > f64::NEG_INFINITY);
        }
        keep_best(&mut candidates, k);

        let mut next = Vec::with_capacity(candidates.len());
        let mut rows = Vec::with_capacity(candidates.len());
        let mut new_finished = false;
        for c in &candidates {
            let parent = &live[c.parent];
            if c.token == eos {
                finished.push(Finished {
                    node: parent.node,
                    log_prob: c.log_prob,
                    score: norm.score(c.log_prob, steps),
                });
                new_finished = true;
            } else {
                tree.push(Node {
                    parent: parent.node,
                    token: c.token,
                    peak: out.attention_peaks.as_ref().map(|p| p[c.parent]),
                });
                next.push(Live {
                    node: Some(tree.len() - 1),
                    log_prob: c.log_prob,
                    last: c.token,
                });
                rows.push(c.parent);
            }
        }
        if new_finished {
            // Stable, so equal scores keep the order they finished in.
            finished.sort_by(|a, b| b.score.total_cmp(&a.score));
            finished.truncate(k);
        }
        live = next;
        if live.is_empty() || steps == max_steps {
            break;
        }
        if let Some(best) = finished.first() {
            if live
                .iter()
                .all(|h| best.score >= norm.bound(h.log_prob, steps, max_steps))
            {
                break;
            }
        }
        let identity = rows.len() == prev.len() && rows.iter().enumerate().all(|(i, &r)| i == r);
        state = if identity {
            out.state
        } else {
            decoder.select(out.state, &rows).map_err(boxed)?
        };
        prev.clear();
        prev.extend(live.iter().map(|h| h.last));
    }

    let peaks = peaks_given.unwrap_or(false);
    if finished.is_empty() {
        // Every live hypothesis took the same number of steps, and `keep_best` left
        // them sorted by log_prob, hence by score too.
        return Ok(live
            .iter()
            .map(|h| {
                hypothesis(
                    &tree,
                    h.node,
                    peaks,
                    h.log_prob,
                    norm.score(h.log_prob, steps),
                    false,
                )
            })
            .collect());
    }
    Ok(finished
        .iter()
        .map(|f| hypothesis(&tree, f.node, peaks, f.log_prob, f.score, true))
        .collect())
}

/// Teacher-forced scoring: for each token sequence `seqs[i]` `[n_i]` (without `<sos>`
/// and `<eos>`), the natural-log probability the decoder gives it followed by `<eos>`,
/// summed token by token as [`beam_search`] sums them (so a finished hypothesis's
/// `log_prob` is reproduced to the bit when the decoder's rows do not depend on the
/// batch they are in; a model whose one-row steps take another product path agrees
/// to rounding). Returns `[seqs.len()]`, in the input order. A token outside the
/// vocabulary is refused; `<sos>` or `<eos>` inside a sequence is scored as any token
/// (beam search can emit `<sos>`, and a CTC search any symbol).
///
/// Sequences sharing a prefix share its steps: the sequences are laid in a prefix tree
/// and each distinct prefix is stepped once, all prefixes of one length in one batched
/// step, so the work is the number of distinct prefixes rather than the sum of the
/// lengths (an n-best list from a beam search differs in a few places: its 64 best
/// share about four fifths of their prefixes). Used to rescore another search's n-best
/// list with an attention decoder.
pub fn score_sequences<D: Decoder + ?Sized>(decoder: &D, seqs: &[Vec<usize>]) -> Result<Vec<f64>> {
    let v = check_decoder(decoder)?;
    if let Some((i, &t)) = seqs
        .iter()
        .enumerate()
        .find_map(|(i, s)| s.iter().find(|&&t| t >= v).map(|t| (i, t)))
    {
        return Err(Error::Contract(format!(
            "sequence {i} holds token {t}, outside the decoder's {v} symbols"
        )));
    }
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let (sos, eos) = (decoder.sos(), decoder.eos());
    // Prefix tree: node 0 is the empty prefix; every other node is its parent's prefix
    // and one more token. `ends[i]` is the node of the whole of `seqs[i]`.
    let mut token = vec![sos];
    let mut children: Vec<Vec<(usize, usize)>> = vec![Vec::new()];
    let mut ends = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let mut node = 0;
        for &t in seq {
            node = match children[node].iter().find(|&&(ct, _)| ct == t) {
                Some(&(_, child)) => child,
                None => {
                    let child = token.len();
                    token.push(t);
                    children.push(Vec::new());
                    children[node].push((t, child));
                    child
                }
            };
        }
        ends.push(node);
    }
    // Log-probability of each node's prefix, summed in the order beam search sums it.
    let mut prefix_score = vec![0.0f64; token.len()];
    let mut end_score = vec![None::<f64>; token.len()];
    for &e in &ends {
        end_score[e] = Some(0.0);
    }
    let mut level = vec![0usize];
    let mut state = decoder.initial().map_err(boxed)?;
    let mut peaks_given = None;
    let mut prev = Vec::new();
    loop {
        prev.clear();
        prev.extend(level.iter().map(|&n| token[n]));
        let out = decoder.step(&prev, state).map_err(boxed)?;
        check_step(
            &out,
            level.len(),
            v,
            decoder.encoder_len(),
            &mut peaks_given,
        )?;
        let mut next = Vec::new();
        let mut rows = Vec::new();
        for (r, (&node, row)) in level.iter().zip(out.log_probs.chunks_exact(v)).enumerate() {
            if let Some(e) = &mut end_score[node] {
                *e = prefix_score[node] + f64::from(row[eos]);
            }
            for &(t, child) in &children[node] {
                prefix_score[child] = prefix_score[node] + f64::from(row[t]);
                next.push(child);
                rows.push(r);
            }
        }
        if next.is_empty() {
            break;
        }
        state = if rows.iter().copied().eq(0..level.len()) {
            out.state
        } else {
            decoder.select(out.state, &rows).map_err(boxed)?
        };
        level = next;
    }
    Ok(ends
        .iter()
        .map(|&e| end_score[e].expect("every end node is stepped"))
        .collect())
}

struct Node {
    parent: Option<usize>,
    token: usize,
    peak: Option<usize>,
}

struct Live {
    /// Last emitted token's node; `None` before any token.
    node: Option<usize>,
    log_prob: f64,
    last: usize,
}

struct Finished {
    /// Node of the last token before `<eos>`.
    node: Option<usize>,
    log_prob: f64,
    score: f64,
}

struct Candidate {
    log_prob: f64,
    parent: usize,
    token: usize,
}

/// Best first; equal log-probabilities go to the earlier parent, then the lower token,
/// which is what makes a beam of 1 pick exactly what [`greedy`] picks.
fn candidate_order(a: &Candidate, b: &Candidate) -> Ordering {
    b.log_prob
        .total_cmp(&a.log_prob)
        .then(a.parent.cmp(&b.parent))
        .then(a.token.cmp(&b.token))
}

/// Leaves the `k` best candidates, sorted best first.
fn keep_best(candidates: &mut Vec<Candidate>, k: usize) {
    if candidates.len() > k {
        candidates.select_nth_unstable_by(k - 1, candidate_order);
        candidates.truncate(k);
    }
    candidates.sort_unstable_by(candidate_order);
}

fn hypothesis(
    tree: &[Node],
    mut node: Option<usize>,
    peaks: bool,
    log_prob: f64,
    score: f64,
    finished: bool,
) -> Hypothesis {
    let mut tokens = Vec::new();
    let mut at = Vec::new();
    while let Some(i) = node {
        tokens.push(tree[i].token);
        if let Some(p) = tree[i].peak {
            at.push(p);
        }
        node = tree[i].parent;
    }
    tokens.reverse();
    at.reverse();
    Hypothesis {
        tokens,
        attention_peaks: peaks.then_some(at),
        log_prob,
        score,
        finished,
    }
}

/// A wrapped decoder's error as this crate's, passed through if it already is one.
pub(crate) fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> Error {
    let e: Box<dyn std::error::Error + Send + Sync + 'static> = Box::new(e);
    match e.downcast::<Error>() {
        Ok(own) => *own,
        Err(other) => Error::Decoder(other),
    }
}

/// The vocabulary size, after checking that `<sos>` and `<eos>` fit in it.
fn check_decoder<D: Decoder + ?Sized>(decoder: &D) -> Result<usize> {
    let v = decoder.vocab_size();
    let (sos, eos) = (decoder.sos(), decoder.eos());
    if sos >= v || eos >= v {
        return Err(Error::Contract(format!(
            "sos {sos} and eos {eos} must be below vocab_size {v}"
        )));
    }
    Ok(v)
}

/// Checks one step's output for `n` hypotheses; `peaks_given` remembers whether the
/// first step reported attention peaks, which every later step must match.
fn check_step<S>(
    out: &Step<S>,
    n: usize,
    v: usize,
    encoder_len: usize,
    peaks_given: &mut Option<bool>,
) -> Result<()> {
    if out.log_probs.len() != n * v {
        return Err(Error::Contract(format!(
            "step for {n} hypotheses returned {} log-probabilities, expected {n} x {v}",
            out.log_probs.len()
        )));
    }
    if let Some(i) = out
        .log_probs
        .iter()
        .position(|x| x.is_nan() || *x == f32::INFINITY)
    {
        return Err(Error::Contract(format!(
            "log-probability of token {} for hypothesis {} is {}",
            i % v,
            i / v,
            out.log_probs[i]
        )));
    }
    let given = out.attention_peaks.is_some();
    if *peaks_given.get_or_insert(given) != given {
        return Err(Error::Contract(
            "attention peaks were reported at some steps but not at others".into(),
        ));
    }
    if let Some(p) = &out.attention_peaks {
        if p.len() != n {
            return Err(Error::Contract(format!(
                "step for {n} hypotheses returned {} attention peaks",
                p.len()
            )));
        }
        if let Some(&bad) = p.iter().find(|&&u| u >= encoder_len) {
            return Err(Error::Contract(format!(
                "attention peak at frame {bad}, but the encoder output has {encoder_len} frames"
            )));
        }
    }
    Ok(())
}
