//! SpecAugment (Park et al., 2019): frequency and time masks on a feature matrix, for
//! training only. Time warping is left out; the paper found it the least useful part.

use ndarray::ArrayViewMut2;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Mask counts and widths. The defaults are the paper's LibriSpeech double policy
/// (2 frequency masks up to 27 bins, 2 time masks up to 100 frames), with each time
/// mask also capped at a fifth of the utterance so short utterances keep their words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpecAugmentConfig {
    /// Number of frequency masks.
    pub freq_masks: usize,
    /// Widest frequency mask, in bins (`F`).
    pub max_freq_width: usize,
    /// Number of time masks.
    pub time_masks: usize,
    /// Widest time mask, in frames (`T`).
    pub max_time_width: usize,
    /// A time mask covers at most this fraction of the utterance (`p`).
    pub max_time_fraction: f32,
    /// Value written into masked cells: 0 is the corpus mean after CMVN.
    pub mask_value: f32,
}

impl Default for SpecAugmentConfig {
    fn default() -> Self {
        SpecAugmentConfig {
            freq_masks: 2,
            max_freq_width: 27,
            time_masks: 2,
            max_time_width: 100,
            max_time_fraction: 0.2,
            mask_value: 0.0,
        }
    }
}

impl SpecAugmentConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.max_time_fraction) {
            return Err(Error::Config(format!(
                "spec_augment.max_time_fraction = {} must lie in [0, 1]",
                self.max_time_fraction
            )));
        }
        if !self.mask_value.is_finite() {
            return Err(Error::Config(
                "spec_augment.mask_value must be finite".into(),
            ));
        }
        Ok(())
    }
}

/// Uniform integer in `0..=max`.
fn uniform(rng: &mut impl Rng, max: usize) -> usize {
    ((rng.next_u64() as u128 * (max as u128 + 1)) >> 64) as usize
}

/// Masks `feats` `[T, D]` in place. The same `rng` state gives the same masks, so a
/// seeded generator makes training runs repeatable.
pub fn spec_augment(
    feats: &mut ArrayViewMut2<f32>,
    config: &SpecAugmentConfig,
    rng: &mut impl Rng,
) {
    let (frames, dim) = feats.dim();
    for _ in 0..config.freq_masks {
        let width = uniform(rng, config.max_freq_width.min(dim));
        let start = uniform(rng, dim - width);
        feats
            .slice_mut(ndarray::s![.., start..start + width])
            .fill(config.mask_value);
    }
    let cap = ((frames as f32 * config.max_time_fraction) as usize).min(config.max_time_width);
    for _ in 0..config.time_masks {
        let width = uniform(rng, cap.min(frames));
        let start = uniform(rng, frames - width);
        feats
            .slice_mut(ndarray::s![start..start + width, ..])
            .fill(config.mask_value);
    }
}

/// [`spec_augment`] with a fresh ChaCha8 generator seeded with `seed`: the same seed
/// gives the same masks on every platform and in every version of `rand`.
pub fn spec_augment_seeded(feats: &mut ArrayViewMut2<f32>, config: &SpecAugmentConfig, seed: u64) {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    spec_augment(feats, config, &mut rng);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn masks_are_bounded_seeded_and_only_write_the_mask_value() {
        let cfg = SpecAugmentConfig {
            mask_value: -7.0,
            ..Default::default()
        };
        let orig = Array2::from_shape_fn((300, 80), |(t, d)| (t * 80 + d) as f32);
        let mut masked_any = false;
        for seed in 0..50 {
            let mut a = orig.clone();
            spec_augment(
                &mut a.view_mut(),
                &cfg,
                &mut ChaCha8Rng::seed_from_u64(seed),
            );
            let mut b = orig.clone();
            spec_augment(
                &mut b.view_mut(),
                &cfg,
                &mut ChaCha8Rng::seed_from_u64(seed),
            );
            assert_eq!(a, b, "same seed, same masks");
            // Every changed cell holds the mask value; masked columns are whole columns
            // or masked rows whole rows.
            let mut cols = 0;
            for d in 0..80 {
                if a.column(d).iter().all(|&v| v == -7.0) {
                    cols += 1;
                }
            }
            let mut rows = 0;
            for t in 0..300 {
                if a.row(t).iter().all(|&v| v == -7.0) {
                    rows += 1;
                }
            }
            for ((t, d), &v) in a.indexed_iter() {
                if v != orig[(t, d)] {
                    assert_eq!(v, -7.0);
                    let whole_col = a.column(d).iter().all(|&x| x == -7.0);
                    let whole_row = a.row(t).iter().all(|&x| x == -7.0);
                    assert!(whole_col || whole_row);
                }
            }
            assert!(cols <= 2 * 27, "{cols} masked bins");
            assert!(
                rows <= 2 * 60,
                "{rows} masked frames (cap is 0.2 * 300 = 60 each)"
            );
            masked_any |= cols > 0 && rows > 0;
        }
        assert!(masked_any);
        let none = SpecAugmentConfig {
            freq_masks: 0,
            time_masks: 0,
            ..Default::default()
        };
        let mut a = orig.clone();
        spec_augment(&mut a.view_mut(), &none, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(a, orig);
    }
}
