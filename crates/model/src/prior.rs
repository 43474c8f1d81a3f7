//! The CTC output's label prior, and the correction that divides the letters' part
//! of it out before the search.
//!
//! A CTC model learns from its training transcripts how common each letter is as
//! well as what it sounds like; the posterior `p(k | x_t)` it outputs carries that
//! prior, and the character and word language models fused in the search then count
//! it a second time. Dividing the posterior by the prior to a power `s` (a scaled
//! likelihood, as hybrid recognisers use; Kanda et al., "Maximum a posteriori based
//! decoding for CTC acoustic models", Interspeech 2016) leaves the choice between
//! letters more to the sound and to the language models.
//!
//! Here the correction touches the letters only: the blank, the word separator, the
//! special symbols and any symbol the model all but never outputs keep their
//! log-probabilities. Among the letters it is centred, `ln q_k - sum_j q_j ln q_j`
//! with `q` the prior restricted to the letters: its prior-weighted mean is zero, so
//! it mostly moves probability between letters and leaves the balance of letters
//! against blanks and word ends, which `ctc_insertion_bonus` and the word model's
//! settings hold, nearly where it was (at a frame shaped like the prior, the letters'
//! total probability grows by Jensen's inequality: x1.11 for the shipped prior at
//! scale 0.6). Correcting the space as well cost deletions on the second tuning set
//! (DEVELOPERS.md, "Twenty-second session"). A letter's share is floored at
//! [`MIN_LETTER_SHARE`] so that one the model barely outputs is not boosted without
//! bound.
//!
//! The prior is measured on a corpus ([`PriorSums`], `lasr prior`): the mean over
//! its frames of each symbol's posterior, of the model file's own output (an
//! ensemble's mixture), read through the file's front end.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use lasr_data::Entry;
use lasr_decode::Vocab;
use lasr_nn::WeightFormat;

use crate::bench::BenchSkip;
use crate::error::{Error, Result};
use crate::file::ModelFile;

/// A symbol whose prior is below this is never corrected: the model all but never
/// outputs it (the specials, letters the training text lacked), and its logarithm
/// would say nothing about the transcripts.
pub const MIN_LETTER_PRIOR: f32 = 1e-5;

/// The smallest share among the letters `q_k` the correction reads: rarer letters are
/// boosted as if they had this share. Below every letter of the shipped prior (`z`,
/// the rarest, has 5e-4), it caps the boost of a letter just above
/// [`MIN_LETTER_PRIOR`] at `scale x (ln 1e4 + sum_j q_j ln q_j)` nats per frame (about
/// 6.3 per unit of scale with the shipped prior's letters).
pub const MIN_LETTER_SHARE: f64 = 1e-4;

/// How often, frame by frame, a model puts its CTC probability on each symbol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtcPrior {
    /// Per symbol (the vocabulary's order, blank included), the mean of its CTC
    /// posterior over `frames`: non-negative, summing to 1.
    pub probs: Vec<f32>,
    /// Frames (after the listener's time reduction) the mean was taken over.
    pub frames: u64,
}

impl CtcPrior {
    /// Checks that it is a distribution over `vocab_size` symbols.
    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        let bad = |why: String| Err(Error::Model(format!("CTC prior: {why}")));
        if self.probs.len() != vocab_size {
            return bad(format!(
                "{} probabilities for {vocab_size} symbols",
                self.probs.len()
            ));
        }
        if self.frames == 0 {
            return bad("measured over no frames".into());
        }
        if let Some((k, p)) = self
            .probs
            .iter()
            .enumerate()
            .find(|(_, p)| !(p.is_finite() && **p >= 0.0))
        {
            return bad(format!("symbol {k} has probability {p}"));
        }
        let sum: f64 = self.probs.iter().map(|&p| f64::from(p)).sum();
        if (sum - 1.0).abs() > 1e-3 {
            return bad(format!("the probabilities sum to {sum}, not 1"));
        }
        Ok(())
    }

    /// Which symbols `[V]` the correction touches: all but `blank`, the word
    /// separator, the specials and symbols below [`MIN_LETTER_PRIOR`].
    pub fn letters(&self, vocab: &Vocab, blank: usize) -> Vec<bool> {
        let space = vocab.id(' ');
        (0..self.probs.len())
            .map(|k| {
                k != blank
                    && k > Vocab::UNK
                    && Some(k) != space
                    && self.probs[k] >= MIN_LETTER_PRIOR
            })
            .collect()
    }

    /// What the correction subtracts, per unit of scale, from each symbol's CTC
    /// log-probability at every frame `[V]`: `ln q_k - sum_j q_j ln q_j` for the
    /// [`CtcPrior::letters`] (see the module notes; `q` is the prior restricted to
    /// them, each `ln q` floored at `ln MIN_LETTER_SHARE`), 0 for the rest.
    pub fn letter_shift(&self, vocab: &Vocab, blank: usize) -> Vec<f32> {
        let letters = self.letters(vocab, blank);
        let mass: f64 = (0..self.probs.len())
            .filter(|&k| letters[k])
            .map(|k| f64::from(self.probs[k]))
            .sum();
        if mass <= 0.0 {
            return vec![0.0; self.probs.len()];
        }
        let q = |k: usize| f64::from(self.probs[k]) / mass;
        let ln_q = |k: usize| q(k).max(MIN_LETTER_SHARE).ln();
        let mean: f64 = (0..self.probs.len())
            .filter(|&k| letters[k])
            .map(|k| q(k) * ln_q(k))
            .sum();
        (0..self.probs.len())
            .map(|k| {
                if letters[k] {
                    (ln_q(k) - mean) as f32
                } else {
                    0.0
                }
            })
            .collect()
    }
}

/// Subtracts `scale` times `shift` ([`CtcPrior::letter_shift`], `[V]`) from every
/// frame of the CTC log-probabilities `log_probs` `[U, V]`.
pub fn correct(log_probs: &mut Array2<f32>, shift: &[f32], scale: f32) {
    for mut row in log_probs.rows_mut() {
        for (x, s) in row.iter_mut().zip(shift) {
            *x -= scale * s;
        }
    }
}

/// The running sums a [`CtcPrior`] is measured with: add each utterance's CTC
/// log-probabilities, merge sums made on other threads, then [`PriorSums::prior`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriorSums {
    /// Per symbol, the sum of its posterior over the frames added.
    pub sums: Vec<f64>,
    /// Frames added.
    pub frames: u64,
}

impl PriorSums {
    /// Adds the frames of one utterance's CTC log-probabilities `[U, V]`; one with a
    /// NaN or an infinite probability is refused and adds nothing (one such frame
    /// would spoil every sum).
    pub fn add(&mut self, log_probs: ArrayView2<f32>) -> Result<()> {
        if log_probs
            .iter()
            .any(|lp| lp.is_nan() || *lp == f32::INFINITY)
        {
            return Err(Error::Model(
                "CTC prior: the model's output holds a NaN or an infinite probability".into(),
            ));
        }
        let v = log_probs.ncols();
        if self.sums.is_empty() {
            self.sums = vec![0.0; v];
        }
        if self.sums.len() != v {
            return Err(Error::Model(format!(
                "CTC prior: {v} symbols after {}",
                self.sums.len()
            )));
        }
        for row in log_probs.rows() {
            for (s, &lp) in self.sums.iter_mut().zip(row) {
                *s += f64::from(lp).exp();
            }
        }
        self.frames += log_probs.nrows() as u64;
        Ok(())
    }

    /// Both sums together (either may be empty).
    pub fn merge(mut self, other: PriorSums) -> Result<PriorSums> {
        if self.sums.is_empty() {
            return Ok(other);
        }
        if other.sums.is_empty() {
            return Ok(self);
        }
        if self.sums.len() != other.sums.len() {
            return Err(Error::Model(format!(
                "CTC prior: sums over {} and {} symbols",
                self.sums.len(),
                other.sums.len()
            )));
        }
        for (a, b) in self.sums.iter_mut().zip(&other.sums) {
            *a += b;
        }
        self.frames += other.frames;
        Ok(self)
    }

    /// The mean posterior per symbol, renormalised against rounding.
    pub fn prior(&self) -> Result<CtcPrior> {
        let total: f64 = self.sums.iter().sum();
        if self.frames == 0 || !(total.is_finite() && total > 0.0) {
            return Err(Error::Model("CTC prior: no frames were measured".into()));
        }
        Ok(CtcPrior {
            probs: self.sums.iter().map(|s| (s / total) as f32).collect(),
            frames: self.frames,
        })
    }
}

/// A measured prior and what went into it.
#[derive(Debug, Clone)]
pub struct PriorMeasurement {
    /// The mean posterior over every frame of the utterances measured.
    pub prior: CtcPrior,
    /// Utterances measured.
    pub utterances: usize,
    /// Their audio, seconds.
    pub seconds: f64,
    /// Files that could not be read or run, left out.
    pub skipped: Vec<BenchSkip>,
}

/// Measures `model`'s CTC prior on `entries` (their transcripts are not read): each
/// utterance read through the model's front end and run whole (no cutting) with its
/// weights in `format`, the posteriors of its output (an ensemble's mixture) summed
/// over every frame. A file that cannot be read or run is reported in
/// [`PriorMeasurement::skipped`] and left out; if none is left, an error. `tick` is
/// called once per entry (progress bars).
pub fn measure(
    model: &ModelFile,
    format: WeightFormat,
    entries: &[Entry],
    tick: &(dyn Fn() + Sync),
) -> Result<PriorMeasurement> {
    if model.las.ctc.is_none() {
        return Err(Error::Model(
            "the model has no CTC head, so no CTC output to measure a prior of".into(),
        ));
    }
    let weights = model.inference_weights(format);
    let front = model.front_end()?;
    let results: Vec<Result<(PriorSums, f64)>> = entries
        .par_iter()
        .map_init(
            || front.clone(),
            |front, e| {
                let r = (|| {
                    let audio = e.load_audio()?;
                    let seconds = audio.duration_secs();
                    let feats = front
                        .audio_features(audio)
                        .map_err(|err| err.in_file(&e.audio))?;
                    let lp = model.ctc_log_probs(&weights, feats.view())?;
                    let mut sums = PriorSums::default();
                    sums.add(lp.view())?;
                    Ok((sums, seconds))
                })();
                tick();
                r
            },
        )
        .collect();
    let mut total = PriorSums::default();
    let (mut utterances, mut seconds) = (0, 0.0);
    let mut skipped = Vec::new();
    for (e, r) in entries.iter().zip(results) {
        match r {
            Ok((sums, s)) => {
                total = total.merge(sums)?;
                utterances += 1;
                seconds += s;
            }
            Err(err) => skipped.push(BenchSkip {
                id: e.id.clone(),
                error: err.to_string(),
            }),
        }
    }
    if utterances == 0 {
        let why = skipped.first().map_or("there were none".to_string(), |s| {
            format!("the first, {}: {}", s.id, s.error)
        });
        return Err(Error::Model(format!(
            "no utterance could be measured ({} skipped; {why})",
            skipped.len()
        )));
    }
    Ok(PriorMeasurement {
        prior: total.prior()?,
        utterances,
        seconds,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn prior(probs: Vec<f32>) -> CtcPrior {
        CtcPrior { probs, frames: 10 }
    }

    #[test]
    fn letter_shift_is_centred_log_prior_of_the_letters_only() {
        let vocab = Vocab::librispeech();
        // Blank 0.3, space 0.1, apostrophe 0.05, a 0.35, b 0.2, the other letters 0.
        let mut p = vec![0.0f32; vocab.len()];
        p[0] = 0.3;
        p[4] = 0.1;
        p[5] = 0.05;
        p[6] = 0.35;
        p[7] = 0.2;
        let pr = prior(p);
        pr.validate(vocab.len()).unwrap();
        let shift = pr.letter_shift(&vocab, 0);
        let q = [0.05f64 / 0.6, 0.35 / 0.6, 0.2 / 0.6];
        let mean: f64 = q.iter().map(|q| q * q.ln()).sum();
        for (k, qk) in [5usize, 6, 7].into_iter().zip(q) {
            assert!(
                (f64::from(shift[k]) - (qk.ln() - mean)).abs() < 1e-6,
                "{k}: {}",
                shift[k]
            );
        }
        for k in [0usize, 1, 2, 3, 4, 8, 31] {
            assert_eq!(shift[k], 0.0, "symbol {k}");
        }
        // Centred: the shift's prior-weighted mean over the letters is 0.
        let weighted: f64 = [5usize, 6, 7]
            .into_iter()
            .zip(q)
            .map(|(k, qk)| qk * f64::from(shift[k]))
            .sum();
        assert!(weighted.abs() < 1e-6, "{weighted}");
    }

    #[test]
    fn a_letter_the_model_barely_outputs_is_boosted_as_if_it_had_the_least_share() {
        let vocab = Vocab::librispeech();
        let mut p = vec![0.0f32; vocab.len()];
        p[0] = 0.5;
        p[6] = 0.25;
        p[7] = 0.25 - 2e-5;
        p[8] = 2e-5;
        let pr = prior(p);
        let shift = pr.letter_shift(&vocab, 0);
        // q = 0.5, 0.5 - 4e-5, 4e-5; the last read as MIN_LETTER_SHARE.
        let q = [0.5f64, 0.5 - 4e-5, 4e-5];
        let mean = q[0] * q[0].ln() + q[1] * q[1].ln() + q[2] * MIN_LETTER_SHARE.ln();
        assert!((f64::from(shift[8]) - (MIN_LETTER_SHARE.ln() - mean)).abs() < 1e-5);
        assert!((f64::from(shift[6]) - (q[0].ln() - mean)).abs() < 1e-5);
        assert_eq!(
            pr.letters(&vocab, 0)[..10],
            [false, false, false, false, false, false, true, true, true, false]
        );
    }

    #[test]
    fn a_uniform_letter_prior_changes_nothing() {
        let vocab = Vocab::librispeech();
        let mut p = vec![0.0f32; vocab.len()];
        p[0] = 0.44;
        p[4] = 0.02;
        for x in &mut p[5..] {
            *x = 0.02;
        }
        let shift = prior(p).letter_shift(&vocab, 0);
        assert!(shift.iter().all(|s| s.abs() < 1e-6), "{shift:?}");
    }

    #[test]
    fn sums_measure_the_mean_posterior_over_frames() {
        let a = array![[0.5f32, 0.25, 0.25], [1.0, 0.0, 0.0]].mapv(f32::ln);
        let b = array![[0.0f32, 0.5, 0.5]].mapv(f32::ln);
        let mut one = PriorSums::default();
        one.add(a.view()).unwrap();
        let mut two = PriorSums::default();
        two.add(b.view()).unwrap();
        let p = one.merge(two).unwrap().prior().unwrap();
        assert_eq!(p.frames, 3);
        let want = [1.5f32 / 3.0, 0.75 / 3.0, 0.75 / 3.0];
        for (got, want) in p.probs.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{:?}", p.probs);
        }
        p.validate(3).unwrap();
        let mut wrong = PriorSums::default();
        wrong.add(a.view()).unwrap();
        assert!(wrong.add(array![[0.0f32; 4]].view()).is_err());
        // A NaN frame is refused and leaves the sums as they were.
        let before = wrong.clone();
        assert!(wrong.add(array![[f32::NAN, 0.0, 0.0]].view()).is_err());
        assert_eq!(wrong, before);
        assert!(PriorSums::default().prior().is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        let e = prior(vec![0.5, 0.5]).validate(3).unwrap_err().to_string();
        assert!(e.contains("2 probabilities for 3 symbols"), "{e}");
        let e = prior(vec![0.5, 0.6]).validate(2).unwrap_err().to_string();
        assert!(e.contains("sum to"), "{e}");
        let e = prior(vec![1.5, -0.5]).validate(2).unwrap_err().to_string();
        assert!(e.contains("symbol 1"), "{e}");
        let e = prior(vec![f32::NAN, 1.0])
            .validate(2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("symbol 0 has probability NaN"), "{e}");
        let e = CtcPrior {
            probs: vec![1.0],
            frames: 0,
        }
        .validate(1)
        .unwrap_err()
        .to_string();
        assert!(e.contains("no frames"), "{e}");
    }

    #[test]
    fn correct_subtracts_the_scaled_shift_from_every_frame() {
        let mut lp = array![[-1.0f32, -2.0], [-3.0, -4.0]];
        correct(&mut lp, &[0.0, 1.0], 0.5);
        assert_eq!(lp, array![[-1.0f32, -2.5], [-3.0, -4.5]]);
    }
}
