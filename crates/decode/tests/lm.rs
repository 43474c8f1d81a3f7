//! The character n-gram model: proper distributions for any history, probabilities
//! checked by hand and against a direct transcription of the smoothing formula,
//! perplexity, the file format and its damage, and shallow fusion with toy decoders.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::PathBuf;

use lasr_decode::lm::{FORMAT_MAGIC, FORMAT_VERSION, MAX_ORDER};
use lasr_decode::{
    beam_search, greedy, CharLm, Decoder, Error, Fused, Hypothesis, LengthNorm, LmFileErrorKind,
    SearchOptions, Step, Vocab,
};

const PAD: usize = Vocab::PAD;
const SOS: usize = Vocab::SOS;
const EOS: usize = Vocab::EOS;

const LINES: [&str; 6] = [
    "HE HOPED THERE WOULD BE STEW FOR DINNER",
    "THE CAPTAIN'S BOAT WON'T BE BACK BEFORE THE TIDE TURNS",
    "SHE SAID NOTHING BUT LOOKED AT THE OLD MAN'S HANDS",
    "THE OLD MAN SAID NOTHING",
    "",
    "  the   Tide turns ",
];

fn vocab() -> Vocab {
    Vocab::librispeech()
}

fn ids(text: &str) -> Vec<usize> {
    let mut h = vec![SOS];
    h.extend(vocab().encode(text));
    h
}

fn model(lines: &[&str], order: usize) -> CharLm {
    CharLm::train(lines.iter().copied(), &vocab(), order).unwrap()
}

/// Histories of every kind: just `<sos>`, seen, partly seen, never seen, with unknown
/// characters, with tokens that never occur in a context, and empty.
fn histories() -> Vec<Vec<usize>> {
    let mut hs = vec![
        ids(""),
        ids("the"),
        ids("the old man"),
        ids("he hoped there would be stew for dinner"),
        ids("the old zqx"),
        ids("zqxj"),
        ids("qq"),
        ids("é the"),
        ids("x'"),
        ids("the "),
        vec![],
        vec![SOS, 6, PAD, 25],
        vec![SOS, 25, EOS, 6],
        vec![SOS, 25, 12, SOS, 6],
        vec![SOS, 400, 12],
        vec![usize::MAX, 25, 12],
    ];
    hs.push(ids(
        "the captain's boat won't be back before the tide turns",
    ));
    hs
}

fn assert_proper(lm: &CharLm, history: &[usize]) {
    let lp = lm.log_probs(history);
    assert_eq!(lp.len(), 32);
    let sum: f64 = lp.iter().map(|&x| f64::from(x).exp()).sum();
    assert!(
        (sum - 1.0).abs() < 1e-4,
        "order {}: probabilities after {history:?} sum to {sum}",
        lm.order()
    );
    assert_eq!(lp[PAD], f32::NEG_INFINITY, "after {history:?}");
    assert_eq!(lp[SOS], f32::NEG_INFINITY, "after {history:?}");
    for (t, &x) in lp.iter().enumerate() {
        if t != PAD && t != SOS {
            assert!(x.is_finite() && x < 0.0, "token {t} after {history:?}: {x}");
        }
        assert_eq!(
            lm.log_prob(history, t).to_bits(),
            x.to_bits(),
            "log_prob and log_probs disagree on token {t} after {history:?}"
        );
    }
    assert_eq!(lm.log_prob(history, 32), f32::NEG_INFINITY);
}

#[test]
fn every_distribution_sums_to_one_and_never_predicts_pad_or_sos() {
    for order in 1..=7 {
        let lm = model(&LINES, order);
        assert_eq!(lm.order(), order);
        for h in histories() {
            assert_proper(&lm, &h);
        }
    }
}

#[test]
fn only_the_last_order_minus_one_tokens_matter() {
    let lm = model(&LINES, 3);
    let a = lm.log_probs(&ids("zzzz the old ma"));
    let b = lm.log_probs(&ids("the old ma"));
    let c = lm.log_probs(&[7, 18, 6]); // anything, then "ma"
    assert_eq!(a, b);
    assert_eq!(a, c);
    // ... and they do matter: "ma" and "a" give different distributions.
    assert_ne!(a, lm.log_probs(&ids("the old ba")));
}

/// Corpus `ab`, `ab`, `b`, order 2; `s` is `<sos>`, `e` is `<eos>`, 30 symbols are
/// predictable.
///
/// Unigrams use continuation counts (distinct left neighbours): a 1 (s), b 2 (a, s),
/// e 1 (b); total 4. Counts of counts n1 = 2, n2 = 1, n3 = n4 = 0, so Y = 2 / (2 + 2)
/// = 0.5, D1 = 1 - 2 * 0.5 * 1 / 2 = 0.5; D2 = 2 - 3 * 0.5 * 0 / 1 = 2 is not below 2,
/// so it falls back to 1.0 (D3 is 0/0: 1.5, unused).
/// gamma() = (0.5 + 1.0 + 0.5) / 4 = 0.5, so
///   p(a) = p(e) = 0.5 / 4 + 0.5 / 30 = 0.1416667, p(b) = 1 / 4 + 0.5 / 30 = 0.2666667,
///   any other symbol 0.5 / 30 = 0.0166667.
///
/// Bigrams are the highest order, so raw counts: sa 2, sb 1, ab 2, be 3. n1 = 1,
/// n2 = 2, n3 = 1, n4 = 0: Y = 1 / 5 = 0.2, D1 = 1 - 2 * 0.2 * 2 / 1 = 0.2,
/// D2 = 2 - 3 * 0.2 * 1 / 2 = 1.7, D3 = 3 - 0 = 3 is not below 3: 1.5.
///   after a: total 2, gamma = 1.7 / 2 = 0.85;
///     p(b|a) = (2 - 1.7) / 2 + 0.85 * 0.2666667 = 0.3766667
///     p(e|a) = 0.85 * 0.1416667 = 0.1204167 (unseen: backs off)
///   after b: total 3, gamma = 1.5 / 3 = 0.5; p(e|b) = 1.5 / 3 + 0.5 * 0.1416667 = 0.5708333
///   after s: total 3, gamma = (1.7 + 0.2) / 3 = 0.6333333;
///     p(a|s) = 0.3 / 3 + 0.6333333 * 0.1416667 = 0.1897222
///     p(b|s) = 0.8 / 3 + 0.6333333 * 0.2666667 = 0.4355556
///   after z (never seen): the unigram distribution.
#[test]
fn order_two_matches_hand_computation() {
    let lm = model(&["ab", "AB", "b"], 2);
    let (a, b, z) = (6, 7, 31);
    let p = |h: &[usize], w: usize| f64::from(lm.log_prob(h, w)).exp();
    let cases = [
        (vec![SOS, a], b, 0.3766667),
        (vec![SOS, a], EOS, 0.1204167),
        (vec![SOS, b], EOS, 0.5708333),
        (vec![SOS], a, 0.1897222),
        (vec![SOS], b, 0.4355556),
        (vec![SOS, z], a, 0.1416667),
        (vec![SOS, z], b, 0.2666667),
        (vec![SOS, z], z, 0.0166667),
        (vec![SOS, a], z, 0.85 * 0.0166667),
    ];
    for (h, w, expected) in cases {
        let got = p(&h, w);
        assert!(
            (got - expected).abs() < 2e-6,
            "p({w} | {h:?}) = {got}, expected {expected}"
        );
    }
}

/// Corpus `a`, order 1 (raw counts): a 1, e 1. n1 = 2, n2 = 0: Y = 1, D1 = 1 - 0 = 1
/// is not below 1, so 0.5; gamma = (0.5 + 0.5) / 2 = 0.5.
/// p(a) = p(e) = 0.5 / 2 + 0.5 / 30 = 0.2666667; others 0.5 / 30.
#[test]
fn order_one_matches_hand_computation() {
    let lm = model(&["a"], 1);
    for h in [vec![SOS], vec![SOS, 6, 6, 6]] {
        let p: Vec<f64> = lm
            .log_probs(&h)
            .iter()
            .map(|&x| f64::from(x).exp())
            .collect();
        assert!((p[6] - 0.2666667).abs() < 1e-6, "{}", p[6]);
        assert!((p[EOS] - 0.2666667).abs() < 1e-6, "{}", p[EOS]);
        assert!((p[7] - 0.5 / 30.0).abs() < 1e-7, "{}", p[7]);
        assert!((p[Vocab::UNK] - 0.5 / 30.0).abs() < 1e-7);
    }
}

/// Interpolated modified Kneser-Ney written straight from its definition, with
/// n-grams as vectors and counts recomputed from scratch.
struct Reference {
    order: usize,
    /// Context -> (token, adjusted count).
    table: HashMap<Vec<usize>, Vec<(usize, u64)>>,
    /// By n-gram order - 1: D1, D2, D3+.
    discounts: Vec<[f64; 3]>,
}

impl Reference {
    fn new(lines: &[String], order: usize) -> Reference {
        let v = vocab();
        let mut raw: HashMap<Vec<usize>, u64> = HashMap::new();
        for line in lines {
            let mut s = vec![SOS];
            s.extend(v.encode(line));
            if s.len() == 1 {
                continue;
            }
            s.push(EOS);
            for i in 1..s.len() {
                for k in 0..=(order - 1).min(i) {
                    *raw.entry(s[i - k..=i].to_vec()).or_default() += 1;
                }
            }
        }
        let mut left_neighbours: HashMap<Vec<usize>, u64> = HashMap::new();
        for g in raw.keys() {
            if g.len() >= 2 {
                *left_neighbours.entry(g[1..].to_vec()).or_default() += 1;
            }
        }
        let mut table: HashMap<Vec<usize>, Vec<(usize, u64)>> = HashMap::new();
        let mut count_of_counts = vec![[0u64; 5]; order];
        for (g, &c) in &raw {
            let a = if g.len() == order || g[0] == SOS {
                c
            } else {
                left_neighbours[g]
            };
            let (h, w) = g.split_at(g.len() - 1);
            table.entry(h.to_vec()).or_default().push((w[0], a));
            if a <= 4 {
                count_of_counts[g.len() - 1][a as usize] += 1;
            }
        }
        let discounts = count_of_counts
            .iter()
            .map(|n| {
                let n: Vec<f64> = n.iter().map(|&x| x as f64).collect();
                let y = n[1] / (n[1] + 2.0 * n[2]);
                let mut d = [0.0; 3];
                for r in 1..=3 {
                    let x = r as f64 - (r as f64 + 1.0) * y * n[r + 1] / n[r];
                    d[r - 1] = if x > 0.0 && x < r as f64 {
                        x
                    } else {
                        [0.5, 1.0, 1.5][r - 1]
                    };
                }
                d
            })
            .collect();
        Reference {
            order,
            table,
            discounts,
        }
    }

    fn prob(&self, history: &[usize], w: usize) -> f64 {
        if w == PAD || w == SOS {
            return 0.0;
        }
        let keep = history.len().min(self.order - 1);
        self.p(&history[history.len() - keep..], w)
    }

    fn p(&self, h: &[usize], w: usize) -> f64 {
        let lower = if h.is_empty() {
            1.0 / 30.0
        } else {
            self.p(&h[1..], w)
        };
        let Some(entries) = self.table.get(h) else {
            return lower;
        };
        let d = self.discounts[h.len()];
        let disc = |a: u64| d[(a.min(3) - 1) as usize];
        let total: f64 = entries.iter().map(|e| e.1 as f64).sum();
        let gamma: f64 = entries.iter().map(|e| disc(e.1)).sum::<f64>() / total;
        let own = entries
            .iter()
            .find(|e| e.0 == w)
            .map_or(0.0, |e| (e.1 as f64 - disc(e.1)) / total);
        own + gamma * lower
    }
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Lines over a few letters, so that n-grams repeat and every count class occurs;
/// some upper case, unknown characters, extra spaces, empty lines.
fn random_lines(seed: u64, n: usize) -> Vec<String> {
    let alphabet = ['a', 'b', 'b', 'c', ' ', '\'', 'A', 'é', 'a', 'b'];
    let mut rng = Lcg(seed);
    (0..n)
        .map(|_| {
            let len = rng.next(14);
            (0..len)
                .map(|_| alphabet[rng.next(alphabet.len())])
                .collect()
        })
        .collect()
}

#[test]
fn matches_a_direct_transcription_of_the_formula() {
    for (seed, order) in [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 3)] {
        let lines = random_lines(seed, 40);
        let lm = CharLm::train(&lines, &vocab(), order).unwrap();
        let reference = Reference::new(&lines, order);
        let mut rng = Lcg(seed + 100);
        let mut hs = histories();
        for _ in 0..60 {
            let len = rng.next(8);
            let mut h = vec![SOS];
            h.extend((0..len).map(|_| [4, 5, 6, 7, 8, 3, 9][rng.next(7)]));
            hs.push(h);
        }
        for h in &hs {
            let lp = lm.log_probs(h);
            for (w, &x) in lp.iter().enumerate() {
                let expected = reference.prob(h, w);
                let got = f64::from(x).exp();
                assert!(
                    (got - expected).abs() <= 1e-6 * expected.max(1e-3),
                    "order {order}, seed {seed}: p({w} | {h:?}) = {got}, reference {expected}"
                );
            }
        }
    }
}

#[test]
fn higher_orders_fit_their_training_text_better() {
    let ppl: Vec<f64> = (1..=6)
        .map(|order| model(&LINES, order).perplexity(LINES))
        .collect();
    for pair in ppl.windows(2) {
        assert!(pair[1] < pair[0], "perplexities by order 1..=6: {ppl:?}");
    }
    assert!(ppl[0] < 30.0, "a unigram model beats uniform: {ppl:?}");
    assert!(ppl[4] < 0.5 * ppl[0], "{ppl:?}");

    let held_out = ["THE BOATMAN SAID NOTHING OF THE QUIZ", "xyzzy"];
    for order in [1, 3, 6] {
        let lm = model(&LINES, order);
        let p = lm.perplexity(held_out);
        assert!(p.is_finite() && p > 1.0, "order {order}: {p}");
        // Perplexity is per predicted symbol, `<eos>` included, empty lines skipped.
        let (lp, n) = lm.sentence_log_prob("xyzzy");
        assert_eq!(n, 6);
        assert_eq!(lm.sentence_log_prob("   "), (0.0, 0));
        let one = lm.perplexity(["xyzzy", ""]);
        assert!((one - (-lp / 6.0).exp()).abs() < 1e-9 * one);
    }
    assert!(model(&LINES, 3).perplexity([""]).is_nan());
}

#[test]
fn training_refuses_bad_orders_and_no_text() {
    for order in [0, MAX_ORDER + 1] {
        let e = CharLm::train(LINES, &vocab(), order).unwrap_err();
        assert!(matches!(e, Error::Lm(_)), "{e}");
        assert!(e.to_string().contains("order"), "{e}");
    }
    assert!(CharLm::train(LINES, &vocab(), MAX_ORDER).is_ok());
    let e = CharLm::train(["", "   "], &vocab(), 3).unwrap_err();
    assert!(matches!(e, Error::Lm(_)), "{e}");
    // Lines may be owned strings too.
    let owned: Vec<String> = LINES.iter().map(|s| s.to_string()).collect();
    let lm = CharLm::train(owned, &vocab(), 3).unwrap();
    assert_eq!(
        lm.log_probs(&ids("the")),
        model(&LINES, 3).log_probs(&ids("the"))
    );
}

// ---------------------------------------------------------------------------------
// File format.

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("lasr-decode-lm-{}-{name}", std::process::id()))
}

/// The format's checksum, as another tool would compute it from the documentation.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn reseal(bytes: &mut [u8]) {
    let n = bytes.len() - 8;
    let sum = fnv1a64(&bytes[..n]);
    bytes[n..].copy_from_slice(&sum.to_le_bytes());
}

fn file_kind(r: lasr_decode::Result<CharLm>) -> LmFileErrorKind {
    match r {
        Ok(_) => panic!("damaged bytes were accepted"),
        Err(Error::LmFile { kind, .. }) => kind,
        Err(e) => panic!("not a file error: {e}"),
    }
}

#[test]
fn round_trip_keeps_every_log_prob() {
    for order in [1, 2, 5] {
        let lm = model(&LINES, order);
        let bytes = lm.to_bytes();
        let back = CharLm::from_bytes(&bytes, &vocab()).unwrap();
        assert_eq!(back.order(), order);
        assert_eq!(back.num_contexts(), lm.num_contexts());
        assert_eq!(back.num_entries(), lm.num_entries());
        assert_eq!(back.to_bytes(), bytes);
        for h in histories() {
            let (a, b) = (lm.log_probs(&h), back.log_probs(&h));
            let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "after {h:?}");
        }

        let path = temp_path(&format!("round-trip-{order}.lm"));
        lm.save(&path).unwrap();
        let loaded = CharLm::load(&path, &vocab()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded.to_bytes(), bytes);
    }
}

#[test]
fn header_is_as_documented() {
    let lm = model(&LINES, 4);
    let b = lm.to_bytes();
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    assert_eq!(&b[..8], &FORMAT_MAGIC);
    assert_eq!(&b[..8], b"LASR-CLM");
    assert_eq!(u32_at(8), FORMAT_VERSION);
    assert_eq!(FORMAT_VERSION, 1);
    assert_eq!(u32_at(12), 4);
    assert_eq!(u32_at(16), 32);
    // First symbol: length 5, "<pad>".
    assert_eq!(u32_at(20), 5);
    assert_eq!(&b[24..29], b"<pad>");
    let n = b.len() - 8;
    assert_eq!(
        u64::from_le_bytes(b[n..].try_into().unwrap()),
        fnv1a64(&b[..n])
    );
    // Symbols, then context and entry counts, then 12 bytes per context and 6 per entry.
    let symbols: usize = vocab().symbols().iter().map(|s| 4 + s.len()).sum();
    let at = 20 + symbols;
    assert_eq!(u32_at(at) as usize, lm.num_contexts());
    assert_eq!(u32_at(at + 4) as usize, lm.num_entries());
    assert_eq!(
        b.len(),
        at + 8 + 12 * lm.num_contexts() + 6 * lm.num_entries() + 8
    );
}

#[test]
fn damaged_bytes_are_errors() {
    let lm = model(&LINES, 3);
    let bytes = lm.to_bytes();
    for len in (0..bytes.len())
        .step_by(7)
        .chain([bytes.len() - 1, 11, 12, 13])
    {
        let kind = file_kind(CharLm::from_bytes(&bytes[..len], &vocab()));
        assert!(
            matches!(kind, LmFileErrorKind::Damaged),
            "truncated to {len}: {kind}"
        );
    }
    for i in [20, bytes.len() / 2, bytes.len() - 30, bytes.len() - 1] {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        let kind = file_kind(CharLm::from_bytes(&b, &vocab()));
        assert!(matches!(kind, LmFileErrorKind::Damaged), "byte {i}: {kind}");
    }
    let mut b = bytes.clone();
    b[0] = b'X';
    assert!(matches!(
        file_kind(CharLm::from_bytes(&b, &vocab())),
        LmFileErrorKind::NotALanguageModel
    ));
    assert!(matches!(
        file_kind(CharLm::from_bytes(b"{\"symbols\": []}", &vocab())),
        LmFileErrorKind::NotALanguageModel
    ));
    let mut b = bytes.clone();
    b[8] = 2;
    reseal(&mut b);
    match file_kind(CharLm::from_bytes(&b, &vocab())) {
        LmFileErrorKind::UnsupportedVersion { found, supported } => {
            assert_eq!((found, supported), (2, 1))
        }
        k => panic!("{k}"),
    }
    let mut b = bytes.clone();
    b.extend_from_slice(&[0; 6]);
    b.extend_from_slice(&[0; 8]);
    reseal(&mut b);
    assert!(matches!(
        file_kind(CharLm::from_bytes(&b, &vocab())),
        LmFileErrorKind::Malformed(_)
    ));
}

/// Bytes altered anywhere, then given a valid checksum (as a buggy writer would):
/// an error or a model that still gives log-probabilities <= 0, never a panic.
#[test]
fn resealed_garbage_never_panics() {
    let lm = model(&LINES, 4);
    let bytes = lm.to_bytes();
    let mut rng = Lcg(42);
    let mut accepted = 0;
    for round in 0..3000 {
        let mut b = bytes.clone();
        match round % 3 {
            0 => {
                let i = rng.next(b.len() - 8);
                b[i] ^= 1 << rng.next(8);
            }
            1 => {
                let i = 12 + rng.next(b.len() - 20);
                b[i] = [0x00, 0xff, 0x7f, 0x80][rng.next(4)];
            }
            _ => {
                let cut = 12 + rng.next(b.len() - 20);
                b.truncate(cut);
                b.extend_from_slice(&[0; 8]);
            }
        }
        reseal(&mut b);
        if let Ok(m) = CharLm::from_bytes(&b, &vocab()) {
            accepted += 1;
            for h in histories() {
                assert!(m.log_probs(&h).iter().all(|&x| x <= 0.0 && !x.is_nan()));
            }
        }
    }
    // Flipped bits in float values are only caught by the checksum.
    assert!(accepted < 3000);
}

#[test]
fn another_vocabulary_is_refused_and_the_error_names_the_file() {
    let lm = model(&LINES, 3);
    let path = temp_path("other-vocab.lm");
    lm.save(&path).unwrap();
    let mut symbols: Vec<String> = vocab().symbols().to_vec();
    symbols.swap(6, 7);
    let swapped = Vocab::new(symbols.clone()).unwrap();
    let e = CharLm::load(&path, &swapped).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    let message = e.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("id 6"), "{message}");
    match e.lm_file_kind() {
        Some(LmFileErrorKind::VocabMismatch { expected, found }) => {
            assert_eq!(expected, &symbols);
            assert_eq!(found, vocab().symbols());
        }
        k => panic!("{k:?}"),
    }
    symbols.pop();
    let shorter = Vocab::new(symbols).unwrap();
    let kind = file_kind(CharLm::from_bytes(&lm.to_bytes(), &shorter));
    assert!(
        matches!(kind, LmFileErrorKind::VocabMismatch { .. }),
        "{kind}"
    );

    let missing = temp_path("missing.lm");
    let e = CharLm::load(&missing, &vocab()).unwrap_err();
    assert!(
        matches!(e.lm_file_kind(), Some(LmFileErrorKind::Io(_))),
        "{e}"
    );
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------
// Shallow fusion.

#[derive(Debug, thiserror::Error)]
#[error("table decoder failed")]
struct TableError;

/// A decoder over the LibriSpeech symbols whose log-probabilities after a prefix
/// (tokens emitted, without `<sos>`) are `f(prefix)`; state rows are the prefixes.
struct Table<F> {
    f: F,
    v: usize,
    fail: bool,
    selects: Cell<usize>,
}

impl<F: Fn(&[usize]) -> Vec<f32>> Table<F> {
    fn new(f: F) -> Self {
        Table {
            f,
            v: 32,
            fail: false,
            selects: Cell::new(0),
        }
    }
}

impl<F: Fn(&[usize]) -> Vec<f32>> Decoder for Table<F> {
    type State = Vec<Vec<usize>>;
    type Error = TableError;

    fn vocab_size(&self) -> usize {
        self.v
    }
    fn sos(&self) -> usize {
        SOS
    }
    fn eos(&self) -> usize {
        EOS
    }
    fn encoder_len(&self) -> usize {
        40
    }
    fn initial(&self) -> Result<Self::State, TableError> {
        Ok(vec![vec![]])
    }
    fn step(&self, prev: &[usize], state: Self::State) -> Result<Step<Self::State>, TableError> {
        if self.fail {
            return Err(TableError);
        }
        let mut log_probs = Vec::new();
        let mut peaks = Vec::new();
        let mut next = Vec::new();
        for (&p, mut row) in prev.iter().zip(state) {
            if p != SOS {
                row.push(p);
            }
            log_probs.extend((self.f)(&row));
            peaks.push(row.len() % 40);
            next.push(row);
        }
        Ok(Step {
            log_probs,
            state: next,
            attention_peaks: Some(peaks),
        })
    }
    fn select(&self, state: Self::State, rows: &[usize]) -> Result<Self::State, TableError> {
        self.selects.set(self.selects.get() + 1);
        Ok(rows.iter().map(|&r| state[r].clone()).collect())
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A pseudo-random log-softmax over 32 symbols for each prefix, `<eos>` more likely
/// as the prefix grows.
fn random_model(seed: u64) -> impl Fn(&[usize]) -> Vec<f32> {
    move |prefix: &[usize]| {
        let mut s = prefix.iter().fold(seed, |h, &t| splitmix(h ^ t as u64));
        let logits: Vec<f64> = (0..32)
            .map(|t| {
                s = splitmix(s);
                let x = (s >> 11) as f64 / (1u64 << 53) as f64 * 6.0 - 3.0;
                if t == EOS {
                    x + prefix.len() as f64 * 0.4 - 2.0
                } else {
                    x
                }
            })
            .collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z = m + logits.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        logits.iter().map(|x| (x - z) as f32).collect()
    }
}

fn opts(beam: usize, norm: LengthNorm) -> SearchOptions {
    SearchOptions {
        beam_size: beam,
        max_len: 12,
        max_len_per_frame: None,
        length_norm: norm,
        eos_threshold: None,
    }
}

#[test]
fn weight_zero_gives_exactly_the_decoders_results() {
    let lm = model(&LINES, 4);
    for seed in 0..6 {
        let inner = Table::new(random_model(seed));
        let fused = Fused::new(&inner, &lm, 0.0).unwrap();
        for norm in [
            LengthNorm::None,
            LengthNorm::Bonus(0.3),
            LengthNorm::Power(1.0),
        ] {
            let o = opts(1, norm);
            assert_eq!(greedy(&fused, &o).unwrap(), greedy(&inner, &o).unwrap());
            for beam in [1, 3, 8] {
                let o = opts(beam, norm);
                let a = beam_search(&fused, &o).unwrap();
                let b = beam_search(&inner, &o).unwrap();
                assert_eq!(a, b, "seed {seed}, beam {beam}, {norm:?}");
            }
        }
    }
}

/// The fused log-probability of a hypothesis, summed as the search sums it.
fn fused_log_prob(
    f: &impl Fn(&[usize]) -> Vec<f32>,
    lm: &CharLm,
    weight: f32,
    h: &Hypothesis,
) -> f64 {
    let mut tokens = h.tokens.clone();
    if h.finished {
        tokens.push(EOS);
    }
    let mut total = 0.0f64;
    for j in 0..tokens.len() {
        let inner = f(&tokens[..j])[tokens[j]];
        let mut history = vec![SOS];
        history.extend_from_slice(&tokens[..j]);
        total += f64::from(inner + weight * lm.log_prob(&history, tokens[j]));
    }
    total
}

#[test]
fn fused_scores_are_the_decoders_plus_weighted_lm_along_each_hypothesis() {
    let mut checked = 0;
    for order in [1, 2, 4] {
        let lm = model(&LINES, order);
        for seed in 0..4 {
            let f = random_model(seed);
            let inner = Table::new(random_model(seed));
            let fused = Fused::new(&inner, &lm, 0.7).unwrap();
            // Power normalisation runs the search to the length limit, so many
            // hypotheses finish.
            let hyps = beam_search(&fused, &opts(6, LengthNorm::Power(1.0))).unwrap();
            checked += hyps.len();
            for h in &hyps {
                assert_eq!(
                    h.log_prob,
                    fused_log_prob(&f, &lm, 0.7, h),
                    "order {order}, seed {seed}: {h:?}"
                );
                assert_eq!(
                    h.attention_peaks.as_deref(),
                    Some(&(0..h.tokens.len()).collect::<Vec<_>>()[..])
                );
            }
            let g = greedy(&fused, &opts(1, LengthNorm::None)).unwrap();
            assert_eq!(g.log_prob, fused_log_prob(&f, &lm, 0.7, &g));
        }
    }
    assert!(checked >= 24, "only {checked} hypotheses checked");
}

/// An "acoustic" model that slightly prefers "teh" to "the"; a model trained on text
/// full of "the" flips that.
#[test]
fn the_lm_flips_the_choice_toward_likely_text() {
    let v = vocab();
    let [t, e, h] = ['t', 'e', 'h'].map(|c| v.id(c).unwrap());
    let f = move |prefix: &[usize]| {
        let mut out = vec![1e-4f32.ln(); 32];
        let mut set = |tok: usize, p: f32| out[tok] = p.ln();
        match prefix {
            [] => set(t, 0.9),
            [_] => {
                set(e, 0.5);
                set(h, 0.45);
            }
            [_, x] if *x == e => set(h, 0.9),
            [_, x] if *x == h => set(e, 0.9),
            _ => set(EOS, 0.9),
        }
        out
    };
    let lm = model(&["the", "the cat", "then", "there is the end", "they"], 3);
    let inner = Table::new(f);
    let text = |tokens: &[usize]| v.decode(tokens);

    let plain = greedy(&inner, &opts(1, LengthNorm::None)).unwrap();
    assert_eq!(text(&plain.tokens), "teh");
    let zero = Fused::new(&inner, &lm, 0.0).unwrap();
    assert_eq!(
        text(&greedy(&zero, &opts(1, LengthNorm::None)).unwrap().tokens),
        "teh"
    );

    let fused = Fused::new(&inner, &lm, 0.5).unwrap();
    let g = greedy(&fused, &opts(1, LengthNorm::None)).unwrap();
    assert_eq!(text(&g.tokens), "the");
    assert!(g.finished);
    let b = beam_search(&fused, &opts(4, LengthNorm::None)).unwrap();
    assert_eq!(text(&b[0].tokens), "the");

    // Fused log-probabilities never exceed the decoder's, and `<pad>`/`<sos>` are
    // ruled out.
    let s0 = fused.initial().unwrap();
    let out = fused.step(&[SOS], s0).unwrap();
    let raw = f(&[]);
    for (tok, (&x, &r)) in out.log_probs.iter().zip(&raw).enumerate() {
        assert!(x <= r, "token {tok}");
    }
    assert_eq!(out.log_probs[PAD], f32::NEG_INFINITY);
    assert_eq!(out.log_probs[SOS], f32::NEG_INFINITY);
}

#[test]
fn fused_state_tracks_the_last_tokens_through_select() {
    let lm = model(&LINES, 3);
    let inner = Table::new(random_model(9));
    let fused = Fused::new(&inner, &lm, 1.0).unwrap();
    let s = fused.initial().unwrap();
    assert_eq!(s.rows(), 1);
    assert_eq!(s.history(0), &[] as &[usize]);
    let s = fused.step(&[SOS], s).unwrap().state;
    assert_eq!(s.history(0), &[SOS]);
    let s = fused.select(s, &[0, 0, 0]).unwrap();
    let out = fused.step(&[6, 7, 8], s).unwrap();
    assert_eq!(out.state.inner, vec![vec![6], vec![7], vec![8]]);
    assert_eq!(out.state.history(1), &[SOS, 7]);
    // Each row's log-probabilities use its own history.
    for (row, tok) in [6, 7, 8].into_iter().enumerate() {
        let lmp = lm.log_probs(&[SOS, tok]);
        let raw = random_model(9)(&[tok]);
        for w in 0..32 {
            assert_eq!(out.log_probs[row * 32 + w], raw[w] + lmp[w]);
        }
    }
    let s = fused.select(out.state, &[2, 0]).unwrap();
    assert_eq!(s.history(0), &[SOS, 8]);
    assert_eq!(s.history(1), &[SOS, 6]);
    let out = fused.step(&[9, 10], s).unwrap();
    assert_eq!(out.state.history(0), &[8, 9]);
    assert_eq!(out.state.history(1), &[6, 10]);
    assert_eq!(inner.selects.get(), 2);

    let e = fused.select(out.state, &[2]).unwrap_err();
    assert!(matches!(e, Error::Contract(_)), "{e}");
    let s = fused.initial().unwrap();
    let e = fused.step(&[SOS, SOS], s).unwrap_err();
    assert!(matches!(e, Error::Contract(_)), "{e}");
}

#[test]
fn mismatched_decoders_and_bad_weights_are_refused() {
    let lm = model(&LINES, 3);
    let mut narrow = Table::new(random_model(1));
    narrow.v = 30;
    assert!(matches!(Fused::new(&narrow, &lm, 0.5), Err(Error::Lm(_))));
    let direct = Fused {
        decoder: &narrow,
        lm: &lm,
        weight: 0.5,
    };
    let e = greedy(&direct, &opts(1, LengthNorm::None)).unwrap_err();
    assert!(matches!(e, Error::Lm(_)), "{e}");

    let inner = Table::new(random_model(1));
    for w in [-0.1, f32::NAN, f32::INFINITY] {
        assert!(
            matches!(Fused::new(&inner, &lm, w), Err(Error::Lm(_))),
            "{w}"
        );
        let direct = Fused {
            decoder: &inner,
            lm: &lm,
            weight: w,
        };
        let e = beam_search(&direct, &opts(3, LengthNorm::None)).unwrap_err();
        assert!(matches!(e, Error::Lm(_)), "{e}");
    }
}

#[test]
fn the_decoders_own_errors_surface_unwrapped() {
    let lm = model(&LINES, 3);
    let mut inner = Table::new(random_model(1));
    inner.fail = true;
    let fused = Fused::new(&inner, &lm, 0.5).unwrap();
    for e in [
        greedy(&fused, &opts(1, LengthNorm::None)).unwrap_err(),
        beam_search(&fused, &opts(3, LengthNorm::None)).unwrap_err(),
    ] {
        match e {
            Error::Decoder(source) => assert!(source.downcast_ref::<TableError>().is_some()),
            e => panic!("{e}"),
        }
    }
}
