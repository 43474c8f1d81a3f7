//! CTC against brute force (every alignment enumerated) and finite differences.

use lasr_nn::{ctc_greedy, ctc_loss, ctc_score};
use ndarray::{s, Array2, Array3};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn random3(shape: (usize, usize, usize), seed: u64) -> Array3<f32> {
    lasr_nn::init::uniform(shape, 2.0, &mut ChaCha8Rng::seed_from_u64(seed))
}

/// Collapses a frame path: merge repeats, drop blanks.
fn collapse(path: &[usize], blank: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut prev = usize::MAX;
    for &p in path {
        if p != prev && p != blank {
            out.push(p);
        }
        prev = p;
    }
    out
}

/// `p(target)` by summing over all `V^T` frame paths.
fn brute_force(logits: &Array2<f32>, target: &[usize], blank: usize) -> f64 {
    let (t, v) = logits.dim();
    let probs: Vec<Vec<f64>> = logits
        .rows()
        .into_iter()
        .map(|r| {
            let z: f64 = r.iter().map(|&x| f64::from(x).exp()).sum();
            r.iter().map(|&x| f64::from(x).exp() / z).collect()
        })
        .collect();
    let mut total = 0.0;
    let mut path = vec![0usize; t];
    for code in 0..v.pow(t as u32) {
        let mut c = code;
        for p in path.iter_mut() {
            *p = c % v;
            c /= v;
        }
        if collapse(&path, blank) == target {
            total += path
                .iter()
                .enumerate()
                .map(|(i, &k)| probs[i][k])
                .product::<f64>();
        }
    }
    total
}

#[test]
fn loss_equals_the_sum_over_every_alignment() {
    let cases: &[(usize, &[usize], usize)] = &[
        (4, &[1, 2], 0),
        (5, &[1, 1], 0),
        (5, &[2, 1, 2], 0),
        (3, &[], 0),
        (4, &[3], 0),
        (6, &[1, 3, 3], 2),
    ];
    for (i, &(t, target, blank)) in cases.iter().enumerate() {
        let logits = random3((t, 1, 4), i as u64).slice(s![.., 0, ..]).to_owned();
        let expected = -brute_force(&logits, target, blank).ln();
        let got = ctc_score(logits.view(), target, blank);
        assert!(
            (got - expected).abs() < 1e-9 * expected.abs().max(1.0),
            "case {i}: {got} vs brute force {expected}"
        );
    }
}

#[test]
fn gradient_matches_finite_differences_in_a_padded_batch() {
    let lengths = [7, 4, 6];
    let targets = vec![vec![1, 2, 2], vec![3], vec![3, 1, 3, 2]];
    let logits = random3((7, 3, 4), 11);
    let ctc = ctc_loss(logits.view(), &lengths, &targets, 0).unwrap();
    assert!(ctc.infeasible.is_empty());
    assert_eq!(ctc.labels, 8);
    let eps = 1e-2f32;
    let mut worst = 0f64;
    for idx in ndarray::indices(logits.dim()) {
        let (t, b, k) = idx;
        let mut plus = logits.clone();
        plus[[t, b, k]] += eps;
        let mut minus = logits.clone();
        minus[[t, b, k]] -= eps;
        let lp = ctc_loss(plus.view(), &lengths, &targets, 0).unwrap().sum;
        let lm = ctc_loss(minus.view(), &lengths, &targets, 0).unwrap().sum;
        let numeric = (lp - lm) / (2.0 * f64::from(eps));
        let analytic = f64::from(ctc.grad[[t, b, k]]);
        if t >= lengths[b] {
            assert_eq!(analytic, 0.0, "padding got a gradient at {idx:?}");
        }
        worst = worst.max((numeric - analytic).abs());
    }
    assert!(worst < 1e-4, "worst |analytic - numeric| = {worst:.2e}");
}

#[test]
fn padding_does_not_change_an_utterance() {
    let logits = random3((9, 2, 5), 3);
    let targets = vec![vec![1, 4], vec![2, 2, 3]];
    let both = ctc_loss(logits.view(), &[5, 9], &targets, 0).unwrap();
    let alone = ctc_score(logits.slice(s![..5, 0, ..]), &targets[0], 0);
    assert_eq!(both.losses[0], alone);
    let garbage = {
        let mut g = logits.clone();
        g.slice_mut(s![5.., 0, ..]).fill(1e3);
        g
    };
    let again = ctc_loss(garbage.view(), &[5, 9], &targets, 0).unwrap();
    assert_eq!(again.losses, both.losses);
    assert_eq!(again.grad, both.grad);
}

#[test]
fn too_short_an_utterance_is_skipped_not_poisonous() {
    let logits = random3((3, 2, 4), 5);
    // Two repeats need a blank between them: [1, 1, 1] needs 5 frames.
    let targets = vec![vec![1, 1, 1], vec![2]];
    let ctc = ctc_loss(logits.view(), &[3, 3], &targets, 0).unwrap();
    assert_eq!(ctc.infeasible, vec![0]);
    assert!(ctc.losses[0].is_infinite());
    assert_eq!(ctc.labels, 1);
    assert_eq!(ctc.sum, ctc.losses[1]);
    assert!(ctc.grad.slice(s![.., 0, ..]).iter().all(|&g| g == 0.0));
    assert!(ctc.grad.iter().all(|g| g.is_finite()));
}

#[test]
fn bad_targets_are_errors() {
    let logits = random3((3, 1, 4), 5);
    assert!(ctc_loss(logits.view(), &[3], &[vec![0]], 0).is_err());
    assert!(ctc_loss(logits.view(), &[3], &[vec![4]], 0).is_err());
    assert!(ctc_loss(logits.view(), &[4], &[vec![1]], 0).is_err());
    assert!(ctc_loss(logits.view(), &[3], &[vec![1]], 9).is_err());
}

#[test]
fn greedy_merges_repeats_and_drops_blanks() {
    // Frame winners: 1 1 0 1 2 2 0 0 3
    let winners = [1, 1, 0, 1, 2, 2, 0, 0, 3];
    let mut logits = Array2::zeros((winners.len(), 4));
    for (t, &w) in winners.iter().enumerate() {
        logits[[t, w]] = 5.0;
    }
    let (labels, frames) = ctc_greedy(logits.view(), 0);
    assert_eq!(labels, vec![1, 1, 2, 3]);
    assert_eq!(frames, vec![0, 3, 4, 8]);
}
