//! WER and CER: hand-computed alignments, corpus aggregation, empty sides, and a
//! randomised check of the alignment against a plain Levenshtein table.

use lasr_decode::{align, cer, error_counts, wer, EditOp, ErrorCounts};

use EditOp::{Deletion as D, Insertion as I, Match as M, Substitution as S};

fn counts(s: usize, d: usize, i: usize, n: usize) -> ErrorCounts {
    ErrorCounts {
        substitutions: s,
        deletions: d,
        insertions: i,
        reference_len: n,
    }
}

#[test]
fn word_errors_with_all_three_edit_types() {
    let r = "the cat sat on the mat";
    let h = "the bat sat the mat down";
    let c = wer(r, h);
    assert_eq!(c, counts(1, 1, 1, 6));
    assert_eq!(c.edits(), 3);
    assert_eq!(c.hits(), 4);
    assert_eq!(c.rate(), 0.5);
    let rw: Vec<&str> = r.split(' ').collect();
    let hw: Vec<&str> = h.split(' ').collect();
    assert_eq!(align(&rw, &hw), [M, S, M, D, M, M, I]);
}

#[test]
fn character_errors_hand_computed() {
    // kitten -> sitting: k/s and e/i substituted, g inserted.
    assert_eq!(cer("kitten", "sitting"), counts(2, 0, 1, 6));
    let k: Vec<char> = "kitten".chars().collect();
    let s: Vec<char> = "sitting".chars().collect();
    assert_eq!(align(&k, &s), [S, M, M, M, S, M, I]);
    // flaw -> lawn: f deleted, n inserted.
    assert_eq!(cer("flaw", "lawn"), counts(0, 1, 1, 4));
    // Spaces are characters: a dropped word break is one deletion of five units.
    let c = cer("a cat", "acat");
    assert_eq!(c, counts(0, 1, 0, 5));
    assert_eq!(c.rate(), 0.2);
    // A misspelt word is one word error but only one character error.
    assert_eq!(
        wer("he hoped for stew", "he hopped for stew"),
        counts(1, 0, 0, 4)
    );
    assert_eq!(
        cer("he hoped for stew", "he hopped for stew"),
        counts(0, 0, 1, 17)
    );
}

#[test]
fn equal_cost_alignments_prefer_substitution() {
    assert_eq!(wer("a b", "b c"), counts(2, 0, 0, 2));
    assert_eq!(align(&["a", "b"], &["b", "c"]), [S, S]);
}

#[test]
fn whitespace_is_normalised_the_same_for_words_and_characters() {
    assert_eq!(wer("  the   cat ", "the cat"), counts(0, 0, 0, 2));
    assert_eq!(cer("  the   cat ", "the\tcat"), counts(0, 0, 0, 7));
}

#[test]
fn corpus_rate_is_total_edits_over_total_reference_not_mean_of_rates() {
    let pairs = [
        ("yes", "no"),
        (
            "he hoped there would be stew for dinner",
            "he hoped there would be stew for dinner",
        ),
        ("turnips", "turnips"),
    ];
    let per: Vec<ErrorCounts> = pairs.iter().map(|(r, h)| wer(r, h)).collect();
    let total: ErrorCounts = per.iter().sum();
    assert_eq!(total, counts(1, 0, 0, 10));
    assert_eq!(total.rate(), 0.1);
    let mean = per.iter().map(ErrorCounts::rate).sum::<f64>() / per.len() as f64;
    assert!((mean - 1.0 / 3.0).abs() < 1e-12);
    // By-value sum, `+` and `+=` agree with the by-reference sum.
    assert_eq!(per.iter().copied().sum::<ErrorCounts>(), total);
    let mut acc = ErrorCounts::default();
    acc += per[0];
    assert_eq!(acc + per[1] + per[2], total);
}

#[test]
fn empty_sides() {
    let none = wer("", "");
    assert_eq!(none, ErrorCounts::default());
    assert_eq!(none.rate(), 0.0);
    // Empty reference: all insertions, rate = number of insertions.
    let ins = wer("", "uh huh");
    assert_eq!(ins, counts(0, 0, 2, 0));
    assert_eq!(ins.rate(), 2.0);
    assert_eq!(cer(" ", "ab"), counts(0, 0, 2, 0));
    // Empty hypothesis: all deletions, rate 1.
    let del = wer("stew for dinner", "  ");
    assert_eq!(del, counts(0, 3, 0, 3));
    assert_eq!(del.rate(), 1.0);
    assert!(align::<char>(&[], &[]).is_empty());
    assert_eq!(align(&[1], &[]), [D]);
    assert_eq!(align(&[], &[1]), [I]);
}

/// Deterministic pseudo-random numbers (SplitMix64), so the test needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

fn levenshtein(a: &[u8], b: &[u8]) -> usize {
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let sub = d[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = sub.min(d[i - 1][j] + 1).min(d[i][j - 1] + 1);
        }
    }
    d[a.len()][b.len()]
}

#[test]
fn alignment_is_minimal_replays_and_matches_the_low_memory_counts() {
    let mut rng = Rng(7);
    for _ in 0..3000 {
        let r: Vec<u8> = (0..rng.below(9)).map(|_| rng.below(3) as u8).collect();
        let h: Vec<u8> = (0..rng.below(9)).map(|_| rng.below(3) as u8).collect();
        let ops = align(&r, &h);
        // Replaying the ops walks both sequences to their ends, with matches exactly
        // where the units are equal.
        let (mut i, mut j) = (0, 0);
        for op in &ops {
            match op {
                M | S => {
                    assert_eq!(r[i] == h[j], *op == M, "{r:?} {h:?} {ops:?}");
                    i += 1;
                    j += 1;
                }
                D => i += 1,
                I => j += 1,
            }
        }
        assert_eq!((i, j), (r.len(), h.len()));
        let from_ops = ErrorCounts::from_alignment(&ops);
        assert_eq!(from_ops.edits(), levenshtein(&r, &h), "{r:?} {h:?}");
        // The one-row counter walks the shorter side, so both orientations occur;
        // either way it must pick the very path `align` picks.
        assert_eq!(error_counts(&r, &h), from_ops, "{r:?} {h:?}");
        assert_eq!(from_ops.reference_len, r.len());
        assert_eq!(error_counts(&h, &r).edits(), from_ops.edits());
    }
}
