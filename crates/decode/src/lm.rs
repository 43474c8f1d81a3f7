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

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use crate::error::{Error, LmFileErrorKind, Result};
use crate::search::{Decoder, Step};
use crate::vocab::Vocab;

/// Highest order [`CharLm::train`] accepts and a file may declare.
pub const MAX_ORDER: usize = 64;

/// The file format's magic bytes.
pub const FORMAT_MAGIC: [u8; 8] = *b"LASR-CLM";

/// The file format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Discounts for counts 1, 2 and 3+ where the count-of-counts formula fails.
const FALLBACK_DISCOUNTS: [f64; 3] = [0.5, 1.0, 1.5];

/// Largest vocabulary: token ids are stored as `u16`.
const MAX_VOCAB: usize = 1 << 16;

/// Bytes of a context header and of an entry in the file.
const CONTEXT_BYTES: u64 = 4 + 2 + 2 + 4;
const ENTRY_BYTES: u64 = 2 + 4;

/// An order-`N` character n-gram model with interpolated modified Kneser-Ney
/// smoothing; see the [module documentation](self).
#[derive(Clone)]
pub struct CharLm {
    vocab: Vocab,
    order: usize,
    /// Context id -> the context without its oldest token; 0 for context 0.
    parent: Vec<u32>,
    /// Context id -> its oldest token; 0 for context 0.
    oldest: Vec<u16>,
    /// Context id -> `ln gamma`.
    log_backoff: Vec<f32>,
    /// Context id -> its first entry; one more element than contexts.
    offsets: Vec<u32>,
    entry_token: Vec<u16>,
    entry_log_prob: Vec<f32>,
    /// `(context id, older token)` packed by [`child_key`] -> the longer context.
    children: KeyMap,
    /// `ln(1 / (V - 2))`.
    log_uniform: f32,
}

impl fmt::Debug for CharLm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CharLm")
            .field("order", &self.order)
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
        if !(1..=MAX_ORDER).contains(&order) {
            return Err(Error::Lm(format!(
                "order must be between 1 and {MAX_ORDER}, not {order}"
            )));
        }
        let v = vocab.len();
        if v > MAX_VOCAB {
            return Err(Error::Lm(format!(
                "a vocabulary of {v} symbols is too large (at most {MAX_VOCAB})"
            )));
        }
        let too_many = || Error::Lm("too many distinct n-grams (more than 2^32)".into());

        // Contexts form a suffix tree: a context's parent is it without its oldest
        // token, so extending a context goes back in time, and parents get lower ids.
        let mut parent: Vec<u32> = vec![0];
        let mut oldest: Vec<u16> = vec![0];
        let mut depth: Vec<u8> = vec![0];
        let mut children = KeyMap::default();
        // (context id, next token) -> raw count.
        let mut counts = KeyMap::default();
        let mut seq: Vec<usize> = Vec::new();
        let mut sentences = 0usize;
        for line in lines {
            seq.clear();
            seq.push(Vocab::SOS);
            seq.extend(vocab.encode(line.as_ref()));
            if seq.len() == 1 {
                continue;
            }
            seq.push(Vocab::EOS);
            sentences += 1;
            for i in 1..seq.len() {
                let w = seq[i];
                let mut ctx = 0u32;
                let mut k = 0;
                loop {
                    let c = counts.entry(child_key(ctx, w)).or_insert(0);
                    *c = c.saturating_add(1);
                    if k == order - 1 || k == i {
                        break;
                    }
                    let older = seq[i - 1 - k];
                    ctx = match children.entry(child_key(ctx, older)) {
                        Entry::Occupied(e) => *e.get(),
                        Entry::Vacant(e) => {
                            let id = u32::try_from(parent.len()).map_err(|_| too_many())?;
                            parent.push(ctx);
                            // Token ids are below MAX_VOCAB, checked above.
                            oldest.push(older as u16);
                            depth.push(depth[ctx as usize] + 1);
                            *e.insert(id)
                        }
                    };
                    k += 1;
                }
            }
        }
        if sentences == 0 {
            return Err(Error::Lm(
                "no text to train on: every line is empty after normalisation".into(),
            ));
        }

        // Entries sorted by (context, token): contiguous per context.
        let mut grams: Vec<(u64, u32)> = counts.into_iter().collect();
        grams.sort_unstable_by_key(|g| g.0);
        let n_ctx = parent.len();
        let n_entries = u32::try_from(grams.len()).map_err(|_| too_many())?;
        let mut offsets = vec![0u32; n_ctx + 1];
        for &(key, _) in &grams {
            offsets[(key >> 32) as usize + 1] += 1;
        }
        for c in 0..n_ctx {
            offsets[c + 1] += offsets[c];
        }
        debug_assert_eq!(offsets[n_ctx], n_entries);
        let entry_token: Vec<u16> = grams.iter().map(|g| g.0 as u16).collect();
        let raw: Vec<u32> = grams.iter().map(|g| g.1).collect();
        drop(grams);
        let range = |c: usize| offsets[c] as usize..offsets[c + 1] as usize;
        let find = |c: usize, t: u16| {
            let r = range(c);
            let start = r.start;
            entry_token[r].binary_search(&t).ok().map(|i| start + i)
        };

        // Each entry's suffix entry (the same token after the parent context), which
        // every n-gram seen in training has, and the continuation counts.
        let mut lower = vec![u32::MAX; entry_token.len()];
        let mut continuation = vec![0u32; entry_token.len()];
        for (c, &p) in parent.iter().enumerate().skip(1) {
            for e in range(c) {
                if let Some(s) = find(p as usize, entry_token[e]) {
                    lower[e] = s as u32;
                    continuation[s] += 1;
                }
            }
        }
        let adjusted: Vec<u32> = (0..n_ctx)
            .flat_map(|c| {
                let raw_counts =
                    usize::from(depth[c]) == order - 1 || oldest[c] as usize == Vocab::SOS;
                let source = if raw_counts { &raw } else { &continuation };
                source[range(c)].iter().copied()
            })
            .collect();
        drop(raw);
        drop(continuation);

        let mut count_of_counts = vec![[0u64; 4]; order];
        for c in 0..n_ctx {
            for &a in &adjusted[range(c)] {
                if (1..=4).contains(&a) {
                    count_of_counts[usize::from(depth[c])][a as usize - 1] += 1;
                }
            }
        }
        let discounts: Vec<[f64; 3]> = count_of_counts.iter().map(discounts).collect();

        let uniform = 1.0 / (v - 2) as f64;
        let mut prob = vec![0.0f64; entry_token.len()];
        let mut log_backoff = vec![0.0f32; n_ctx];
        // Parents have lower ids, so their probabilities are final when needed.
        for c in 0..n_ctx {
            let d = &discounts[usize::from(depth[c])];
            let discount = |a: u32| match a {
                0 => 0.0,
                1 => d[0],
                2 => d[1],
                _ => d[2],
            };
            let r = range(c);
            let total: f64 = adjusted[r.clone()].iter().map(|&a| f64::from(a)).sum();
            let gamma = if total > 0.0 {
                adjusted[r.clone()]
                    .iter()
                    .map(|&a| discount(a))
                    .sum::<f64>()
                    / total
            } else {
                1.0
            };
            for e in r {
                let below = if c == 0 {
                    uniform
                } else {
                    prob.get(lower[e] as usize).copied().unwrap_or(0.0)
                };
                let a = f64::from(adjusted[e]);
                let own = if total > 0.0 {
                    (a - discount(adjusted[e])).max(0.0) / total
                } else {
                    0.0
                };
                prob[e] = own + gamma * below;
            }
            log_backoff[c] = (gamma.ln() as f32).min(0.0);
        }
        let entry_log_prob = prob.iter().map(|p| (p.ln() as f32).min(0.0)).collect();

        Ok(CharLm {
            vocab: vocab.clone(),
            order,
            parent,
            oldest,
            log_backoff,
            offsets,
            entry_token,
            entry_log_prob,
            children,
            log_uniform: -((v - 2) as f32).ln(),
        })
    }

    /// The model's order `N`: it looks at the last `N - 1` tokens.
    pub fn order(&self) -> usize {
        self.order
    }

    /// The vocabulary whose token ids the model predicts.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Contexts stored (the empty one included).
    pub fn num_contexts(&self) -> usize {
        self.parent.len()
    }

    /// (context, token) entries stored: the distinct n-grams of all orders seen in
    /// training.
    pub fn num_entries(&self) -> usize {
        self.entry_token.len()
    }

    /// Calls `f` with the id of each context that matches the end of `history`,
    /// shortest (the empty context) first.
    #[inline]
    fn for_each_context(&self, history: &[usize], mut f: impl FnMut(usize)) {
        let mut ctx = 0u32;
        f(0);
        let v = self.vocab.len();
        for &t in history.iter().rev().take(self.order - 1) {
            // A token the model cannot know (a padding marker, an id past the
            // vocabulary) ends the match like any unseen context does.
            if t >= v {
                break;
            }
            match self.children.get(&child_key(ctx, t)) {
                Some(&c) => {
                    ctx = c;
                    f(c as usize);
                }
                None => break,
            }
        }
    }

    fn entries(&self, c: usize) -> (&[u16], &[f32]) {
        let r = self.offsets[c] as usize..self.offsets[c + 1] as usize;
        (&self.entry_token[r.clone()], &self.entry_log_prob[r])
    }

    /// Natural log of `p(next | history)`; `history` is the tokens before `next`,
    /// starting with `<sos>` (only the last `N - 1` matter). `-inf` for `<pad>`,
    /// `<sos>` and ids outside the vocabulary. Equal to `log_probs(history)[next]`, to
    /// the bit.
    pub fn log_prob(&self, history: &[usize], next: usize) -> f32 {
        if next >= self.vocab.len() || next == Vocab::PAD || next == Vocab::SOS {
            return f32::NEG_INFINITY;
        }
        // The same operations in the same order as `log_probs_into`.
        let mut acc = self.log_uniform;
        self.for_each_context(history, |c| {
            let (tokens, log_probs) = self.entries(c);
            match tokens.binary_search(&(next as u16)) {
                Ok(i) => acc = log_probs[i],
                Err(_) => acc += self.log_backoff[c],
            }
        });
        acc
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
        out.fill(self.log_uniform);
        out[Vocab::PAD] = f32::NEG_INFINITY;
        out[Vocab::SOS] = f32::NEG_INFINITY;
        self.for_each_context(history, |c| {
            let lb = self.log_backoff[c];
            for x in out.iter_mut() {
                *x += lb;
            }
            let (tokens, log_probs) = self.entries(c);
            for (&t, &lp) in tokens.iter().zip(log_probs) {
                out[usize::from(t)] = lp;
            }
        });
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
        let mut b = Vec::with_capacity(
            64 + self.num_contexts() * CONTEXT_BYTES as usize
                + self.num_entries() * ENTRY_BYTES as usize,
        );
        b.extend_from_slice(&FORMAT_MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&(self.order as u32).to_le_bytes());
        b.extend_from_slice(&(self.vocab.len() as u32).to_le_bytes());
        for s in self.vocab.symbols() {
            b.extend_from_slice(&(s.len() as u32).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        b.extend_from_slice(&(self.num_contexts() as u32).to_le_bytes());
        b.extend_from_slice(&(self.num_entries() as u32).to_le_bytes());
        for c in 0..self.num_contexts() {
            let (tokens, log_probs) = self.entries(c);
            b.extend_from_slice(&self.parent[c].to_le_bytes());
            b.extend_from_slice(&self.oldest[c].to_le_bytes());
            // At most V - 2 <= 65534 entries per context.
            b.extend_from_slice(&(tokens.len() as u16).to_le_bytes());
            b.extend_from_slice(&self.log_backoff[c].to_le_bytes());
            for (t, lp) in tokens.iter().zip(log_probs) {
                b.extend_from_slice(&t.to_le_bytes());
                b.extend_from_slice(&lp.to_le_bytes());
            }
        }
        let sum = fnv1a64(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }

    /// A model from bytes in the `lasr-char-lm` format, which must have been built
    /// over exactly `vocab`'s symbols. Any damage is an [`Error::LmFile`] (with no
    /// path), never a panic.
    pub fn from_bytes(bytes: &[u8], vocab: &Vocab) -> Result<CharLm> {
        parse(bytes, vocab).map_err(|kind| Error::LmFile { path: None, kind })
    }

    /// Writes [`CharLm::to_bytes`] to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()).map_err(|e| Error::LmFile {
            path: Some(path.to_path_buf()),
            kind: LmFileErrorKind::Io(e),
        })
    }

    /// Reads a model saved by [`CharLm::save`]; errors name `path`.
    pub fn load(path: impl AsRef<Path>, vocab: &Vocab) -> Result<CharLm> {
        let path = path.as_ref();
        let with_path = |kind| Error::LmFile {
            path: Some(path.to_path_buf()),
            kind,
        };
        let bytes = std::fs::read(path).map_err(|e| with_path(LmFileErrorKind::Io(e)))?;
        parse(&bytes, vocab).map_err(with_path)
    }
}

/// Discounts for counts 1, 2, 3+ from one order's counts of counts `n1..n4`.
fn discounts(n: &[u64; 4]) -> [f64; 3] {
    let [n1, n2, n3, n4] = n.map(|x| x as f64);
    let y = n1 / (n1 + 2.0 * n2);
    let mut d = [0.0; 3];
    for (r, (above, at)) in [(n2, n1), (n3, n2), (n4, n3)].into_iter().enumerate() {
        let rank = (r + 1) as f64;
        let x = rank - (rank + 1.0) * y * above / at;
        // NaN (a zero denominator) fails this test too.
        d[r] = if x > 0.0 && x < rank {
            x
        } else {
            FALLBACK_DISCOUNTS[r]
        };
    }
    d
}

fn child_key(ctx: u32, token: usize) -> u64 {
    (u64::from(ctx) << 32) | token as u64
}

/// A hash map from packed `(u32, token)` keys, with a cheap full-avalanche hash (the
/// keys are not attacker-chosen, and SipHash would dominate the lookups).
type KeyMap = HashMap<u64, u32, BuildHasherDefault<KeyHasher>>;

#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = mix(self.0 ^ x);
    }

    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

/// MurmurHash3's 64-bit finaliser.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// FNV-1a, 64 bits: the file's checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Reads little-endian fields; running out is a malformed file (the checksum has
/// already ruled out truncation by accident).
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], LmFileErrorKind> {
        match self.bytes.get(self.pos..).and_then(|rest| rest.get(..n)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(malformed(format!(
                "ends inside {what} (at byte {})",
                self.pos
            ))),
        }
    }

    fn u16(&mut self, what: &str) -> std::result::Result<u16, LmFileErrorKind> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, LmFileErrorKind> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn f32(&mut self, what: &str) -> std::result::Result<f32, LmFileErrorKind> {
        self.u32(what).map(f32::from_bits)
    }
}

fn malformed(what: String) -> LmFileErrorKind {
    LmFileErrorKind::Malformed(what)
}

fn parse(bytes: &[u8], vocab: &Vocab) -> std::result::Result<CharLm, LmFileErrorKind> {
    let magic_len = FORMAT_MAGIC.len();
    if bytes.get(..magic_len) != Some(&FORMAT_MAGIC[..]) {
        // A prefix of the magic is a truncated file, anything else is not ours.
        return Err(if FORMAT_MAGIC.starts_with(bytes) {
            LmFileErrorKind::Damaged
        } else {
            LmFileErrorKind::NotALanguageModel
        });
    }
    let Some(version) = bytes.get(magic_len..magic_len + 4) else {
        return Err(LmFileErrorKind::Damaged);
    };
    let version = u32::from_le_bytes([version[0], version[1], version[2], version[3]]);
    if version != FORMAT_VERSION {
        return Err(LmFileErrorKind::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let Some(body_len) = bytes.len().checked_sub(8).filter(|&n| n >= magic_len + 4) else {
        return Err(LmFileErrorKind::Damaged);
    };
    let (body, sum) = bytes.split_at(body_len);
    let sum = u64::from_le_bytes(sum.try_into().map_err(|_| LmFileErrorKind::Damaged)?);
    if fnv1a64(body) != sum {
        return Err(LmFileErrorKind::Damaged);
    }

    let mut r = Reader {
        bytes: body,
        pos: magic_len + 4,
    };
    let order = r.u32("the order")? as usize;
    if !(1..=MAX_ORDER).contains(&order) {
        return Err(malformed(format!(
            "order {order} is outside 1..={MAX_ORDER}"
        )));
    }
    let n_symbols = r.u32("the symbol count")? as usize;
    if n_symbols > MAX_VOCAB {
        return Err(malformed(format!(
            "{n_symbols} symbols (at most {MAX_VOCAB})"
        )));
    }
    let mut symbols = Vec::with_capacity(n_symbols.min(body.len()));
    for id in 0..n_symbols {
        let len = r.u32("a symbol's length")? as usize;
        let raw = r.take(len, "a symbol")?;
        let s =
            std::str::from_utf8(raw).map_err(|_| malformed(format!("symbol {id} is not UTF-8")))?;
        symbols.push(s.to_string());
    }
    if symbols != vocab.symbols() {
        return Err(LmFileErrorKind::VocabMismatch {
            expected: vocab.symbols().to_vec(),
            found: symbols,
        });
    }
    let v = vocab.len();

    let n_ctx = r.u32("the context count")? as usize;
    let n_entries = r.u32("the entry count")? as usize;
    let expected = (n_ctx as u64) * CONTEXT_BYTES + (n_entries as u64) * ENTRY_BYTES;
    let left = (body.len() - r.pos) as u64;
    if n_ctx == 0 || expected != left {
        return Err(malformed(format!(
            "{n_ctx} contexts and {n_entries} entries need {expected} bytes, {left} are left"
        )));
    }
    let mut lm = CharLm {
        vocab: vocab.clone(),
        order,
        parent: Vec::with_capacity(n_ctx),
        oldest: Vec::with_capacity(n_ctx),
        log_backoff: Vec::with_capacity(n_ctx),
        offsets: Vec::with_capacity(n_ctx + 1),
        entry_token: Vec::with_capacity(n_entries),
        entry_log_prob: Vec::with_capacity(n_entries),
        children: KeyMap::default(),
        log_uniform: -((v - 2) as f32).ln(),
    };
    lm.children.reserve(n_ctx - 1);
    let mut depth: Vec<u8> = Vec::with_capacity(n_ctx);
    lm.offsets.push(0);
    for c in 0..n_ctx {
        let parent = r.u32("a context")?;
        let token = r.u16("a context")?;
        let count = r.u16("a context")?;
        let log_backoff = r.f32("a context")?;
        let bad = |what: String| malformed(format!("context {c}: {what}"));
        if c == 0 {
            if parent != 0 || token != 0 {
                return Err(bad(
                    "the empty context must have parent 0 and token 0".into()
                ));
            }
            depth.push(0);
        } else {
            let p = parent as usize;
            let t = usize::from(token);
            if p >= c {
                return Err(bad(format!("parent {p} does not come before it")));
            }
            if t >= v || t == Vocab::PAD || t == Vocab::EOS {
                return Err(bad(format!("token {t} cannot be in a context")));
            }
            if p != 0 && usize::from(lm.oldest[p]) == Vocab::SOS {
                return Err(bad("extends a context that starts with <sos>".into()));
            }
            let d = depth[p] + 1;
            if usize::from(d) > order - 1 {
                return Err(bad(format!("longer than order {order} allows")));
            }
            if lm.children.insert(child_key(parent, t), c as u32).is_some() {
                return Err(bad("the same context appears twice".into()));
            }
            depth.push(d);
        }
        if !(log_backoff.is_finite() && log_backoff <= 0.0) {
            return Err(bad(format!(
                "ln gamma {log_backoff} is not finite and <= 0"
            )));
        }
        lm.parent.push(parent);
        lm.oldest.push(token);
        lm.log_backoff.push(log_backoff);
        let mut last: Option<u16> = None;
        for _ in 0..count {
            let t = r.u16("an entry")?;
            let lp = r.f32("an entry")?;
            let tu = usize::from(t);
            if tu >= v || tu == Vocab::PAD || tu == Vocab::SOS {
                return Err(bad(format!(
                    "entry for token {tu}, which cannot be predicted"
                )));
            }
            if last.is_some_and(|l| l >= t) {
                return Err(bad("entries are not sorted by token".into()));
            }
            if !(lp.is_finite() && lp <= 0.0) {
                return Err(bad(format!("ln p {lp} is not finite and <= 0")));
            }
            last = Some(t);
            lm.entry_token.push(t);
            lm.entry_log_prob.push(lp);
        }
        // Bounded by n_entries through the byte count checked above.
        lm.offsets.push(lm.entry_token.len() as u32);
    }
    if lm.entry_token.len() != n_entries {
        return Err(malformed(format!(
            "declares {n_entries} entries, holds {}",
            lm.entry_token.len()
        )));
    }
    if r.pos != body.len() {
        return Err(malformed(format!(
            "{} bytes after the last context",
            body.len() - r.pos
        )));
    }
    Ok(lm)
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

fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> Error {
    Error::Decoder(Box::new(e))
}
