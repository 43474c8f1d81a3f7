//! CTC prefix beam search against brute-force sums over every frame path, on spiky
//! synthetic outputs, and fused with a small character model.

use std::collections::HashMap;

use lasr_decode::{
    beam_search, ctc_beam_search, ctc_beam_search_with, CharLm, CtcHypothesis, CtcSearchOptions,
    Decoder, Error, JointCtc, Lexicon, SearchOptions, Step, Vocab, WordLm, Words,
};

const BLANK: usize = 0;

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in [0, 1).
fn uniform(state: &mut u64) -> f64 {
    *state = splitmix(*state);
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

/// Row-wise log-softmax of `logits` `[T, V]`.
fn log_softmax(logits: &[f64], v: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(v) {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        out.extend(row.iter().map(|x| (x - lse) as f32));
    }
    out
}

/// Random log-probabilities `[t, v]`; `scale` sets how peaked the rows are.
fn random_log_probs(seed: u64, t: usize, v: usize, scale: f64) -> Vec<f32> {
    let mut s = seed;
    let logits: Vec<f64> = (0..t * v).map(|_| scale * uniform(&mut s)).collect();
    log_softmax(&logits, v)
}

fn collapse(path: &[usize]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut prev = None;
    for &s in path {
        if s != BLANK && prev != Some(s) {
            out.push(s);
        }
        prev = Some(s);
    }
    out
}

/// Start frame of each symbol of `collapse(path)`.
fn starts(path: &[usize]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut prev = None;
    for (t, &s) in path.iter().enumerate() {
        if s != BLANK && prev != Some(s) {
            out.push(t);
        }
        prev = Some(s);
    }
    out
}

struct Labelling {
    prob: f64,
    best_path_prob: f64,
    best_path_starts: Vec<usize>,
}

/// Every labelling's probability, summed over all `v^t` paths, with its most probable
/// path.
fn brute_force(log_probs: &[f32], t: usize, v: usize) -> HashMap<Vec<usize>, Labelling> {
    let mut out: HashMap<Vec<usize>, Labelling> = HashMap::new();
    let mut path = vec![0usize; t];
    for mut code in 0..v.pow(t as u32) {
        for s in path.iter_mut() {
            *s = code % v;
            code /= v;
        }
        let lp: f64 = path
            .iter()
            .enumerate()
            .map(|(f, &s)| f64::from(log_probs[f * v + s]))
            .sum();
        let p = lp.exp();
        let l = out.entry(collapse(&path)).or_insert(Labelling {
            prob: 0.0,
            best_path_prob: 0.0,
            best_path_starts: Vec::new(),
        });
        l.prob += p;
        if p > l.best_path_prob {
            l.best_path_prob = p;
            l.best_path_starts = starts(&path);
        }
    }
    out
}

/// `ln(e^a + e^b)`, exact for `-inf` arguments.
fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        hi
    } else {
        hi + (lo - hi).exp().ln_1p()
    }
}

/// `ln p(labels)` by the CTC forward algorithm over `log_probs` `[t, v]`.
fn ctc_forward(log_probs: &[f32], t: usize, v: usize, labels: &[usize]) -> f64 {
    let ext: Vec<usize> = (0..2 * labels.len() + 1)
        .map(|s| if s % 2 == 0 { BLANK } else { labels[s / 2] })
        .collect();
    let n = ext.len();
    if t == 0 {
        return if labels.is_empty() {
            0.0
        } else {
            f64::NEG_INFINITY
        };
    }
    let y = |f: usize, s: usize| f64::from(log_probs[f * v + ext[s]]);
    let mut alpha = vec![f64::NEG_INFINITY; n];
    alpha[0] = y(0, 0);
    if n > 1 {
        alpha[1] = y(0, 1);
    }
    for f in 1..t {
        let prev = alpha.clone();
        for s in 0..n {
            let mut a = prev[s];
            if s >= 1 {
                a = log_add(a, prev[s - 1]);
            }
            if s >= 2 && ext[s] != BLANK && ext[s] != ext[s - 2] {
                a = log_add(a, prev[s - 2]);
            }
            alpha[s] = a + y(f, s);
        }
    }
    if n > 1 {
        log_add(alpha[n - 1], alpha[n - 2])
    } else {
        alpha[n - 1]
    }
}

fn opts(beam_size: usize, prune: Option<f32>) -> CtcSearchOptions {
    CtcSearchOptions {
        beam_size,
        prune,
        ..CtcSearchOptions::default()
    }
}

fn search(
    log_probs: &[f32],
    v: usize,
    lm: Option<&CharLm>,
    options: &CtcSearchOptions,
) -> Vec<CtcHypothesis> {
    ctc_beam_search(log_probs, log_probs.len() / v, v, BLANK, lm, options).unwrap()
}

#[test]
fn a_beam_holding_every_prefix_gives_every_labelling_its_exact_probability() {
    let v = 4;
    for case in 0..150u64 {
        let t = 1 + (case % 5) as usize;
        let scale = [0.5, 2.0, 6.0][(case / 5 % 3) as usize];
        let lp = random_log_probs(case, t, v, scale);
        let exact = brute_force(&lp, t, v);
        // 1 + 3 + ... + 3^5 = 364 labellings at most: the beam never drops one.
        let hyps = search(&lp, v, None, &opts(400, None));
        assert_eq!(hyps.len(), exact.len(), "case {case}");
        let mut seen = std::collections::HashSet::new();
        for (i, h) in hyps.iter().enumerate() {
            let l = &exact[&h.tokens];
            assert!(seen.insert(h.tokens.clone()), "case {case}: duplicate");
            assert!(
                (h.ctc_log_prob - l.prob.ln()).abs() < 1e-5,
                "case {case}: {:?} has ln p {} by search, {} by brute force",
                h.tokens,
                h.ctc_log_prob,
                l.prob.ln()
            );
            assert_eq!(h.score, h.ctc_log_prob);
            assert_eq!(h.lm_log_prob, 0.0);
            assert_eq!(
                h.frames, l.best_path_starts,
                "case {case}: frames of {:?}",
                h.tokens
            );
            if i > 0 {
                assert!(hyps[i - 1].score >= h.score, "case {case}: not sorted");
            }
        }
        let best = exact
            .iter()
            .max_by(|a, b| a.1.prob.total_cmp(&b.1.prob))
            .unwrap();
        assert_eq!(&hyps[0].tokens, best.0, "case {case}");
    }
}

#[test]
fn a_beam_of_64_finds_the_most_probable_labelling() {
    let v = 4;
    for case in 0..200u64 {
        let t = 1 + (case % 5) as usize;
        let scale = [1.0, 3.0, 8.0][(case / 5 % 3) as usize];
        let lp = random_log_probs(1000 + case, t, v, scale);
        let exact = brute_force(&lp, t, v);
        let (best, l) = exact
            .iter()
            .max_by(|a, b| a.1.prob.total_cmp(&b.1.prob))
            .unwrap();
        let hyps = search(&lp, v, None, &opts(64, None));
        assert!(hyps.len() <= 64);
        assert_eq!(&hyps[0].tokens, best, "case {case}");
        assert!(
            (hyps[0].ctc_log_prob - l.prob.ln()).abs() < 1e-5,
            "case {case}: {} by search, {} by brute force",
            hyps[0].ctc_log_prob,
            l.prob.ln()
        );
    }
}

#[test]
fn longer_inputs_match_the_forward_algorithm_while_the_beam_holds_every_prefix() {
    // Blank and `a` over 40 frames: at most 21 labellings (`a` repeated 0 to 20
    // times, a blank between each two); blank, `a`, `b` over 8 frames: at most 511.
    for (v, t, beam) in [(2, 40, 21), (3, 8, 511)] {
        for case in 0..10u64 {
            let lp = random_log_probs(700 + case, t, v, 4.0);
            let hyps = search(&lp, v, None, &opts(beam, None));
            let mut total = 0.0;
            for h in &hyps {
                let forward = ctc_forward(&lp, t, v, &h.tokens);
                assert!(
                    (h.ctc_log_prob - forward).abs() < 1e-6,
                    "V {v}, case {case}, {:?}: {} by search, {forward} by the forward algorithm",
                    h.tokens,
                    h.ctc_log_prob
                );
                total += forward.exp();
            }
            // Every labelling of non-zero probability is listed: they sum to 1.
            assert!((total - 1.0).abs() < 1e-5, "V {v}, case {case}: {total}");
        }
    }
}

#[test]
fn pruned_probabilities_never_exceed_the_forward_algorithms() {
    let (v, t) = (6, 40);
    for case in 0..10u64 {
        // Pruning drops paths from a labelling's sum, it never adds any.
        let lp = random_log_probs(500 + case, t, v, 14.0);
        for options in [opts(1, Some(-3.0)), opts(8, Some(-3.0)), opts(64, None)] {
            let hyps = search(&lp, v, None, &options);
            for h in &hyps {
                let forward = ctc_forward(&lp, t, v, &h.tokens);
                assert!(
                    h.ctc_log_prob <= forward + 1e-9,
                    "case {case}: {} above the forward algorithm's {forward}",
                    h.ctc_log_prob
                );
                assert!(h.frames.windows(2).all(|w| w[0] < w[1]));
                assert_eq!(h.frames.len(), h.tokens.len());
            }
        }
    }
}

fn vocab() -> Vocab {
    Vocab::librispeech()
}

/// Frame rows `[n, 32]` from a spelling: a character is a frame where it has
/// probability 0.9, `_` a frame where the blank has, and the other symbols share the
/// rest.
fn spiky(spelling: &str) -> Vec<f32> {
    let v = vocab();
    let n = v.len();
    let mut out = Vec::new();
    for ch in spelling.chars() {
        let peak = if ch == '_' { BLANK } else { v.id(ch).unwrap() };
        let rest = (0.1f64 / (n - 1) as f64).ln() as f32;
        out.extend((0..n).map(|s| if s == peak { 0.9f64.ln() as f32 } else { rest }));
    }
    out
}

fn text(tokens: &[usize]) -> String {
    vocab().decode(tokens)
}

#[test]
fn a_beam_of_one_spells_a_clear_word() {
    let lp = spiky("_hh_ee_ll_llooo__");
    let hyps = search(&lp, 32, None, &opts(1, Some(-12.0)));
    assert_eq!(hyps.len(), 1);
    assert_eq!(text(&hyps[0].tokens), "hello");
    // And so does every other setting.
    for options in [opts(1, None), opts(16, None), CtcSearchOptions::default()] {
        assert_eq!(text(&search(&lp, 32, None, &options)[0].tokens), "hello");
    }
}

#[test]
fn repeats_merge_unless_a_blank_separates_them() {
    for (spelling, expected) in [
        ("aaa", "a"),
        ("a_a", "aa"),
        ("_aa__a_", "aa"),
        ("heelloo", "helo"),
        ("heel_loo", "hello"),
        ("_", ""),
    ] {
        for beam in [1, 4, 16] {
            let hyps = search(&spiky(spelling), 32, None, &opts(beam, Some(-12.0)));
            assert_eq!(text(&hyps[0].tokens), expected, "{spelling}, beam {beam}");
        }
    }
}

#[test]
fn frames_mark_where_each_token_starts() {
    let spelling = "_hh_eel_llo___";
    let lp = spiky(spelling);
    let h = &search(&lp, 32, None, &CtcSearchOptions::default())[0];
    assert_eq!(text(&h.tokens), "hello");
    assert_eq!(h.frames, vec![1, 4, 6, 8, 10]);
    assert!(h.frames.windows(2).all(|w| w[0] <= w[1]));
    for (&tok, &f) in h.tokens.iter().zip(&h.frames) {
        let row = &lp[f * 32..(f + 1) * 32];
        let argmax = (0..32).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        assert_eq!(argmax, tok, "frame {f}");
    }
}

fn lm() -> CharLm {
    let lines = [
        "the cat sat on the mat",
        "a cat and the cat",
        "the cat ran home",
        "my cat is black",
        "the cat is here",
    ];
    CharLm::train(lines, &vocab(), 4).unwrap()
}

/// `ln p(tokens <eos>)` by the model, summed left to right.
fn lm_log_prob(lm: &CharLm, tokens: &[usize]) -> f64 {
    let mut seq = vec![Vocab::SOS];
    seq.extend(tokens);
    seq.push(Vocab::EOS);
    (1..seq.len())
        .map(|i| f64::from(lm.log_prob(&seq[..i], seq[i])))
        .sum()
}

/// "the cat" where the `c` frame slightly prefers `k`.
fn ambiguous_the_cat() -> Vec<f32> {
    let v = vocab();
    let mut lp = spiky("_tt_h_e_ _");
    let mut frame = vec![(0.05f64 / 28.0).ln() as f32; 32];
    frame[BLANK] = 0.05f64.ln() as f32;
    frame[v.id('k').unwrap()] = 0.5f64.ln() as f32;
    frame[v.id('c').unwrap()] = 0.4f64.ln() as f32;
    lp.extend(frame);
    lp.extend(spiky("_aa_t_"));
    lp
}

#[test]
fn the_language_model_flips_a_close_call_toward_likely_text() {
    let lm = lm();
    let lp = ambiguous_the_cat();
    let plain = search(&lp, 32, None, &CtcSearchOptions::default());
    assert_eq!(text(&plain[0].tokens), "the kat");

    // Weight 0: the model is reported but ranks nothing.
    let reported = search(&lp, 32, Some(&lm), &CtcSearchOptions::default());
    assert_eq!(reported.len(), plain.len());
    for (a, b) in reported.iter().zip(&plain) {
        assert_eq!(a.tokens, b.tokens);
        assert_eq!(a.score, b.score);
        assert!(a.lm_log_prob < 0.0);
    }

    let options = CtcSearchOptions {
        lm_weight: 0.5,
        insertion_bonus: 0.25,
        ..CtcSearchOptions::default()
    };
    let fused = search(&lp, 32, Some(&lm), &options);
    assert_eq!(text(&fused[0].tokens), "the cat");
    for (i, h) in fused.iter().enumerate() {
        let lm_lp = lm_log_prob(&lm, &h.tokens);
        assert!(
            (h.lm_log_prob - lm_lp).abs() < 1e-9,
            "{:?}: {} by search, {lm_lp} by the model",
            text(&h.tokens),
            h.lm_log_prob
        );
        let expected = h.ctc_log_prob + 0.5 * h.lm_log_prob + 0.25 * h.tokens.len() as f64;
        assert!((h.score - expected).abs() < 1e-9);
        if i > 0 {
            assert!(fused[i - 1].score >= h.score);
        }
    }
    // The acoustic probability of the winner is its CTC probability, up to the paths
    // through prefixes the beam dropped (more of them without the model, whose beam
    // was crowded with spellings of "kat").
    let forward = ctc_forward(&lp, lp.len() / 32, 32, &fused[0].tokens);
    let same = plain.iter().find(|h| h.tokens == fused[0].tokens).unwrap();
    for h in [same, &fused[0]] {
        assert!(h.ctc_log_prob <= forward + 1e-9 && h.ctc_log_prob > forward - 0.05);
    }
    assert!(fused[0].ctc_log_prob > forward - 1e-4);
}

#[test]
fn a_lexicon_turns_a_misspelling_into_a_known_word() {
    let v = vocab();
    let lp = ambiguous_the_cat();
    let lex = Lexicon::from_text(&v, "the cat sat").unwrap();
    let with = |penalty: f32| {
        let options = CtcSearchOptions {
            oov_penalty: penalty,
            ..CtcSearchOptions::default()
        };
        ctc_beam_search_with(
            &lp,
            lp.len() / 32,
            32,
            BLANK,
            None,
            Some(Words::List(&lex)),
            &options,
        )
        .unwrap()
    };
    let plain = search(&lp, 32, None, &CtcSearchOptions::default());
    assert_eq!(text(&plain[0].tokens), "the kat");
    // Penalty 0: the lexicon counts unknown words but ranks as before.
    let counted = with(0.0);
    assert_eq!(counted[0].tokens, plain[0].tokens);
    assert_eq!(
        (counted[0].oov_words, counted[0].score),
        (1, plain[0].score)
    );
    // A penalty bigger than the acoustic margin (ln 0.5/0.4 = 0.22) flips it.
    let known = with(1.0);
    assert_eq!(text(&known[0].tokens), "the cat");
    assert_eq!(known[0].oov_words, 0);
    let kat = known.iter().find(|h| text(&h.tokens) == "the kat").unwrap();
    assert_eq!(kat.oov_words, 1);
    assert!((kat.score - (kat.ctc_log_prob - 1.0)).abs() < 1e-9);
    // A word cut short at the end counts as unknown too: "the ca" is not "the cat".
    let lp = {
        let mut lp = spiky("_tt_h_e_ _");
        lp.extend(spiky("_cc_aa_"));
        lp
    };
    let h = &ctc_beam_search_with(
        &lp,
        lp.len() / 32,
        32,
        BLANK,
        None,
        Some(Words::List(&lex)),
        &CtcSearchOptions::default(),
    )
    .unwrap()[0];
    assert_eq!((text(&h.tokens).as_str(), h.oov_words), ("the ca", 1));
    // A lexicon over another vocabulary, or a negative penalty, is refused.
    let small = Vocab::new(["<pad>", "<sos>", "<eos>", "<unk>", "a", " "]).unwrap();
    let other = Lexicon::from_text(&small, "a").unwrap();
    assert!(matches!(
        ctc_beam_search_with(
            &lp,
            lp.len() / 32,
            32,
            BLANK,
            None,
            Some(Words::List(&other)),
            &opts(4, None)
        ),
        Err(Error::Lm(_))
    ));
    let bad = CtcSearchOptions {
        oov_penalty: -1.0,
        ..CtcSearchOptions::default()
    };
    assert!(matches!(
        ctc_beam_search_with(
            &lp,
            lp.len() / 32,
            32,
            BLANK,
            None,
            Some(Words::List(&lex)),
            &bad
        ),
        Err(Error::Options(_))
    ));
}

#[test]
fn fusion_refuses_what_the_model_rules_out() {
    // The CTC head can emit `<sos>` (id 1), which the model gives probability 0.
    let lm = lm();
    let mut lp = spiky("_a_");
    lp[32 + 1] = 0.0; // a frame sure of <sos>
    lp[32 + vocab().id('a').unwrap()] = -3.0;
    let plain = search(&lp, 32, None, &CtcSearchOptions::default());
    assert_eq!(plain[0].tokens, vec![1]);
    let options = CtcSearchOptions {
        lm_weight: 0.1,
        ..CtcSearchOptions::default()
    };
    let fused = search(&lp, 32, Some(&lm), &options);
    assert!(fused.iter().all(|h| !h.tokens.contains(&1)));
    assert!(fused.iter().all(|h| h.score.is_finite()));
}

#[test]
fn degenerate_inputs_give_sane_answers() {
    // No frames: the empty labelling, surely.
    let hyps = ctc_beam_search(&[], 0, 32, BLANK, None, &CtcSearchOptions::default()).unwrap();
    assert_eq!(hyps.len(), 1);
    assert!(hyps[0].tokens.is_empty() && hyps[0].frames.is_empty());
    assert_eq!(hyps[0].ctc_log_prob, 0.0);
    let lm = lm();
    let with_lm =
        ctc_beam_search(&[], 0, 32, BLANK, Some(&lm), &CtcSearchOptions::default()).unwrap();
    assert_eq!(
        with_lm[0].lm_log_prob,
        f64::from(lm.log_prob(&[Vocab::SOS], Vocab::EOS))
    );

    // A frame where nothing is possible: one hypothesis of probability 0, no panic.
    let mut lp = spiky("_ab_");
    for x in &mut lp[64..96] {
        *x = f32::NEG_INFINITY;
    }
    let hyps = search(&lp, 32, None, &CtcSearchOptions::default());
    assert_eq!(hyps.len(), 1);
    assert_eq!(hyps[0].score, f64::NEG_INFINITY);
    assert_eq!(hyps[0].frames.len(), hyps[0].tokens.len());

    // Zero-probability symbols are never emitted, and never listed.
    let mut lp = spiky("ab");
    for (i, x) in lp.iter_mut().enumerate() {
        if i % 32 != 6 && i % 32 != 7 {
            *x = f32::NEG_INFINITY;
        }
    }
    let hyps = search(&lp, 32, None, &opts(16, None));
    assert!(hyps.iter().all(|h| h.score.is_finite()));
    assert!(hyps
        .iter()
        .all(|h| h.tokens.iter().all(|&t| t == 6 || t == 7)));
    // a a, a b, b a, b b: no blank, so neither the empty labelling nor "aa".
    assert_eq!(hyps.len(), 4);
}

#[test]
fn invalid_inputs_are_errors() {
    let lp = spiky("_ab_");
    let ok = CtcSearchOptions::default();
    let input = |r: lasr_decode::Result<Vec<CtcHypothesis>>| {
        let e = r.unwrap_err();
        assert!(matches!(e, Error::Input(_)), "{e:?}");
    };
    input(ctc_beam_search(&lp, 5, 32, BLANK, None, &ok));
    input(ctc_beam_search(&lp[..100], 4, 32, BLANK, None, &ok));
    input(ctc_beam_search(&lp, 4, 0, BLANK, None, &ok));
    input(ctc_beam_search(&lp, usize::MAX, 2, BLANK, None, &ok));
    input(ctc_beam_search(&lp, 4, 32, 32, None, &ok));
    for bad in [f32::NAN, f32::INFINITY] {
        let mut b = lp.clone();
        b[70] = bad;
        input(ctc_beam_search(&b, 4, 32, BLANK, None, &ok));
    }

    for options in [
        opts(0, None),
        CtcSearchOptions {
            lm_weight: -0.1,
            ..ok.clone()
        },
        CtcSearchOptions {
            lm_weight: f32::NAN,
            ..ok.clone()
        },
        CtcSearchOptions {
            insertion_bonus: f32::INFINITY,
            ..ok.clone()
        },
        opts(4, Some(0.5)),
        opts(4, Some(f32::NEG_INFINITY)),
    ] {
        assert!(matches!(options.validate(), Err(Error::Options(_))));
        let e = ctc_beam_search(&lp, 4, 32, BLANK, None, &options).unwrap_err();
        assert!(matches!(e, Error::Options(_)), "{e:?}");
    }

    // A model over other symbols.
    let small = Vocab::new(["<pad>", "<sos>", "<eos>", "<unk>", "a", "b"]).unwrap();
    let lm = CharLm::train(["ab a"], &small, 2).unwrap();
    let e = ctc_beam_search(&lp, 4, 32, BLANK, Some(&lm), &ok).unwrap_err();
    assert!(matches!(e, Error::Lm(_)), "{e:?}");
}

#[test]
fn options_deserialize_with_defaults_and_refuse_unknown_fields() {
    let d: CtcSearchOptions = serde_json::from_str("{}").unwrap();
    assert_eq!(d, CtcSearchOptions::default());
    assert_eq!(d.beam_size, 16);
    assert_eq!(d.prune, Some(-12.0));
    let o: CtcSearchOptions =
        serde_json::from_str(r#"{"beam_size": 4, "lm_weight": 0.3, "prune": null}"#).unwrap();
    assert_eq!((o.beam_size, o.lm_weight, o.prune), (4, 0.3, None));
    assert!(serde_json::from_str::<CtcSearchOptions>(r#"{"beam": 4}"#).is_err());
}

/// "the cat" where the `c` frame slightly prefers `h`: both "the hat" and "the cat"
/// are words.
fn ambiguous_the_hat() -> Vec<f32> {
    let v = vocab();
    let mut lp = spiky("_tt_h_e_ _");
    let mut frame = vec![(0.05f64 / 28.0).ln() as f32; 32];
    frame[BLANK] = 0.05f64.ln() as f32;
    frame[v.id('h').unwrap()] = 0.5f64.ln() as f32;
    frame[v.id('c').unwrap()] = 0.4f64.ln() as f32;
    lp.extend(frame);
    lp.extend(spiky("_aa_t_"));
    lp
}

fn word_search(
    lp: &[f32],
    wlm: &WordLm,
    options: &CtcSearchOptions,
) -> lasr_decode::Result<Vec<CtcHypothesis>> {
    ctc_beam_search_with(
        lp,
        lp.len() / 32,
        32,
        BLANK,
        None,
        Some(Words::Lm(wlm)),
        options,
    )
}

#[test]
fn a_word_model_picks_the_word_its_context_expects() {
    let v = vocab();
    let wlm = WordLm::train(
        [
            "the cat",
            "the cat sat",
            "the cat ran",
            "a hat",
            "a red hat",
        ],
        &v,
        2,
        1,
    )
    .unwrap();
    let lp = ambiguous_the_hat();
    // Both are known words: a word list alone cannot choose.
    let plain = word_search(&lp, &wlm, &CtcSearchOptions::default()).unwrap();
    assert_eq!(text(&plain[0].tokens), "the hat");
    assert_eq!(plain[0].oov_words, 0);
    assert_eq!(plain[0].score, plain[0].ctc_log_prob);
    // The model knows "the cat", never "the hat".
    let options = CtcSearchOptions {
        word_lm_weight: 0.5,
        word_bonus: 0.3,
        ..CtcSearchOptions::default()
    };
    let fused = word_search(&lp, &wlm, &options).unwrap();
    assert_eq!(text(&fused[0].tokens), "the cat");
    for h in &fused {
        // Specials (probability 0.05 / 28 here) vanish from the text: leave them out.
        if h.tokens.iter().any(|&t| t <= Vocab::UNK) {
            continue;
        }
        let (lp_words, n) = wlm.sentence_log_prob(&v, &text(&h.tokens));
        assert!(n > 0, "the search never empties this input");
        assert!(
            (h.word_lm_log_prob - lp_words).abs() < 1e-4,
            "{:?}: {} by search, {lp_words} by the model",
            text(&h.tokens),
            h.word_lm_log_prob
        );
        // Every word and <eos> scored; <eos> is not a word.
        assert_eq!(h.words + 1, n, "{:?}", text(&h.tokens));
        let expected = h.ctc_log_prob
            + f64::from(0.5f32) * h.word_lm_log_prob
            + f64::from(0.3f32) * h.words as f64;
        assert!((h.score - expected).abs() < 1e-9);
    }
    // Options out of range are refused.
    for bad in [
        CtcSearchOptions {
            word_lm_weight: -0.1,
            ..CtcSearchOptions::default()
        },
        CtcSearchOptions {
            word_bonus: f32::NAN,
            ..CtcSearchOptions::default()
        },
    ] {
        assert!(matches!(
            word_search(&lp, &wlm, &bad),
            Err(Error::Options(_))
        ));
    }
}

#[test]
fn a_full_beam_with_a_word_model_scores_every_labelling_exactly() {
    // Symbols: blank (id 0, <pad>), `a`, `b`, space; the other specials get
    // probability 0, so labellings hold only letters and spaces.
    let small = Vocab::new(["<pad>", "<sos>", "<eos>", "<unk>", "a", "b", " "]).unwrap();
    let v = small.len();
    let wlm = WordLm::train(["a b", "ab a", "b b a", "a a ab"], &small, 2, 1).unwrap();
    let options = CtcSearchOptions {
        beam_size: 5000,
        prune: None,
        word_lm_weight: 0.7,
        word_bonus: 0.4,
        oov_penalty: 1.5,
        ..CtcSearchOptions::default()
    };
    for case in 0..60u64 {
        let t = 1 + (case % 4) as usize;
        let mut lp = random_log_probs(500 + case, t, v, [1.0, 4.0][(case / 4 % 2) as usize]);
        for row in lp.chunks_exact_mut(v) {
            row[1..4].fill(f32::NEG_INFINITY);
        }
        let exact = brute_force(&lp, t, v);
        let hyps =
            ctc_beam_search_with(&lp, t, v, BLANK, None, Some(Words::Lm(&wlm)), &options).unwrap();
        let live = exact.values().filter(|l| l.prob > 0.0).count();
        assert_eq!(hyps.len(), live, "case {case}");
        let score = |tokens: &[usize], prob: f64| {
            let words: Vec<String> = small
                .decode(tokens)
                .split(' ')
                .filter(|w| !w.is_empty())
                .map(String::from)
                .collect();
            // An empty labelling still ends: `<eos>` right after `<sos>`.
            let lw = if words.is_empty() {
                f64::from(wlm.log_prob(&[Vocab::SOS], Vocab::EOS))
            } else {
                wlm.sentence_log_prob(&small, &words.join(" ")).0
            };
            let oov = words.iter().filter(|w| wlm.id(w) == Vocab::UNK).count();
            prob.ln() + f64::from(0.7f32) * lw + f64::from(0.4f32) * words.len() as f64
                - 1.5 * oov as f64
        };
        for h in &hyps {
            let l = &exact[&h.tokens];
            let expected = score(&h.tokens, l.prob);
            assert!(
                (h.score - expected).abs() < 1e-4,
                "case {case}: {:?} scores {} by search, {expected} by brute force",
                small.decode(&h.tokens),
                h.score
            );
        }
        let best = exact
            .iter()
            .filter(|e| e.1.prob > 0.0)
            .map(|(k, l)| (score(k, l.prob), k))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap();
        assert!((hyps[0].score - best.0).abs() < 1e-4, "case {case}");
    }
}

/// An attention decoder with no opinion: every symbol equally likely at every step.
/// Symbols: blank 0, `<sos>` 1, `<eos>` 2, then letters.
struct Flat {
    v: usize,
    frames: usize,
}

impl Decoder for Flat {
    type State = usize;
    type Error = std::convert::Infallible;
    fn vocab_size(&self) -> usize {
        self.v
    }
    fn sos(&self) -> usize {
        1
    }
    fn eos(&self) -> usize {
        2
    }
    fn encoder_len(&self) -> usize {
        self.frames
    }
    fn initial(&self) -> Result<usize, Self::Error> {
        Ok(1)
    }
    fn step(&self, prev: &[usize], _rows: usize) -> Result<Step<usize>, Self::Error> {
        Ok(Step {
            log_probs: vec![-(self.v as f32).ln(); prev.len() * self.v],
            state: prev.len(),
            attention_peaks: None,
        })
    }
    fn select(&self, _rows: usize, rows: &[usize]) -> Result<usize, Self::Error> {
        Ok(rows.len())
    }
}

#[test]
fn joint_decoding_with_ctc_alone_gives_every_labelling_its_ctc_probability() {
    let v = 6;
    let search = SearchOptions {
        beam_size: 300,
        max_len: 12,
        max_len_per_frame: None,
        ..SearchOptions::default()
    };
    for case in 0..40u64 {
        let t = 1 + (case % 4) as usize;
        let mut lp = random_log_probs(900 + case, t, v, [1.0, 4.0][(case / 4 % 2) as usize]);
        // The CTC head never emits <sos> or <eos>.
        for row in lp.chunks_exact_mut(v) {
            row[1..3].fill(f32::NEG_INFINITY);
        }
        let exact = brute_force(&lp, t, v);
        let flat = Flat { v, frames: t };
        let joint = JointCtc::new(&flat, &lp, t, BLANK, 1.0, v).unwrap();
        let hyps = beam_search(&joint, &search).unwrap();
        // The search stops once nothing live can beat the best finished hypothesis, so
        // the list may be short; what it holds is exact.
        for h in &hyps {
            assert!(h.finished);
            let p = exact[&h.tokens].prob.ln();
            assert!(
                (h.log_prob - p).abs() < 1e-4,
                "case {case}: {:?} has {} by joint search, ln P_ctc {p}",
                h.tokens,
                h.log_prob
            );
        }
        let best = exact
            .iter()
            .max_by(|a, b| a.1.prob.total_cmp(&b.1.prob))
            .unwrap();
        assert_eq!(&hyps[0].tokens, best.0, "case {case}");
        // Halfway: half the (flat) attention log-probability per step, half CTC.
        let half = JointCtc::new(&flat, &lp, t, BLANK, 0.5, v).unwrap();
        let h = &beam_search(&half, &search).unwrap()[0];
        let steps = (h.tokens.len() + 1) as f64;
        let expected = 0.5 * steps * -(v as f64).ln() + 0.5 * exact[&h.tokens].prob.ln();
        assert!((h.log_prob - expected).abs() < 1e-4, "case {case}");
    }
}

#[test]
fn joint_decoding_refuses_bad_settings() {
    let flat = Flat { v: 6, frames: 2 };
    let lp = random_log_probs(1, 2, 6, 1.0);
    for (w, k, blank) in [
        (0.0, 6, 0),
        (1.5, 6, 0),
        (f32::NAN, 6, 0),
        (0.5, 0, 0),
        (0.5, 6, 1),
        (0.5, 6, 2),
        (0.5, 6, 6),
    ] {
        assert!(
            JointCtc::new(&flat, &lp, 2, blank, w, k).is_err(),
            "{w} {k} {blank}"
        );
    }
    assert!(JointCtc::new(&flat, &lp[..6], 2, 0, 0.5, 6).is_err());
    // Candidates cut to the best by attention: a flat decoder ties, so the lowest ids win,
    // and the others cannot be extended.
    let joint = JointCtc::new(&flat, &lp, 2, 0, 0.5, 2).unwrap();
    let step = joint.step(&[1], joint.initial().unwrap()).unwrap();
    let finite: Vec<usize> = (0..6).filter(|&c| step.log_probs[c].is_finite()).collect();
    assert_eq!(finite, vec![2, 3]);
}

/// The prefix beam search written plainly: every prefix's whole score recomputed
/// from its text, every candidate listed, the best `k` kept by sorting. No shortcut
/// of the real search (skipping candidates that cannot make the cut, cached model
/// rows, remembered word scores) is here, so agreeing with it checks them. `known`
/// are the lexicon's words, spelled; `wlm` scores them when given.
fn reference_search(
    lp: &[f32],
    v: usize,
    lm: Option<&CharLm>,
    known: &[Vec<usize>],
    wlm: Option<&WordLm>,
    o: &CtcSearchOptions,
) -> Vec<(Vec<usize>, f64)> {
    let voc = vocab();
    let space = voc.id(' ').unwrap();
    let lm_weight = if lm.is_some() { o.lm_weight } else { 0.0 };
    // (score terms other than CTC) of a prefix; `last` scores it as finished.
    let terms = |prefix: &[usize], last: bool| -> f64 {
        let mut seq = vec![Vocab::SOS];
        seq.extend(prefix);
        if last {
            seq.push(Vocab::EOS);
        }
        let lm_term = match lm {
            Some(lm) if lm_weight != 0.0 => {
                let lp: f64 = (1..seq.len())
                    .map(|i| f64::from(lm.log_prob(&seq[..i], seq[i])))
                    .sum();
                f64::from(lm_weight) * lp
            }
            _ => 0.0,
        };
        let words: Vec<&[usize]> = prefix.split(|&t| t == space).collect();
        let (done, partial) = words.split_at(words.len() - 1);
        let mut finished: Vec<&[usize]> = done.iter().copied().filter(|w| !w.is_empty()).collect();
        let mut oov = 0;
        let partial = partial[0];
        if last && !partial.is_empty() {
            finished.push(partial);
        } else if !partial.is_empty() && !known.iter().any(|k| k.starts_with(partial)) {
            oov += 1;
        }
        let mut history = vec![Vocab::SOS];
        let mut word_lp = 0.0;
        for w in &finished {
            // Spelled with a symbol that prints as nothing, a word is not the word it
            // prints as.
            let id = if known.iter().any(|k| k == w) {
                wlm.map_or(Vocab::UNK, |wlm| wlm.id(&voc.decode(w)))
            } else {
                oov += 1;
                Vocab::UNK
            };
            if let Some(wlm) = wlm {
                word_lp += f64::from(wlm.log_prob(&history, id));
            }
            history.push(id);
        }
        if let (Some(wlm), true) = (wlm, last) {
            word_lp += f64::from(wlm.log_prob(&history, Vocab::EOS));
        }
        let word_terms = match wlm {
            Some(_) => {
                let lp = if o.word_lm_weight == 0.0 {
                    0.0
                } else {
                    f64::from(o.word_lm_weight) * word_lp
                };
                lp + f64::from(o.word_bonus) * finished.len() as f64
            }
            None => 0.0,
        };
        lm_term + f64::from(o.insertion_bonus) * prefix.len() as f64 + word_terms
            - f64::from(o.oov_penalty) * oov as f64
    };
    let mut beam: Vec<(Vec<usize>, f64, f64)> = vec![(Vec::new(), 0.0, f64::NEG_INFINITY)];
    for y in lp.chunks_exact(v) {
        let mut next: HashMap<Vec<usize>, (f64, f64)> = HashMap::new();
        for (prefix, pb, pnb) in &beam {
            let stay = next
                .entry(prefix.clone())
                .or_insert((f64::NEG_INFINITY, f64::NEG_INFINITY));
            stay.0 = log_add(stay.0, log_add(*pb, *pnb) + f64::from(y[BLANK]));
            if let Some(&last) = prefix.last() {
                stay.1 = log_add(stay.1, pnb + f64::from(y[last]));
            }
            for c in (0..v).filter(|&c| c != BLANK && o.prune.is_none_or(|p| y[c] >= p)) {
                let from = if prefix.last() == Some(&c) {
                    *pb
                } else {
                    log_add(*pb, *pnb)
                };
                let mut history = vec![Vocab::SOS];
                history.extend(prefix);
                let ruled_out = match lm {
                    Some(lm) if lm_weight > 0.0 => lm.log_prob(&history, c) == f32::NEG_INFINITY,
                    _ => false,
                };
                if from == f64::NEG_INFINITY || ruled_out {
                    continue;
                }
                let mut longer = prefix.clone();
                longer.push(c);
                let e = next
                    .entry(longer)
                    .or_insert((f64::NEG_INFINITY, f64::NEG_INFINITY));
                e.1 = log_add(e.1, from + f64::from(y[c]));
            }
        }
        let mut ranked: Vec<(f64, Vec<usize>, f64, f64)> = next
            .into_iter()
            .map(|(p, (pb, pnb))| (log_add(pb, pnb) + terms(&p, false), p, pb, pnb))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranked.truncate(o.beam_size);
        beam = ranked
            .into_iter()
            .map(|(_, p, pb, pnb)| (p, pb, pnb))
            .collect();
    }
    let mut out: Vec<(Vec<usize>, f64)> = beam
        .into_iter()
        .map(|(p, pb, pnb)| {
            let s = log_add(pb, pnb) + terms(&p, true);
            (p, s)
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

#[test]
fn the_search_with_its_language_models_and_word_lists_matches_a_plain_one() {
    let v = vocab();
    let n = v.len();
    let lines = [
        "the cat sat on the mat",
        "a cat and the cat",
        "the cat ran home",
    ];
    let lm = lm();
    let wlm = WordLm::train(lines, &v, 2, 1).unwrap();
    let known: Vec<Vec<usize>> = wlm.symbols()[4..].iter().map(|w| v.encode(w)).collect();
    let lex = Lexicon::from_text(&v, &lines.join(" ")).unwrap();
    let base = CtcSearchOptions {
        beam_size: 6,
        lm_weight: 0.5,
        insertion_bonus: 0.8,
        prune: Some(-6.0),
        oov_penalty: 1.5,
        word_lm_weight: 0.7,
        word_bonus: 0.4,
    };
    // (name, character LM, word LM (else the word list alone), options)
    let cases: Vec<(&str, bool, bool, CtcSearchOptions)> = vec![
        ("both models", true, true, base.clone()),
        (
            "negative word bonus",
            true,
            true,
            CtcSearchOptions {
                word_bonus: -0.6,
                ..base.clone()
            },
        ),
        (
            "character LM at weight 0",
            true,
            true,
            CtcSearchOptions {
                lm_weight: 0.0,
                ..base.clone()
            },
        ),
        ("word list, no character LM", false, false, base.clone()),
        ("word list and character LM", true, false, base.clone()),
        ("word LM, no character LM", false, true, base.clone()),
    ];
    for (name, with_lm, with_wlm, options) in &cases {
        for seed in 0..8u64 {
            // "the cat sat" spelled with frames of noise between its letters, so the
            // beam holds words, misspellings and spaces in competition.
            let mut s = seed;
            let mut logits = Vec::new();
            for ch in "_t_h_e_ _c_a_t_ _s_a_t_".chars() {
                let peak = if ch == '_' { BLANK } else { v.id(ch).unwrap() };
                for sym in 0..n {
                    let boost = if sym == peak { 3.0 } else { 0.0 };
                    logits.push(boost + 4.0 * uniform(&mut s));
                }
            }
            let lp = log_softmax(&logits, n);
            let char_lm = with_lm.then_some(&lm);
            let words = if *with_wlm {
                Words::Lm(&wlm)
            } else {
                Words::List(&lex)
            };
            let got =
                ctc_beam_search_with(&lp, lp.len() / n, n, BLANK, char_lm, Some(words), options)
                    .unwrap();
            let want = reference_search(&lp, n, char_lm, &known, with_wlm.then_some(&wlm), options);
            assert_eq!(got.len(), want.len(), "{name}, seed {seed}");
            for (g, (tokens, score)) in got.iter().zip(&want) {
                assert_eq!(&g.tokens, tokens, "{name}, seed {seed}");
                assert!(
                    (g.score - score).abs() < 1e-6 * score.abs().max(1.0),
                    "{name}, seed {seed}: {} vs {score}",
                    g.score
                );
            }
        }
    }
}
