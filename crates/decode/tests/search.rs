//! Greedy and beam search on toy decoders whose next-token log-probabilities are a
//! function of the whole prefix, so a search that mixed up hypotheses, states or
//! scores would return log-probabilities that do not belong to its tokens.

use std::cell::{Cell, RefCell};

use lasr_decode::{
    beam_search, greedy, score_sequences, Decoder, Error, Hypothesis, LengthNorm, SearchOptions,
    Step,
};

const SOS: usize = 1;
const EOS: usize = 2;

#[derive(Debug, thiserror::Error)]
#[error("toy decoder failed at call {0}")]
struct ToyError(usize);

/// Ways a broken decoder can misbehave.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    FailAtCall(usize),
    ShortRow,
    NanAtCall(usize),
    PeakOutOfRange,
    PeaksOnlyOnFirstCall,
}

/// A decoder over `v` tokens whose log-probabilities after a prefix (tokens emitted so
/// far, without `<sos>`) are `f(prefix)`; each state row is `<sos>` and that prefix, so
/// the search's bookkeeping decides what the decoder sees. Records every call.
struct Toy<F> {
    v: usize,
    encoder_len: usize,
    peaks: bool,
    f: F,
    fault: Fault,
    batch_sizes: RefCell<Vec<usize>>,
    selects: Cell<usize>,
}

impl<F: Fn(&[usize]) -> Vec<f32>> Toy<F> {
    fn new(v: usize, f: F) -> Self {
        Toy {
            v,
            encoder_len: 50,
            peaks: true,
            f,
            fault: Fault::None,
            batch_sizes: RefCell::new(Vec::new()),
            selects: Cell::new(0),
        }
    }

    fn peak(&self, prefix: &[usize]) -> usize {
        (hash(prefix, 99) % self.encoder_len as u64) as usize
    }

    /// Log-probability of `tokens` (and `<eos>` if `finished`) summed in the order the
    /// search sums them, so the two agree to the bit.
    fn log_prob(&self, tokens: &[usize], finished: bool) -> f64 {
        let mut lp = 0.0f64;
        for j in 0..tokens.len() {
            lp += f64::from((self.f)(&tokens[..j])[tokens[j]]);
        }
        if finished {
            lp += f64::from((self.f)(tokens)[EOS]);
        }
        lp
    }

    fn peaks_of(&self, tokens: &[usize]) -> Vec<usize> {
        (0..tokens.len()).map(|j| self.peak(&tokens[..j])).collect()
    }
}

impl<F: Fn(&[usize]) -> Vec<f32>> Decoder for Toy<F> {
    type State = Vec<Vec<usize>>;
    type Error = ToyError;

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
        self.encoder_len
    }

    fn initial(&self) -> Result<Self::State, ToyError> {
        Ok(vec![Vec::new()])
    }

    fn step(&self, prev: &[usize], state: Self::State) -> Result<Step<Self::State>, ToyError> {
        let call = self.batch_sizes.borrow().len();
        self.batch_sizes.borrow_mut().push(prev.len());
        assert_eq!(prev.len(), state.len(), "prev and state rows disagree");
        if self.fault == Fault::FailAtCall(call) {
            return Err(ToyError(call));
        }
        let mut log_probs = Vec::with_capacity(prev.len() * self.v);
        let mut peaks = Vec::with_capacity(prev.len());
        let mut next = Vec::with_capacity(prev.len());
        for (&p, mut row) in prev.iter().zip(state) {
            row.push(p);
            assert_eq!(row[0], SOS, "the first step must be fed <sos>");
            log_probs.extend((self.f)(&row[1..]));
            peaks.push(self.peak(&row[1..]));
            next.push(row);
        }
        match self.fault {
            Fault::ShortRow => {
                log_probs.pop();
            }
            Fault::NanAtCall(c) if c == call => log_probs[EOS] = f32::NAN,
            Fault::PeakOutOfRange => peaks[0] = self.encoder_len,
            _ => {}
        }
        let with_peaks = match self.fault {
            Fault::PeaksOnlyOnFirstCall => call == 0,
            _ => self.peaks,
        };
        Ok(Step {
            log_probs,
            state: next,
            attention_peaks: with_peaks.then_some(peaks),
        })
    }

    fn select(&self, state: Self::State, rows: &[usize]) -> Result<Self::State, ToyError> {
        self.selects.set(self.selects.get() + 1);
        Ok(rows.iter().map(|&r| state[r].clone()).collect())
    }
}

fn hash(prefix: &[usize], seed: u64) -> u64 {
    let mut h = seed ^ 0xcbf2_9ce4_8422_2325;
    for &t in prefix {
        h = (h ^ t as u64).wrapping_mul(0x0100_0000_01b3);
    }
    splitmix(h ^ prefix.len() as u64)
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Pseudo-random log-softmax over `v` tokens for each prefix; `eos_bias` shifts the
/// `<eos>` logit (negative: longer outputs).
fn random_model(v: usize, seed: u64, eos_bias: f64) -> impl Fn(&[usize]) -> Vec<f32> {
    move |prefix: &[usize]| {
        let mut s = hash(prefix, seed);
        let logits: Vec<f64> = (0..v)
            .map(|t| {
                s = splitmix(s);
                let x = (s >> 11) as f64 / (1u64 << 53) as f64 * 6.0 - 3.0;
                if t == EOS {
                    x + eos_bias
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

/// Next-token log-probabilities that depend only on the previous token; rows are
/// probabilities by token id, unlisted tokens (and every token after an unlisted
/// previous token) get 1e-6.
fn markov(v: usize, rows: Vec<(usize, Vec<(usize, f32)>)>) -> impl Fn(&[usize]) -> Vec<f32> {
    move |prefix: &[usize]| {
        let last = prefix.last().copied().unwrap_or(SOS);
        let mut out = vec![1e-6f32.ln(); v];
        if let Some((_, row)) = rows.iter().find(|(p, _)| *p == last) {
            for &(t, p) in row {
                out[t] = p.ln();
            }
        }
        out
    }
}

fn options(beam: usize, max_len: usize, norm: LengthNorm) -> SearchOptions {
    SearchOptions {
        beam_size: beam,
        max_len,
        max_len_per_frame: None,
        length_norm: norm,
        eos_threshold: None,
    }
}

/// Best finished hypothesis by exhaustive enumeration: (score, tokens).
fn brute_force<F: Fn(&[usize]) -> Vec<f32>>(
    toy: &Toy<F>,
    max_steps: usize,
    norm: LengthNorm,
) -> (f64, Vec<usize>) {
    fn walk<F: Fn(&[usize]) -> Vec<f32>>(
        toy: &Toy<F>,
        prefix: &mut Vec<usize>,
        lp: f64,
        max_steps: usize,
        norm: LengthNorm,
        best: &mut (f64, Vec<usize>),
    ) {
        let row = (toy.f)(prefix);
        let score = norm.score(lp + f64::from(row[EOS]), prefix.len() + 1);
        if score > best.0 {
            *best = (score, prefix.clone());
        }
        if prefix.len() + 1 == max_steps {
            return;
        }
        for t in (0..toy.v).filter(|&t| t != EOS) {
            prefix.push(t);
            walk(toy, prefix, lp + f64::from(row[t]), max_steps, norm, best);
            prefix.pop();
        }
    }
    let mut best = (f64::NEG_INFINITY, Vec::new());
    walk(toy, &mut Vec::new(), 0.0, max_steps, norm, &mut best);
    best
}

/// What every n-best list must satisfy, whatever the model.
fn check_nbest<F: Fn(&[usize]) -> Vec<f32>>(
    toy: &Toy<F>,
    nbest: &[Hypothesis],
    opts: &SearchOptions,
) {
    assert!(!nbest.is_empty() && nbest.len() <= opts.beam_size);
    let max_steps = opts.max_steps(toy.encoder_len);
    let all_finished = nbest[0].finished;
    for (i, h) in nbest.iter().enumerate() {
        assert_eq!(
            h.finished, all_finished,
            "finished and cut hypotheses mixed"
        );
        assert!(!h.tokens.contains(&EOS));
        let steps = h.tokens.len() + usize::from(h.finished);
        assert!(steps <= max_steps);
        if !h.finished {
            assert_eq!(steps, max_steps);
        }
        assert_eq!(h.log_prob, toy.log_prob(&h.tokens, h.finished), "{h:?}");
        assert_eq!(h.score, opts.length_norm.score(h.log_prob, steps));
        assert_eq!(
            h.attention_peaks.as_deref(),
            Some(&toy.peaks_of(&h.tokens)[..])
        );
        if i > 0 {
            assert!(nbest[i - 1].score >= h.score, "not sorted best first");
        }
        for other in &nbest[..i] {
            assert_ne!(other.tokens, h.tokens, "duplicate hypothesis");
        }
    }
}

const NORMS: [LengthNorm; 4] = [
    LengthNorm::None,
    LengthNorm::Power(1.0),
    LengthNorm::Power(0.6),
    LengthNorm::Bonus(0.4),
];

#[test]
fn beam_escapes_the_greedy_trap_with_the_exact_log_prob() {
    // 3 = a, 4 = b. Greedy takes a (0.6) and then ends (0.4): 0.24 in all. b (0.4) then
    // <eos> (0.9) is 0.36.
    let f = markov(
        5,
        vec![
            (SOS, vec![(3, 0.6), (4, 0.4)]),
            (3, vec![(EOS, 0.4), (3, 0.3), (4, 0.3)]),
            (4, vec![(EOS, 0.9), (3, 0.05), (4, 0.05)]),
        ],
    );
    let toy = Toy::new(5, f);
    let opts = options(2, 10, LengthNorm::None);
    let g = greedy(&toy, &opts).unwrap();
    assert_eq!(g.tokens, [3]);
    assert!(g.finished);
    let ln = |p: f32| f64::from(p.ln());
    assert_eq!(g.log_prob, 0.0 + ln(0.6) + ln(0.4));

    let nbest = beam_search(&toy, &opts).unwrap();
    assert_eq!(nbest.len(), 2);
    assert_eq!(nbest[0].tokens, [4]);
    assert_eq!(nbest[0].log_prob, 0.0 + ln(0.4) + ln(0.9));
    assert_eq!(nbest[0].score, nbest[0].log_prob);
    assert!(nbest[0].finished);
    assert_eq!(nbest[1], g);
    check_nbest(&toy, &nbest, &opts);
}

#[test]
fn eos_threshold_keeps_unlikely_endings_out_of_the_beam() {
    // After <sos>: token 3 at 0.7, <eos> at 0.25 (1.03 nats below); after 3: <eos>.
    let rows = vec![
        (SOS, vec![(3, 0.7), (EOS, 0.25), (4, 0.05)]),
        (3, vec![(EOS, 0.9), (4, 0.1)]),
        (4, vec![(EOS, 0.9), (3, 0.1)]),
    ];
    let toy = Toy::new(5, markov(5, rows));
    let loose = beam_search(&toy, &options(3, 5, LengthNorm::None)).unwrap();
    assert!(loose.iter().any(|h| h.tokens.is_empty()), "{loose:?}");
    let strict = SearchOptions {
        eos_threshold: Some(1.0),
        ..options(3, 5, LengthNorm::None)
    };
    let kept = beam_search(&toy, &strict).unwrap();
    assert!(kept.iter().all(|h| !h.tokens.is_empty()), "{kept:?}");
    assert_eq!(kept[0].tokens, vec![3]);
    // A margin wider than the gap lets the early ending back in.
    let wide = SearchOptions {
        eos_threshold: Some(1.1),
        ..strict.clone()
    };
    assert!(beam_search(&toy, &wide)
        .unwrap()
        .iter()
        .any(|h| h.tokens.is_empty()));
    assert!(beam_search(
        &toy,
        &SearchOptions {
            eos_threshold: Some(-1.0),
            ..strict
        }
    )
    .is_err());
}

#[test]
fn beam_of_one_is_exactly_greedy() {
    for seed in 0..60 {
        for (eos_bias, max_len) in [(0.0, 12), (-2.5, 9), (-40.0, 6)] {
            for norm in NORMS {
                let toy = Toy::new(7, random_model(7, seed, eos_bias));
                let opts = SearchOptions {
                    eos_threshold: (seed % 2 == 1).then_some(0.5),
                    ..options(1, max_len, norm)
                };
                let g = greedy(&toy, &opts).unwrap();
                let b = beam_search(&toy, &opts).unwrap();
                assert_eq!(b, vec![g.clone()], "seed {seed}, bias {eos_bias}, {norm:?}");
                assert_eq!(g.log_prob, toy.log_prob(&g.tokens, g.finished));
                assert_eq!(g.attention_peaks, Some(toy.peaks_of(&g.tokens)));
            }
        }
    }
}

#[test]
fn exhaustive_beam_finds_the_true_optimum_under_every_length_norm() {
    // 4 non-eos tokens, at most 5 steps: at most 4^4 = 256 live hypotheses, so a beam
    // of 300 never prunes and only the stopping rule can lose the optimum.
    let max_len = 5;
    for seed in 0..40 {
        for eos_bias in [0.0, -2.0] {
            for norm in NORMS {
                let toy = Toy::new(5, random_model(5, seed, eos_bias));
                let opts = options(300, max_len, norm);
                let nbest = beam_search(&toy, &opts).unwrap();
                check_nbest(&toy, &nbest, &opts);
                let (score, tokens) = brute_force(&toy, max_len, norm);
                assert!(nbest[0].finished);
                assert_eq!(nbest[0].tokens, tokens, "seed {seed}, {norm:?}");
                assert_eq!(nbest[0].score, score);
            }
        }
    }
}

#[test]
fn pruned_beams_keep_hypotheses_states_and_scores_together() {
    for seed in 0..40 {
        for beam in [2, 3, 5] {
            for norm in NORMS {
                let toy = Toy::new(9, random_model(9, seed, -1.5));
                let opts = options(beam, 15, norm);
                let nbest = beam_search(&toy, &opts).unwrap();
                check_nbest(&toy, &nbest, &opts);
            }
        }
    }
}

#[test]
fn length_normalisation_changes_the_winner() {
    // 3 = x, 4 = y, 5 = z. "x" then <eos>: 0.4 * 0.5 = 0.2 over 2 steps.
    // "y z" then <eos>: 0.6 * 0.5 * 0.5 = 0.15 over 3 steps, better per step.
    let toy = Toy::new(
        6,
        markov(
            6,
            vec![
                (SOS, vec![(3, 0.4), (4, 0.6)]),
                (3, vec![(EOS, 0.5), (3, 0.2), (4, 0.15), (5, 0.15)]),
                (4, vec![(5, 0.5), (EOS, 0.1), (3, 0.2), (4, 0.2)]),
                (5, vec![(EOS, 0.5), (5, 0.3), (3, 0.1), (4, 0.1)]),
            ],
        ),
    );
    let max_len = 8;
    let cases = [
        (LengthNorm::None, vec![3]),
        (LengthNorm::Power(1.0), vec![4, 5]),
        (LengthNorm::Bonus(0.5), vec![4, 5]),
    ];
    for (norm, winner) in cases {
        // The construction really has these optima...
        assert_eq!(brute_force(&toy, max_len, norm).1, winner, "{norm:?}");
        // ...and a beam of 2 finds them.
        let opts = options(2, max_len, norm);
        let nbest = beam_search(&toy, &opts).unwrap();
        check_nbest(&toy, &nbest, &opts);
        assert_eq!(nbest[0].tokens, winner, "{norm:?}");
    }
    let ln = |p: f32| f64::from(p.ln());
    let opts = options(2, max_len, LengthNorm::Power(1.0));
    let best = &beam_search(&toy, &opts).unwrap()[0];
    assert_eq!(best.log_prob, 0.0 + ln(0.6) + ln(0.5) + ln(0.5));
    assert_eq!(best.score, best.log_prob / 3.0);
}

#[test]
fn step_sees_every_live_hypothesis_at_once() {
    // <eos> is never likely, so the beam stays full until the length limit: one call
    // per output position, each with the whole beam.
    for (beam, expected) in [(4, vec![1, 4, 4, 4, 4, 4]), (2, vec![1, 2, 2, 2, 2, 2])] {
        let toy = Toy::new(6, random_model(6, 3, -40.0));
        let opts = options(beam, 6, LengthNorm::None);
        let nbest = beam_search(&toy, &opts).unwrap();
        assert_eq!(*toy.batch_sizes.borrow(), expected);
        assert!(toy.selects.get() > 0, "survivors were never re-gathered");
        assert_eq!(nbest.len(), beam);
        check_nbest(&toy, &nbest, &opts);
    }
    // The batch shrinks as hypotheses finish; it never exceeds the beam.
    let toy = Toy::new(8, random_model(8, 11, 0.5));
    let opts = options(3, 30, LengthNorm::None);
    beam_search(&toy, &opts).unwrap();
    let sizes = toy.batch_sizes.borrow();
    assert_eq!(sizes[0], 1);
    assert!(sizes.iter().all(|&n| (1..=3).contains(&n)), "{sizes:?}");
}

#[test]
fn max_len_is_respected() {
    // <eos> never wins: every hypothesis is cut at the limit.
    let max_len = 7;
    let toy = Toy::new(6, random_model(6, 5, -40.0));
    let g = greedy(&toy, &options(1, max_len, LengthNorm::None)).unwrap();
    assert_eq!(g.tokens.len(), max_len);
    assert!(!g.finished);
    assert_eq!(toy.batch_sizes.borrow().len(), max_len);
    let toy = Toy::new(6, random_model(6, 5, -40.0));
    let opts = options(3, max_len, LengthNorm::Power(1.0));
    let nbest = beam_search(&toy, &opts).unwrap();
    assert_eq!(toy.batch_sizes.borrow().len(), max_len);
    assert_eq!(nbest.len(), 3);
    assert!(nbest
        .iter()
        .all(|h| !h.finished && h.tokens.len() == max_len));
    check_nbest(&toy, &nbest, &opts);

    // The limit relative to the encoder length: ceil(1.5 * 5) = 8 steps.
    let mut toy = Toy::new(6, random_model(6, 5, -40.0));
    toy.encoder_len = 5;
    let opts = SearchOptions {
        max_len_per_frame: Some(1.5),
        ..options(2, 100, LengthNorm::None)
    };
    assert_eq!(opts.max_steps(5), 8);
    assert_eq!(opts.max_steps(1000), 100);
    assert_eq!(opts.max_steps(0), 1);
    let nbest = beam_search(&toy, &opts).unwrap();
    assert!(nbest.iter().all(|h| h.tokens.len() == 8));
    assert_eq!(toy.batch_sizes.borrow().len(), 8);
}

#[test]
fn an_immediate_eos_gives_an_empty_finished_hypothesis() {
    let toy = Toy::new(
        5,
        markov(5, vec![(SOS, vec![(EOS, 0.9), (3, 0.05), (4, 0.05)])]),
    );
    let opts = options(1, 10, LengthNorm::Power(1.0));
    let g = greedy(&toy, &opts).unwrap();
    assert!(g.finished && g.tokens.is_empty());
    assert_eq!(g.attention_peaks, Some(Vec::new()));
    assert_eq!(g.log_prob, f64::from(0.9f32.ln()));
    assert_eq!(g.score, g.log_prob);
    assert_eq!(beam_search(&toy, &opts).unwrap(), vec![g]);
}

#[test]
fn decoders_without_attention_peaks_give_none() {
    let mut toy = Toy::new(6, random_model(6, 1, 0.0));
    toy.peaks = false;
    let opts = options(3, 10, LengthNorm::None);
    assert_eq!(greedy(&toy, &opts).unwrap().attention_peaks, None);
    let nbest = beam_search(&toy, &opts).unwrap();
    assert!(nbest.iter().all(|h| h.attention_peaks.is_none()));
}

#[test]
fn broken_decoders_are_reported_not_trusted() {
    let contract = |fault: Fault| {
        let toy = || {
            let mut toy = Toy::new(6, random_model(6, 2, -3.0));
            toy.fault = fault;
            toy
        };
        let opts = options(3, 10, LengthNorm::None);
        for e in [
            greedy(&toy(), &opts).unwrap_err(),
            beam_search(&toy(), &opts).unwrap_err(),
        ] {
            assert!(matches!(e, Error::Contract(_)), "{e:?}");
        }
    };
    contract(Fault::ShortRow);
    contract(Fault::NanAtCall(1));
    contract(Fault::PeakOutOfRange);
    contract(Fault::PeaksOnlyOnFirstCall);

    // The model's own error comes through intact.
    let mut toy = Toy::new(6, random_model(6, 2, -3.0));
    toy.fault = Fault::FailAtCall(2);
    let e = beam_search(&toy, &options(3, 10, LengthNorm::None)).unwrap_err();
    match &e {
        Error::Decoder(inner) => assert_eq!(inner.downcast_ref::<ToyError>().unwrap().0, 2),
        other => panic!("expected Error::Decoder, got {other:?}"),
    }
    assert_eq!(e.to_string(), "toy decoder failed at call 2");

    // <eos> outside the vocabulary.
    let toy = Toy::new(2, random_model(2, 2, 0.0));
    let e = greedy(&toy, &options(1, 10, LengthNorm::None)).unwrap_err();
    assert!(matches!(e, Error::Contract(_)), "{e:?}");
    assert!(toy.batch_sizes.borrow().is_empty());
}

#[test]
fn options_are_validated() {
    let toy = Toy::new(6, random_model(6, 2, 0.0));
    let bad = [
        options(0, 10, LengthNorm::None),
        options(2, 0, LengthNorm::None),
        options(2, 10, LengthNorm::Power(-0.5)),
        options(2, 10, LengthNorm::Power(f32::NAN)),
        options(2, 10, LengthNorm::Bonus(f32::INFINITY)),
        SearchOptions {
            max_len_per_frame: Some(0.0),
            ..SearchOptions::default()
        },
        SearchOptions {
            max_len_per_frame: Some(f32::NAN),
            ..SearchOptions::default()
        },
    ];
    for opts in bad {
        assert!(
            matches!(opts.validate(), Err(Error::Options(_))),
            "{opts:?}"
        );
        assert!(matches!(beam_search(&toy, &opts), Err(Error::Options(_))));
        assert!(matches!(greedy(&toy, &opts), Err(Error::Options(_))));
    }
    assert!(toy.batch_sizes.borrow().is_empty());
    SearchOptions::default().validate().unwrap();
}

#[test]
fn options_serialise_with_defaults_and_refuse_unknown_fields() {
    let d = SearchOptions::default();
    let json = serde_json::to_string(&d).unwrap();
    assert_eq!(serde_json::from_str::<SearchOptions>(&json).unwrap(), d);
    let partial: SearchOptions =
        serde_json::from_str(r#"{"beam_size": 4, "length_norm": {"power": 0.5}}"#).unwrap();
    assert_eq!(
        partial,
        SearchOptions {
            beam_size: 4,
            length_norm: LengthNorm::Power(0.5),
            ..d.clone()
        }
    );
    let none: SearchOptions =
        serde_json::from_str(r#"{"length_norm": "none", "max_len_per_frame": null}"#).unwrap();
    assert_eq!(none.length_norm, LengthNorm::None);
    assert_eq!(none.max_len_per_frame, None);
    assert!(serde_json::from_str::<SearchOptions>(r#"{"beam": 4}"#).is_err());
}

#[test]
fn teacher_forced_scores_reproduce_the_search_log_probs_in_any_order() {
    for seed in 0..20 {
        let toy = Toy::new(7, random_model(7, seed, -1.0));
        let nbest = beam_search(&toy, &options(6, 12, LengthNorm::None)).unwrap();
        assert!(nbest[0].finished);
        // Scrambled, with an empty sequence and a repeat, to exercise the batch order.
        let mut seqs: Vec<Vec<usize>> = nbest.iter().rev().map(|h| h.tokens.clone()).collect();
        seqs.push(Vec::new());
        seqs.push(seqs[0].clone());
        toy.batch_sizes.borrow_mut().clear();
        let scores = score_sequences(&toy, &seqs).unwrap();
        assert_eq!(scores.len(), seqs.len());
        for (seq, &score) in seqs.iter().zip(&scores) {
            // Bit for bit: the same sums in the same order as the search.
            assert_eq!(score, toy.log_prob(seq, true), "{seq:?}");
        }
        for h in &nbest {
            let i = seqs.iter().position(|s| *s == h.tokens).unwrap();
            assert_eq!(scores[i], h.log_prob);
        }
        // Each distinct prefix (the empty one too) takes one row, in one batched step
        // per length: a shared prefix is stepped once.
        let sizes = toy.batch_sizes.borrow();
        let longest = seqs.iter().map(Vec::len).max().unwrap();
        assert_eq!(sizes.len(), longest + 1);
        let prefixes_of_len = |n: usize| {
            let set: std::collections::HashSet<&[usize]> = seqs
                .iter()
                .filter(|s| s.len() >= n)
                .map(|s| &s[..n])
                .collect();
            set.len()
        };
        for (step, &n) in sizes.iter().enumerate() {
            assert_eq!(n, prefixes_of_len(step), "step {step}");
        }
        assert!(
            sizes.iter().sum::<usize>() < seqs.iter().map(|s| s.len() + 1).sum::<usize>(),
            "the n-best list shares prefixes, so fewer rows than tokens"
        );
    }
}

#[test]
fn teacher_forced_scoring_fans_states_out_to_children() {
    let toy = Toy::new(7, random_model(7, 5, -1.0));
    // Level 1 holds [3] and [4]; level 2 holds [4, 5] and [4, 6], both children of
    // row 1: as many rows as before, but not the same ones, so `select` must run.
    let seqs = vec![vec![3], vec![4, 5], vec![4, 6]];
    let scores = score_sequences(&toy, &seqs).unwrap();
    for (seq, &score) in seqs.iter().zip(&scores) {
        assert_eq!(score, toy.log_prob(seq, true), "{seq:?}");
    }
    assert_eq!(*toy.batch_sizes.borrow(), vec![1, 2, 2]);
    // The root's state fans out to two rows, then row 1's to two.
    assert_eq!(toy.selects.get(), 2);
}

#[test]
fn teacher_forced_scoring_refuses_foreign_tokens_and_passes_model_errors() {
    let toy = Toy::new(6, random_model(6, 3, 0.0));
    assert!(score_sequences(&toy, &[]).unwrap().is_empty());
    let e = score_sequences(&toy, &[vec![3, 4], vec![3, 6]]).unwrap_err();
    assert!(matches!(e, Error::Contract(_)), "{e:?}");
    assert!(e.to_string().contains("sequence 1 holds token 6"), "{e}");

    assert!(toy.batch_sizes.borrow().is_empty());

    let mut toy = Toy::new(6, random_model(6, 3, 0.0));
    toy.fault = Fault::FailAtCall(1);
    let e = score_sequences(&toy, &[vec![3, 4, 5]]).unwrap_err();
    assert!(matches!(e, Error::Decoder(_)), "{e:?}");
    let mut toy = Toy::new(6, random_model(6, 3, 0.0));
    toy.fault = Fault::NanAtCall(2);
    let e = score_sequences(&toy, &[vec![3, 4, 5]]).unwrap_err();
    assert!(matches!(e, Error::Contract(_)), "{e:?}");
}
