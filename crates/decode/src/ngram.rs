//! The n-gram machinery shared by [`crate::CharLm`] and [`crate::WordLm`]: interpolated
//! modified Kneser-Ney estimation over symbol ids, the backoff-form tables, lookups, and
//! the body of the `lasr-char-lm` / `lasr-word-lm` file formats. See [`crate::lm`] for
//! the maths and the byte layout; the two formats differ only in their magic bytes and
//! in what a symbol is (a character, a word).
//!
//! Ids 0..=3 are `<pad>`, `<sos>`, `<eos>`, `<unk>` in every model, as in [`Vocab`].

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use crate::error::{Error, LmFileErrorKind, Result};
use crate::vocab::Vocab;

/// Highest order a model may have, in training and in a file.
pub const MAX_ORDER: usize = 64;

/// The file format version this build writes and reads (both kinds).
pub const FORMAT_VERSION: u32 = 1;

/// Discounts for counts 1, 2 and 3+ where the count-of-counts formula fails.
const FALLBACK_DISCOUNTS: [f64; 3] = [0.5, 1.0, 1.5];

/// Largest vocabulary: token ids are stored as `u16`.
pub(crate) const MAX_VOCAB: usize = 1 << 16;

/// Bytes of a context header and of an entry in the file.
const CONTEXT_BYTES: u64 = 4 + 2 + 2 + 4;
const ENTRY_BYTES: u64 = 2 + 4;

/// An order-`N` n-gram model over ids `0..V` in backoff form.
#[derive(Clone)]
pub(crate) struct Ngram {
    order: usize,
    v: usize,
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

impl Ngram {
    /// Estimates an order-`order` model over `v` symbols from `lines`, each the
    /// ids of one sentence without `<sos>` and `<eos>` (empty ones are skipped).
    ///
    /// Errors ([`Error::Lm`]): `order` outside `1..=`[`MAX_ORDER`], more than 65536
    /// symbols, an id `>= v`, or no non-empty sentence.
    pub(crate) fn train<I>(lines: I, v: usize, order: usize) -> Result<Ngram>
    where
        I: IntoIterator,
        I::Item: IntoIterator<Item = usize>,
    {
        if !(1..=MAX_ORDER).contains(&order) {
            return Err(Error::Lm(format!(
                "order must be between 1 and {MAX_ORDER}, not {order}"
            )));
        }
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
        for sentence in lines {
            seq.clear();
            seq.push(Vocab::SOS);
            seq.extend(sentence);
            if seq.len() == 1 {
                continue;
            }
            if let Some(&t) = seq.iter().find(|&&t| t >= v) {
                return Err(Error::Lm(format!("token {t} is outside the {v} symbols")));
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

        Ok(Ngram {
            order,
            v,
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

    pub(crate) fn order(&self) -> usize {
        self.order
    }

    pub(crate) fn num_contexts(&self) -> usize {
        self.parent.len()
    }

    pub(crate) fn num_entries(&self) -> usize {
        self.entry_token.len()
    }

    /// Calls `f` with the id of each context that matches the end of `history`,
    /// shortest (the empty context) first.
    #[inline]
    fn for_each_context(&self, history: &[usize], mut f: impl FnMut(usize)) {
        let mut ctx = 0u32;
        f(0);
        for &t in history.iter().rev().take(self.order - 1) {
            // A token the model cannot know (a padding marker, an id past the
            // vocabulary) ends the match like any unseen context does.
            if t >= self.v {
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

    fn unpredictable(&self, next: usize) -> bool {
        next >= self.v || next == Vocab::PAD || next == Vocab::SOS
    }

    /// Natural log of `p(next | history)`; see [`crate::CharLm::log_prob`].
    pub(crate) fn log_prob(&self, history: &[usize], next: usize) -> f32 {
        if self.unpredictable(next) {
            return f32::NEG_INFINITY;
        }
        // The same operations in the same order as `log_probs_into` and `state_log_prob`.
        let mut acc = self.log_uniform;
        self.for_each_context(history, |c| self.apply(c, next, &mut acc));
        acc
    }

    #[inline]
    fn apply(&self, c: usize, next: usize, acc: &mut f32) {
        let (tokens, log_probs) = self.entries(c);
        match tokens.binary_search(&(next as u16)) {
            Ok(i) => *acc = log_probs[i],
            Err(_) => *acc += self.log_backoff[c],
        }
    }

    /// Every symbol's natural-log probability after `history` into `out` `[V]`.
    pub(crate) fn log_probs_into(&self, history: &[usize], out: &mut [f32]) {
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

    /// [`Ngram::log_probs_into`] of the history that led to `state` by
    /// [`Ngram::advance`], equal to the bit: the same contexts, shortest first.
    pub(crate) fn state_log_probs_into(&self, state: u32, out: &mut [f32]) {
        out.fill(self.log_uniform);
        out[Vocab::PAD] = f32::NEG_INFINITY;
        out[Vocab::SOS] = f32::NEG_INFINITY;
        let (chain, n) = self.chain(state);
        for c in std::iter::once(0).chain(chain[..n].iter().rev().map(|&c| c as usize)) {
            let lb = self.log_backoff[c];
            for x in out.iter_mut() {
                *x += lb;
            }
            let (tokens, log_probs) = self.entries(c);
            for (&t, &lp) in tokens.iter().zip(log_probs) {
                out[usize::from(t)] = lp;
            }
        }
    }

    /// The state after `<sos>`: what a sentence starts from in [`Ngram::advance`].
    pub(crate) fn start(&self) -> u32 {
        self.advance(0, Vocab::SOS)
    }

    /// The state after `state` reads `token`: the longest context of the model that
    /// ends the history so far (at most `N - 1` tokens). A context's id names its
    /// tokens, so this is all a search needs to carry per hypothesis, and equal
    /// histories always reach equal states.
    pub(crate) fn advance(&self, state: u32, token: usize) -> u32 {
        if self.order == 1 || token >= self.v {
            return 0;
        }
        let Some(&first) = self.children.get(&child_key(0, token)) else {
            return 0;
        };
        let mut ctx = first;
        let mut depth = 1;
        // `state`'s tokens newest first are the `oldest` tokens of its chain of
        // parents read from the empty context up.
        let (chain, n) = self.chain(state);
        for &c in chain[..n].iter().rev() {
            if depth == self.order - 1 {
                break;
            }
            let older = usize::from(self.oldest[c as usize]);
            match self.children.get(&child_key(ctx, older)) {
                Some(&next) => {
                    ctx = next;
                    depth += 1;
                }
                None => break,
            }
        }
        ctx
    }

    /// Context `state` and its ancestors up to (not including) the empty context,
    /// longest first, in the first `n` slots: at most `N - 1` of them.
    fn chain(&self, state: u32) -> ([u32; MAX_ORDER], usize) {
        let mut chain = [0u32; MAX_ORDER];
        let mut n = 0;
        let mut c = state;
        while c != 0 {
            chain[n] = c;
            n += 1;
            c = self.parent[c as usize];
        }
        (chain, n)
    }

    /// Natural log of `p(next | state)`, equal to the bit to [`Ngram::log_prob`] of
    /// the history that led to `state` by [`Ngram::advance`].
    pub(crate) fn state_log_prob(&self, state: u32, next: usize) -> f32 {
        if self.unpredictable(next) {
            return f32::NEG_INFINITY;
        }
        let (chain, n) = self.chain(state);
        let mut acc = self.log_uniform;
        self.apply(0, next, &mut acc);
        for &c in chain[..n].iter().rev() {
            self.apply(c as usize, next, &mut acc);
        }
        acc
    }

    /// Appends the file's context and entry tables (from the context count on).
    pub(crate) fn write_tables(&self, b: &mut Vec<u8>) {
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
    }

    /// The bytes of a whole file: `magic`, version, order, symbols, tables, checksum.
    pub(crate) fn to_file_bytes(&self, magic: &[u8; 8], symbols: &[String]) -> Vec<u8> {
        debug_assert_eq!(symbols.len(), self.v);
        let mut b = Vec::with_capacity(
            64 + symbols.iter().map(|s| 4 + s.len()).sum::<usize>()
                + self.num_contexts() * CONTEXT_BYTES as usize
                + self.num_entries() * ENTRY_BYTES as usize,
        );
        b.extend_from_slice(magic);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&(self.order as u32).to_le_bytes());
        b.extend_from_slice(&(self.v as u32).to_le_bytes());
        for s in symbols {
            b.extend_from_slice(&(s.len() as u32).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        self.write_tables(&mut b);
        let sum = fnv1a64(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }
}

/// The kinds of n-gram file, by magic bytes, and what each holds (for messages).
pub(crate) const KINDS: [(&[u8; 8], &str); 2] = [
    (b"LASR-CLM", "a lasr character language model"),
    (b"LASR-WLM", "a lasr word language model"),
];

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

pub(crate) fn child_key(ctx: u32, token: usize) -> u64 {
    (u64::from(ctx) << 32) | token as u64
}

/// A hash map from packed `(u32, token)` keys, with a cheap full-avalanche hash (the
/// keys are not attacker-chosen, and SipHash would dominate the lookups).
pub(crate) type KeyMap = HashMap<u64, u32, BuildHasherDefault<KeyHasher>>;

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
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
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

/// Writes a model's bytes to `path`; errors name it.
pub(crate) fn save(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::LmFile {
        path: Some(path.to_path_buf()),
        kind: LmFileErrorKind::Io(e),
    })
}

/// Reads `path` and parses it with `parse`; errors name the file.
pub(crate) fn load<T>(
    path: &Path,
    parse: impl FnOnce(&[u8]) -> std::result::Result<T, LmFileErrorKind>,
) -> Result<T> {
    let with_path = |kind| Error::LmFile {
        path: Some(path.to_path_buf()),
        kind,
    };
    let bytes = std::fs::read(path).map_err(|e| with_path(LmFileErrorKind::Io(e)))?;
    parse(&bytes).map_err(with_path)
}

/// Reads a whole file of the kind `magic` names: its symbols and its model. The
/// symbols are checked to be `<pad>`, `<sos>`, `<eos>`, `<unk>` first and distinct;
/// what else they must be is the caller's to check.
pub(crate) fn parse_file(
    bytes: &[u8],
    magic: &[u8; 8],
) -> std::result::Result<(Vec<String>, Ngram), LmFileErrorKind> {
    let magic_len = magic.len();
    if bytes.get(..magic_len) != Some(&magic[..]) {
        let name = |m: &[u8; 8]| KINDS.iter().find(|k| k.0 == m).map_or("?", |k| k.1);
        if let Some(other) = KINDS
            .iter()
            .find(|k| k.0 != magic && bytes.get(..magic_len) == Some(&k.0[..]))
        {
            return Err(LmFileErrorKind::OtherKind {
                found: other.1,
                expected: name(magic),
            });
        }
        // A prefix of the magic is a truncated file, anything else is not ours.
        return Err(if magic.starts_with(bytes) {
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
    if !(4..=MAX_VOCAB).contains(&n_symbols) {
        return Err(malformed(format!("{n_symbols} symbols (4 to {MAX_VOCAB})")));
    }
    let mut symbols = Vec::with_capacity(n_symbols.min(body.len()));
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(n_symbols.min(body.len()));
    for id in 0..n_symbols {
        let len = r.u32("a symbol's length")? as usize;
        let raw = r.take(len, "a symbol")?;
        let s =
            std::str::from_utf8(raw).map_err(|_| malformed(format!("symbol {id} is not UTF-8")))?;
        if let Some(first) = seen.insert(s, id) {
            return Err(malformed(format!(
                "symbol {id} ({s:?}) repeats symbol {first}"
            )));
        }
        symbols.push(s.to_string());
    }
    for (id, special) in ["<pad>", "<sos>", "<eos>", "<unk>"].iter().enumerate() {
        if symbols[id] != *special {
            return Err(malformed(format!(
                "symbol {id} is {:?}, not {special}",
                symbols[id]
            )));
        }
    }
    let v = n_symbols;

    let n_ctx = r.u32("the context count")? as usize;
    let n_entries = r.u32("the entry count")? as usize;
    let expected = (n_ctx as u64) * CONTEXT_BYTES + (n_entries as u64) * ENTRY_BYTES;
    let left = (body.len() - r.pos) as u64;
    if n_ctx == 0 || expected != left {
        return Err(malformed(format!(
            "{n_ctx} contexts and {n_entries} entries need {expected} bytes, {left} are left"
        )));
    }
    let mut lm = Ngram {
        order,
        v,
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
    Ok((symbols, lm))
}
