//! CTC prefix beam search, optionally fused with a [`CharLm`].
//!
//! The input is a CTC head's output for one utterance: `[T, V]` row-major
//! log-probabilities, one log-softmax row per frame, with one symbol the blank. A
//! *labelling* (prefix) is what a frame path collapses to: repeats merged, then blanks
//! dropped, so `a a _ a b` gives `aab`; its probability is the sum over every path that
//! collapses to it.
//!
//! [`ctc_beam_search`] is the prefix beam search of Graves (2012, section 7.5) and
//! Hannun et al. ("First-pass large vocabulary continuous speech recognition using
//! bi-directional recurrent DNNs", 2014). Each kept prefix `l` carries `p_b(l)` and
//! `p_nb(l)`, the probability of the paths over the frames so far that collapse to `l`
//! and end in a blank or in `l`'s last symbol. At frame `t`, with `y` that frame's
//! probabilities, every kept prefix goes on by:
//!
//! - a blank: `p_b(l) += (p_b(l) + p_nb(l)) * y[blank]`;
//! - its last symbol `c` repeated: `p_nb(l) += p_nb(l) * y[c]` (the repeat merges);
//! - any other symbol `c`: `p_nb(l + c) += (p_b(l) + p_nb(l)) * y[c]`, and its last
//!   symbol `c` after a blank: `p_nb(l + c) += p_b(l) * y[c]` (only a blank keeps two
//!   equal symbols apart).
//!
//! An extension `l + c` that is itself a kept prefix merges with it, so every prefix
//! appears once. Of all prefixes reached, the `beam_size` best by
//!
//! ```text
//! score(l) = ln(p_b(l) + p_nb(l)) + lm_weight * ln P_lm(l) + insertion_bonus * |l|
//!            + word_lm_weight * ln P_words(l) + word_bonus * words(l) - oov_penalty * oov(l)
//! ```
//!
//! survive the frame, where `ln P_lm(l)` is the sum of the character model's
//! log-probabilities of `l`'s symbols, each given `<sos>` and the symbols before it.
//! The last three terms count only with [`Words`]: `ln P_words(l)` sums a [`WordLm`]'s
//! log-probabilities of the words `l` has finished (ended by a space), each given the
//! words before it, `words(l)` counts them, and `oov(l)` counts the words outside the
//! list. After the last frame, each surviving prefix's final score adds
//! `lm_weight * ln p_lm(<eos> | l)`, and with [`Words`] its unfinished last word
//! (scored, and charged if outside the list) and the word model's `<eos>`; the
//! n-best list is the survivors sorted by that. All sums are kept as natural logs in
//! `f64`.
//!
//! Probabilities are exact sums over paths only as long as nothing is pruned: a
//! prefix's `p_b`, `p_nb` leave out the paths through prefixes dropped from the beam
//! and through emissions skipped by [`CtcSearchOptions::prune`], so with a beam holding
//! every prefix and no pruning, `ctc_log_prob` is the labelling's exact probability.
//!
//! ## Cost
//!
//! Prefixes are nodes of a trie (parent pointer and symbol), created only for the
//! prefixes that survive a frame, so no prefix is ever copied; the model's distribution
//! after a prefix is computed once per model state (the longest context ending the
//! prefix, which many prefixes share), the first time a prefix in that state is
//! extended, and its `ln P_lm` is its parent's plus one entry of the parent's
//! distribution. Word-model scores are remembered by `(word state, word)`, and a new
//! candidate whose score, before its lexicon walk and word score (which can only
//! lower it), already misses the cut is dropped without them. Per frame the
//! work is `O(beam_size * S)` for `S` symbols above the pruning threshold (at most
//! `V - 1`), plus picking the best `beam_size` of the candidates.

use std::cmp::Ordering;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lexicon::{Lexicon, ROOT};
use crate::lm::{CharLm, KeyHasher};
use crate::vocab::Vocab;
use crate::word_lm::WordLm;

/// Words for [`ctc_beam_search_with`] to hold hypotheses to: a bare list, or a word
/// language model (which brings its own list).
#[derive(Debug, Clone, Copy)]
pub enum Words<'a> {
    /// Every word outside it costs `oov_penalty`.
    List(&'a Lexicon),
    /// As `List` with the model's words, and every finished word scores
    /// `word_lm_weight * ln p(word | words before)` and `word_bonus`.
    Lm(&'a WordLm),
}

impl<'a> Words<'a> {
    fn lexicon(self) -> &'a Lexicon {
        match self {
            Words::List(l) => l,
            Words::Lm(w) => w.lexicon(),
        }
    }

    fn vocab_size(self) -> usize {
        match self {
            Words::List(l) => l.vocab_size(),
            Words::Lm(w) => w.vocab_size(),
        }
    }
}

/// Settings of [`ctc_beam_search`]. Every field has a default, unknown fields are
/// refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CtcSearchOptions {
    /// Prefixes kept after each frame, and the most hypotheses returned. 1 keeps only
    /// the best-scoring prefix at each frame (still merging the paths into it, so it is
    /// not quite best-path decoding).
    pub beam_size: usize,
    /// Weight of the language model's log-probability in the score, finite and
    /// `>= 0`; 0 (or no model) is pure CTC. With a model and weight 0 the model's
    /// log-probability is still reported, but it does not rank anything.
    pub lm_weight: f32,
    /// Added to the score per emitted symbol (finite); a positive bonus offsets the
    /// language model's cost per symbol, which otherwise favours short outputs.
    pub insertion_bonus: f32,
    /// Per-frame threshold on the natural-log probability of a symbol: at each frame,
    /// only the symbols at or above it extend a prefix by a new symbol. The blank and
    /// the repetition of a prefix's last symbol, which extend no prefix, are always
    /// followed. `None` tries every symbol at every frame. The default `-12`
    /// (`p` about `6e-6`) skips the symbols a trained model all but rules out, which is
    /// most of them on most frames, and never the most probable symbol of a frame
    /// unless the vocabulary has more than `e^12` (about 160 000) symbols. Finite and
    /// `<= 0` (a positive threshold would rule out every symbol). Symbols of
    /// probability 0 (`-inf`) are never tried.
    pub prune: Option<f32>,
    /// With [`Words`] (a [`Lexicon`] or a [`WordLm`]'s words): subtracted from the
    /// score once for every word outside them (finite and `>= 0`; see
    /// [`crate::lexicon`]). Without them it does nothing.
    pub oov_penalty: f32,
    /// With a [`WordLm`]: weight of its log-probabilities (finite and `>= 0`).
    pub word_lm_weight: f32,
    /// With a [`WordLm`]: added per finished word (finite), which offsets the word
    /// model's cost per word as `insertion_bonus` does the character model's.
    pub word_bonus: f32,
}

impl Default for CtcSearchOptions {
    fn default() -> Self {
        CtcSearchOptions {
            beam_size: 16,
            lm_weight: 0.0,
            insertion_bonus: 0.0,
            prune: Some(-12.0),
            oov_penalty: 0.0,
            word_lm_weight: 0.0,
            word_bonus: 0.0,
        }
    }
}

impl CtcSearchOptions {
    /// Checks every field's range; [`Error::Options`] names the first one out of it.
    pub fn validate(&self) -> Result<()> {
        if self.beam_size == 0 {
            return Err(Error::Options("beam_size must be at least 1".into()));
        }
        if !(self.lm_weight.is_finite() && self.lm_weight >= 0.0) {
            return Err(Error::Options(format!(
                "lm_weight must be finite and >= 0, not {}",
                self.lm_weight
            )));
        }
        if !self.insertion_bonus.is_finite() {
            return Err(Error::Options(format!(
                "insertion_bonus must be finite, not {}",
                self.insertion_bonus
            )));
        }
        if !(self.word_lm_weight.is_finite() && self.word_lm_weight >= 0.0) {
            return Err(Error::Options(format!(
                "word_lm_weight must be finite and >= 0, not {}",
                self.word_lm_weight
            )));
        }
        if !self.word_bonus.is_finite() {
            return Err(Error::Options(format!(
                "word_bonus must be finite, not {}",
                self.word_bonus
            )));
        }
        if !(self.oov_penalty.is_finite() && self.oov_penalty >= 0.0) {
            return Err(Error::Options(format!(
                "oov_penalty must be finite and >= 0, not {}",
                self.oov_penalty
            )));
        }
        if let Some(p) = self.prune {
            if !(p.is_finite() && p <= 0.0) {
                return Err(Error::Options(format!(
                    "prune must be finite and <= 0 (or null for no pruning), not {p}"
                )));
            }
        }
        Ok(())
    }
}

/// One labelling found by [`ctc_beam_search`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CtcHypothesis {
    /// Symbol ids `[n]`, without blanks.
    pub tokens: Vec<usize>,
    /// For each token `[n]`, the frame at which it starts on the most probable single
    /// path (alignment) of the labelling among the paths the search followed; strictly
    /// increasing.
    pub frames: Vec<usize>,
    /// `ln(p_b + p_nb)`: natural log of the labelling's probability summed over the
    /// paths the search followed (exact without pruning, see the
    /// [module documentation](self)).
    pub ctc_log_prob: f64,
    /// Natural log of the language model's probability of `tokens` followed by
    /// `<eos>`, each symbol given `<sos>` and the symbols before it; 0 without a model.
    pub lm_log_prob: f64,
    /// Words outside the lexicon, when searched with one (0 without).
    #[serde(default)]
    pub oov_words: usize,
    /// With a [`WordLm`]: natural log of its probability of the words followed by
    /// `<eos>` (unknown words as `<unk>`); 0 without.
    #[serde(default)]
    pub word_lm_log_prob: f64,
    /// With a [`WordLm`]: the words scored (0 without).
    #[serde(default)]
    pub words: usize,
    /// What ranked it: `ctc_log_prob + lm_weight * lm_log_prob + insertion_bonus *
    /// n + word_lm_weight * word_lm_log_prob + word_bonus * words - oov_penalty *
    /// oov_words` (a model's term is 0 when its weight is 0).
    pub score: f64,
}

/// CTC prefix beam search as the [module documentation](self) describes, over
/// `log_probs` `[frames, vocab_size]` row-major: each row the natural-log probabilities
/// (a log-softmax) of the symbols at one frame, `blank` the blank's id. With `lm`, its
/// vocabulary must have `vocab_size` symbols, whose ids are the CTC head's (the blank
/// is never scored by it).
///
/// Returns an n-best list of at most `beam_size` distinct labellings, best score first
/// (equal scores in the order the search kept them). Labellings of probability 0 are
/// left out, unless every labelling has probability 0 (a frame whose row is all
/// `-inf`): then the list holds one of them, with score `-inf`. No frames give the empty
/// labelling with probability 1.
///
/// Errors: [`Error::Options`] for options out of range, [`Error::Input`] for a
/// `log_probs` length other than `frames * vocab_size`, a NaN or `+inf` in it, or a
/// `blank` outside the vocabulary, and [`Error::Lm`] for a model over another number of
/// symbols.
pub fn ctc_beam_search(
    log_probs: &[f32],
    frames: usize,
    vocab_size: usize,
    blank: usize,
    lm: Option<&CharLm>,
    options: &CtcSearchOptions,
) -> Result<Vec<CtcHypothesis>> {
    ctc_beam_search_with(log_probs, frames, vocab_size, blank, lm, None, options)
}

/// [`ctc_beam_search`] with [`Words`] as well: every word a hypothesis spells outside
/// the list costs `options.oov_penalty` (see [`crate::lexicon`]), and with a
/// [`WordLm`] every word it finishes is scored by it. Merging equal prefixes stays
/// exact: both depend on nothing but the prefix. [`Error::Lm`] for words spelled in
/// another number of symbols.
pub fn ctc_beam_search_with(
    log_probs: &[f32],
    frames: usize,
    vocab_size: usize,
    blank: usize,
    lm: Option<&CharLm>,
    words: Option<Words<'_>>,
    options: &CtcSearchOptions,
) -> Result<Vec<CtcHypothesis>> {
    options.validate()?;
    check_input(log_probs, frames, vocab_size, blank)?;
    if let Some(w) = words {
        if w.vocab_size() != vocab_size {
            return Err(Error::Lm(format!(
                "cannot use words spelled in {} symbols with CTC output over {vocab_size}",
                w.vocab_size()
            )));
        }
    }
    let lexicon = words.map(|w| w.lexicon());
    let word_lm = match words {
        Some(Words::Lm(w)) => Some(w),
        _ => None,
    };
    // Where a word ends: the lexicon's space.
    let space = lexicon.and_then(Lexicon::space);
    if let Some(lm) = lm {
        let n = lm.vocab().len();
        if n != vocab_size {
            return Err(Error::Lm(format!(
                "cannot fuse CTC output over {vocab_size} symbols with a language model of {n}"
            )));
        }
    }
    let v = vocab_size;
    let k = options.beam_size;
    let scorer = Scorer {
        lm_weight: if lm.is_some() {
            f64::from(options.lm_weight)
        } else {
            0.0
        },
        bonus: f64::from(options.insertion_bonus),
        oov_penalty: if lexicon.is_some() {
            f64::from(options.oov_penalty)
        } else {
            0.0
        },
        word_weight: if word_lm.is_some() {
            f64::from(options.word_lm_weight)
        } else {
            0.0
        },
        word_bonus: if word_lm.is_some() {
            f64::from(options.word_bonus)
        } else {
            0.0
        },
    };
    let fusing = scorer.lm_weight > 0.0;
    let prune = options.prune;

    let mut trie = Trie::new();
    let mut cache = LmCache::new(v);
    let mut records: Vec<Record> = Vec::new();
    let mut beam = vec![Entry::root(word_lm.map_or(0, |w| w.start()))];
    let mut next: Vec<Entry> = Vec::new();
    // The beam entries extending beam entry `i` by one symbol: a linked list from
    // `first_child[i]` through `next_sibling`.
    let mut first_child: Vec<usize> = Vec::new();
    let mut next_sibling: Vec<usize> = Vec::new();
    let mut symbols: Vec<usize> = Vec::new();
    let mut ranked: Vec<(f64, usize)> = Vec::new();
    let mut word_memo = StateMap::default();

    for (t, y) in log_probs.chunks_exact(v).enumerate() {
        let y_blank = f64::from(y[blank]);
        symbols.clear();
        symbols.extend((0..v).filter(|&c| {
            c != blank && y[c] > f32::NEG_INFINITY && prune.is_none_or(|p| y[c] >= p)
        }));

        first_child.clear();
        first_child.resize(beam.len(), NONE);
        next_sibling.clear();
        next_sibling.resize(beam.len(), NONE);
        for (i, e) in beam.iter().enumerate() {
            trie.beam_pos[e.node] = i;
        }
        for (j, e) in beam.iter().enumerate() {
            if e.parent != NONE {
                let i = trie.beam_pos[e.parent];
                if i != NONE {
                    next_sibling[j] = first_child[i];
                    first_child[i] = j;
                }
            }
        }
        for e in &beam {
            trie.beam_pos[e.node] = NONE;
        }

        // Staying on the same prefix: entry `i` of `next` is entry `i` of `beam`.
        next.clear();
        next.extend(beam.iter().map(|e| {
            let (best, rec) = e.best_path();
            let mut n = *e;
            n.pb = log_add(e.pb, e.pnb) + y_blank;
            n.vb = best + y_blank;
            n.rec_b = rec;
            if e.token != NO_TOKEN {
                let y_last = f64::from(y[e.token]);
                n.pnb = e.pnb + y_last;
                n.vnb = e.vnb + y_last;
            }
            n
        }));

        // Extending by one symbol. With `k` staying prefixes, a new one scoring no better
        // than the worst of them cannot make the cut (merges only raise them, and ties
        // go to the earlier candidate), so it is not even listed.
        let floor = if next.len() >= k {
            next.iter()
                .map(|n| scorer.prefix(n))
                .fold(f64::INFINITY, f64::min)
        } else {
            f64::NEG_INFINITY
        };
        if !symbols.is_empty() {
            for (i, e) in beam.iter().enumerate() {
                let all = log_add(e.pb, e.pnb);
                let (best, best_rec) = e.best_path();
                let row = lm.map(|lm| cache.row(lm, &trie, e.node));
                for &c in &symbols {
                    let (from, from_v, from_rec) = if c == e.token {
                        (e.pb, e.vb, e.rec_b)
                    } else {
                        (all, best, best_rec)
                    };
                    if from == f64::NEG_INFINITY {
                        continue;
                    }
                    let lm_c = row.map_or(0.0, |r| cache.rows[r + c]);
                    if fusing && lm_c == f32::NEG_INFINITY {
                        continue;
                    }
                    let y_c = f64::from(y[c]);
                    let mut j = first_child[i];
                    while j != NONE && beam[j].token != c {
                        j = next_sibling[j];
                    }
                    let slot = if j != NONE {
                        j
                    } else {
                        let lm_new = e.lm + f64::from(lm_c);
                        // Walking the lexicon and scoring a finished word can only lower
                        // the score (more unknown words, a log-probability added), bar
                        // the word bonus a space earns: scored without them, a candidate
                        // that still misses the cut is dropped before that work. Same
                        // formula, so rounding cannot put the bound under the score.
                        if floor > f64::NEG_INFINITY {
                            let mut bound = *e;
                            bound.lm = lm_new;
                            bound.len = e.len + 1;
                            if word_lm.is_some() && Some(c) == space && e.lex != ROOT {
                                bound.words.count += 1;
                            }
                            if scorer.score(from + y_c, &bound) <= floor {
                                continue;
                            }
                        }
                        let (lex, out) = lexicon.map_or((ROOT, false), |l| l.step(e.lex, c));
                        let oov = e.oov + u32::from(out);
                        let mut w = e.words;
                        if let (Some(wlm), true) = (word_lm, Some(c) == space) {
                            w.finish(wlm, e.lex, &mut word_memo);
                        }
                        let candidate = Entry {
                            node: NONE,
                            parent: e.node,
                            token: c,
                            len: e.len + 1,
                            lm: lm_new,
                            lex,
                            oov,
                            words: w,
                            pb: f64::NEG_INFINITY,
                            pnb: f64::NEG_INFINITY,
                            vb: f64::NEG_INFINITY,
                            vnb: f64::NEG_INFINITY,
                            rec_b: NONE,
                            rec_nb: NONE,
                            nb_pending: false,
                        };
                        if scorer.score(from + y_c, &candidate) <= floor {
                            continue;
                        }
                        next.push(candidate);
                        next.len() - 1
                    };
                    let n = &mut next[slot];
                    n.pnb = log_add(n.pnb, from + y_c);
                    if from_v + y_c > n.vnb {
                        n.vnb = from_v + y_c;
                        n.rec_nb = from_rec;
                        n.nb_pending = true;
                    }
                }
            }
        }

        ranked.clear();
        ranked.extend(next.iter().enumerate().map(|(s, n)| (scorer.prefix(n), s)));
        keep_best(&mut ranked, k);
        beam.clear();
        for &(_, s) in ranked.iter() {
            let mut n = next[s];
            if n.node == NONE {
                n.node = trie.child(n.parent, n.token);
            }
            if n.nb_pending {
                records.push(Record {
                    frame: t,
                    prev: n.rec_nb,
                });
                n.rec_nb = records.len() - 1;
                n.nb_pending = false;
            }
            beam.push(n);
        }
    }

    ranked.clear();
    let mut finals: Vec<(f64, Entry)> = Vec::with_capacity(beam.len());
    for (s, e) in beam.iter().enumerate() {
        let ctc = log_add(e.pb, e.pnb);
        let mut f = *e;
        if let Some(lm) = lm {
            let row = cache.row(lm, &trie, e.node);
            f.lm += f64::from(cache.rows[row + Vocab::EOS]);
        }
        f.oov += u32::from(lexicon.is_some_and(|l| l.unfinished(e.lex)));
        if let Some(wlm) = word_lm {
            if e.lex != ROOT {
                f.words.finish(wlm, e.lex, &mut word_memo);
            }
            f.words.log_prob += f64::from(wlm.score(f.words.state, Vocab::EOS).1);
        }
        let score = scorer.score(ctc, &f);
        finals.push((ctc, f));
        ranked.push((score, s));
    }
    keep_best(&mut ranked, k);
    Ok(ranked
        .iter()
        .map(|&(score, s)| {
            let e = &beam[s];
            let (ctc_log_prob, f) = finals[s];
            let tokens = trie.tokens(e.node);
            let mut frames = Vec::with_capacity(tokens.len());
            let mut r = e.best_path().1;
            while r != NONE {
                frames.push(records[r].frame);
                r = records[r].prev;
            }
            frames.reverse();
            debug_assert_eq!(frames.len(), tokens.len());
            CtcHypothesis {
                tokens,
                frames,
                ctc_log_prob,
                lm_log_prob: if lm.is_some() { f.lm } else { 0.0 },
                oov_words: f.oov as usize,
                word_lm_log_prob: f.words.log_prob,
                words: f.words.count as usize,
                score,
            }
        })
        .collect())
}

/// Checks a `[frames, vocab_size]` log-probability table and its blank id.
pub(crate) fn check_input(
    log_probs: &[f32],
    frames: usize,
    vocab_size: usize,
    blank: usize,
) -> Result<()> {
    if blank >= vocab_size {
        return Err(Error::Input(format!(
            "blank {blank} is outside the vocabulary of {vocab_size} symbols"
        )));
    }
    if frames.checked_mul(vocab_size) != Some(log_probs.len()) {
        return Err(Error::Input(format!(
            "{} log-probabilities for {frames} frames of {vocab_size} symbols",
            log_probs.len()
        )));
    }
    if let Some(i) = log_probs
        .iter()
        .position(|x| x.is_nan() || *x == f32::INFINITY)
    {
        return Err(Error::Input(format!(
            "log-probability of symbol {} at frame {} is {}",
            i % vocab_size,
            i / vocab_size,
            log_probs[i]
        )));
    }
    Ok(())
}

/// Marks a missing node, record, beam entry or list end.
const NONE: usize = usize::MAX;

/// The last symbol of the empty prefix.
const NO_TOKEN: usize = usize::MAX;

/// The scores of the [module documentation](self).
struct Scorer {
    /// 0 without a model.
    lm_weight: f64,
    bonus: f64,
    /// 0 without a lexicon.
    oov_penalty: f64,
    /// 0 without a word model.
    word_weight: f64,
    word_bonus: f64,
}

impl Scorer {
    /// The score of `e` with CTC log-probability `ctc`.
    fn score(&self, ctc: f64, e: &Entry) -> f64 {
        // Skipping a zero weight keeps a model's `-inf` from turning into NaN.
        let weighted = |w: f64, lp: f64| if w == 0.0 { 0.0 } else { w * lp };
        ctc + weighted(self.lm_weight, e.lm)
            + self.bonus * e.len as f64
            + weighted(self.word_weight, e.words.log_prob)
            + self.word_bonus * f64::from(e.words.count)
            - self.oov_penalty * f64::from(e.oov)
    }

    fn prefix(&self, e: &Entry) -> f64 {
        self.score(log_add(e.pb, e.pnb), e)
    }
}

/// A prefix's finished words as a [`WordLm`] sees them.
#[derive(Clone, Copy)]
struct WordScore {
    /// The model's state after them.
    state: u32,
    /// `ln P_words`, and how many.
    log_prob: f64,
    count: u32,
}

impl WordScore {
    /// Scores the word that ends in lexicon state `lex` (a space right after a space
    /// or at the start ends none).
    /// `memo` remembers `wlm.score` by state and word: many prefixes of a beam end
    /// the same word after the same words.
    fn finish(&mut self, wlm: &WordLm, lex: u32, memo: &mut StateMap<(u32, f32)>) {
        if lex == ROOT {
            return;
        }
        let word = wlm.word_at(lex);
        // Word ids fit 16 bits (at most 65,536 symbols).
        debug_assert!(word < 1 << 16);
        let key = u64::from(self.state) << 16 | word as u64;
        let (state, lp) = *memo
            .entry(key)
            .or_insert_with(|| wlm.score(self.state, word));
        self.state = state;
        self.log_prob += f64::from(lp);
        self.count += 1;
    }
}

/// A prefix during the search, with its probabilities at the last frame processed.
#[derive(Clone, Copy)]
struct Entry {
    /// Its trie node; [`NONE`] for an extension not yet kept.
    node: usize,
    /// The trie node of the prefix without its last symbol; [`NONE`] for the empty one.
    parent: usize,
    /// Last symbol; [`NO_TOKEN`] for the empty prefix.
    token: usize,
    len: usize,
    /// `ln P_lm` of its symbols (without `<eos>`); 0 without a model.
    lm: f64,
    /// Its state in the lexicon ([`ROOT`] without one), and the words it spelled
    /// outside it.
    lex: u32,
    oov: u32,
    words: WordScore,
    /// `ln p_b`, `ln p_nb`.
    pb: f64,
    pnb: f64,
    /// Natural log of the most probable single path ending in a blank, and in the last
    /// symbol, among the paths followed.
    vb: f64,
    vnb: f64,
    /// Those paths' emission records ([`NONE`] for no emission).
    rec_b: usize,
    rec_nb: usize,
    /// `vnb`'s path starts the last symbol at the current frame: its record, whose
    /// previous one is `rec_nb`, is still to be made.
    nb_pending: bool,
}

impl Entry {
    /// The empty prefix; `word_state` is the word model's start (0 without one).
    fn root(word_state: u32) -> Entry {
        Entry {
            node: 0,
            parent: NONE,
            token: NO_TOKEN,
            len: 0,
            lm: 0.0,
            lex: ROOT,
            oov: 0,
            words: WordScore {
                state: word_state,
                log_prob: 0.0,
                count: 0,
            },
            pb: 0.0,
            pnb: f64::NEG_INFINITY,
            vb: 0.0,
            vnb: f64::NEG_INFINITY,
            rec_b: NONE,
            rec_nb: NONE,
            nb_pending: false,
        }
    }

    /// The more probable of the two best paths and its record. Ties go to the
    /// non-blank path, whose record is always set once the prefix is not empty (an
    /// entry is only created by an extension of non-zero probability).
    fn best_path(&self) -> (f64, usize) {
        if self.vb > self.vnb {
            (self.vb, self.rec_b)
        } else {
            (self.vnb, self.rec_nb)
        }
    }
}

/// One symbol emission of a best path: the frame it starts at and the emission before
/// it.
struct Record {
    frame: usize,
    prev: usize,
}

type ChildMap = HashMap<(usize, usize), usize, BuildHasherDefault<KeyHasher>>;

/// Every prefix that ever survived a frame, once each: node 0 is the empty prefix.
struct Trie {
    parent: Vec<usize>,
    token: Vec<usize>,
    children: ChildMap,
    /// Node -> its index in the current beam, [`NONE`] outside the loop that sets it.
    beam_pos: Vec<usize>,
}

impl Trie {
    fn new() -> Trie {
        Trie {
            parent: vec![NONE],
            token: vec![NO_TOKEN],
            children: ChildMap::default(),
            beam_pos: vec![NONE],
        }
    }

    /// The node of `parent`'s prefix followed by `token`, made if new.
    fn child(&mut self, parent: usize, token: usize) -> usize {
        let n = self.parent.len();
        let id = *self.children.entry((parent, token)).or_insert(n);
        if id == n {
            self.parent.push(parent);
            self.token.push(token);
            self.beam_pos.push(NONE);
        }
        id
    }

    fn tokens(&self, mut node: usize) -> Vec<usize> {
        let mut out = Vec::new();
        while node != 0 {
            out.push(self.token[node]);
            node = self.parent[node];
        }
        out.reverse();
        out
    }
}

/// The language model's distribution after each prefix that has needed one.
struct LmCache {
    v: usize,
    /// Node -> offset of its row in `rows`, [`NONE`] if not computed yet.
    row_of: Vec<usize>,
    /// Node -> the model's state after it, [`NO_STATE`] if not computed yet.
    state_of: Vec<u32>,
    /// Model state (as `u64`, which the hasher takes whole) -> offset of its row.
    row_of_state: StateMap<usize>,
    /// `state << 16 | token` -> the state after it: one lookup for what
    /// [`CharLm::advance`] does in up to `order - 1`.
    advanced: StateMap<u32>,
    rows: Vec<f32>,
    /// Scratch for [`LmCache::state`].
    path: Vec<usize>,
}

type StateMap<T> = HashMap<u64, T, BuildHasherDefault<KeyHasher>>;

/// No language-model state computed.
const NO_STATE: u32 = u32::MAX;

impl LmCache {
    fn new(v: usize) -> LmCache {
        LmCache {
            v,
            row_of: Vec::new(),
            state_of: Vec::new(),
            row_of_state: StateMap::default(),
            advanced: StateMap::default(),
            rows: Vec::new(),
            path: Vec::new(),
        }
    }

    /// Offset in `rows` of the natural-log distribution after `node`'s prefix.
    fn row(&mut self, lm: &CharLm, trie: &Trie, node: usize) -> usize {
        if self.row_of.len() <= node {
            self.row_of.resize(trie.parent.len(), NONE);
            self.state_of.resize(trie.parent.len(), NO_STATE);
        }
        if self.row_of[node] != NONE {
            return self.row_of[node];
        }
        let state = self.state(lm, trie, node);
        // Prefixes that end alike share the model's context, and so its row: far
        // fewer rows than prefixes.
        let offset = match self.row_of_state.entry(u64::from(state)) {
            MapEntry::Occupied(o) => *o.get(),
            MapEntry::Vacant(slot) => {
                let offset = self.rows.len();
                self.rows.resize(offset + self.v, 0.0);
                lm.state_log_probs_into(state, &mut self.rows[offset..]);
                *slot.insert(offset)
            }
        };
        self.row_of[node] = offset;
        offset
    }

    /// The model's state after `node`'s prefix, from the nearest ancestor that has
    /// one (a prefix's parent was in the beam before it, so usually that).
    fn state(&mut self, lm: &CharLm, trie: &Trie, node: usize) -> u32 {
        let mut path = std::mem::take(&mut self.path);
        path.clear();
        let mut n = node;
        let mut state = loop {
            if self.state_of[n] != NO_STATE {
                break self.state_of[n];
            }
            if n == 0 {
                let s = lm.start();
                self.state_of[0] = s;
                break s;
            }
            path.push(n);
            n = trie.parent[n];
        };
        for &n in path.iter().rev() {
            let token = trie.token[n];
            // Symbol ids fit 16 bits (models have at most 65,536 symbols).
            debug_assert!(token < 1 << 16);
            let key = u64::from(state) << 16 | token as u64;
            state = *self
                .advanced
                .entry(key)
                .or_insert_with(|| lm.advance(state, token));
            self.state_of[n] = state;
        }
        self.path = path;
        state
    }
}

/// `ln(e^a + e^b)`, exact for `-inf` arguments.
pub(crate) fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// Best first; equal scores in candidate order.
fn rank_order(a: &(f64, usize), b: &(f64, usize)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Leaves the `k` best of `ranked`, sorted best first, without those of score `-inf`
/// unless all are (then the first of them).
fn keep_best(ranked: &mut Vec<(f64, usize)>, k: usize) {
    if ranked.len() > k {
        ranked.select_nth_unstable_by(k - 1, rank_order);
        ranked.truncate(k);
    }
    ranked.sort_unstable_by(rank_order);
    let finite = ranked
        .iter()
        .position(|r| r.0 == f64::NEG_INFINITY)
        .unwrap_or(ranked.len());
    ranked.truncate(finite.max(1));
}
