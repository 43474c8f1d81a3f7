//! Inverted dropout with counter-based masks.
//!
//! A mask element is a pure function of (stream seed, site, index): no generator state
//! is carried between calls. Each utterance of a batch gets its own stream seed, so an
//! utterance is masked the same way whether it trains in a batch of 16 or in a part of
//! a batch on another thread, and a resumed run redraws exactly the masks it would have
//! drawn.
//!
//! Forward is `y = x * mask`, backward `dx = dy * mask`, with mask elements 0 (dropped,
//! probability `p`) or `1 / (1 - p)` (kept), so the expected activation is unchanged
//! and inference needs no rescaling.

use ndarray::{Array2, Array3};

/// A uniform draw in `[0, 1)` from a hash of its coordinates (SplitMix64's finaliser
/// over a combination of the three; 24 bits of mantissa).
pub fn uniform(seed: u64, site: u64, index: u64) -> f32 {
    let mut z =
        seed ^ site.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

/// Dropout with drop probability `p` in `[0, 1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    pub p: f32,
}

impl Dropout {
    fn value(&self, seed: u64, site: u64, index: u64) -> f32 {
        if uniform(seed, site, index) < self.p {
            0.0
        } else {
            1.0 / (1.0 - self.p)
        }
    }

    /// Mask for a time-major activation `[T, B, D]`: column `b` draws from
    /// `seeds[b]` (`seeds` `[B]`), element `(t, b, j)` at index `t * D + j`.
    pub fn mask(&self, dim: (usize, usize, usize), seeds: &[u64], site: u64) -> Array3<f32> {
        let (_, batch, d) = dim;
        assert_eq!(seeds.len(), batch, "one dropout seed per utterance");
        Array3::from_shape_fn(dim, |(t, b, j)| {
            self.value(seeds[b], site, (t * d + j) as u64)
        })
    }

    /// Mask for step `step` of a step-wise activation `[B, D]` (the decoder's), the
    /// same as row `step` of [`Dropout::mask`] over `[steps, B, D]`.
    pub fn step_mask(
        &self,
        dim: (usize, usize),
        seeds: &[u64],
        site: u64,
        step: usize,
    ) -> Array2<f32> {
        let (batch, d) = dim;
        assert_eq!(seeds.len(), batch, "one dropout seed per utterance");
        Array2::from_shape_fn(dim, |(b, j)| {
            self.value(seeds[b], site, (step * d + j) as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_uniform_and_masks_keep_the_expectation() {
        let n = 200_000u64;
        let mean = (0..n).map(|i| f64::from(uniform(7, 1, i))).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        let low = (0..n).filter(|&i| uniform(7, 1, i) < 0.1).count() as f64 / n as f64;
        assert!((low - 0.1).abs() < 0.005, "P(u < 0.1) = {low}");
        let drop = Dropout { p: 0.25 };
        let m = drop.mask((50, 4, 100), &[1, 2, 3, 4], 0);
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        let dropped = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        assert!((dropped - 0.25).abs() < 0.02, "dropped {dropped}");
        assert!((m.mean().unwrap() - 1.0).abs() < 0.03);
    }

    #[test]
    fn a_column_depends_only_on_its_own_seed_and_site() {
        let drop = Dropout { p: 0.5 };
        let whole = drop.mask((6, 3, 5), &[10, 20, 30], 4);
        let alone = drop.mask((4, 1, 5), &[20], 4);
        assert_eq!(whole.slice(ndarray::s![..4, 1..2, ..]), alone);
        // Other sites and seeds draw differently.
        assert_ne!(
            drop.mask((6, 1, 5), &[20], 5),
            whole.slice(ndarray::s![.., 1..2, ..])
        );
        assert_ne!(
            whole.slice(ndarray::s![.., 0, ..]),
            whole.slice(ndarray::s![.., 1, ..])
        );
        for t in 0..6 {
            assert_eq!(
                drop.step_mask((3, 5), &[10, 20, 30], 4, t),
                whole.slice(ndarray::s![t, .., ..])
            );
        }
        assert!(Dropout { p: 0.0 }
            .mask((3, 2, 2), &[1, 2], 0)
            .iter()
            .all(|&v| v == 1.0));
    }

    #[test]
    fn gradient_is_the_mask_by_finite_differences() {
        use crate::gradcheck::{check_input, projection};
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let x = crate::init::uniform((5, 2, 4), 1.0, &mut rng);
        let r = crate::init::uniform((5, 2, 4), 1.0, &mut rng);
        let mask = Dropout { p: 0.3 }.mask(x.dim(), &[8, 9], 1);
        let loss = |x: &ndarray::ArrayD<f32>| {
            projection(r.view().into_dyn(), (x * &mask.view().into_dyn()).view())
        };
        let dx = (&r * &mask).into_dyn();
        let report = check_input(&x.into_dyn(), &dx, &loss, 1e-2, 40, 1e-4);
        assert!(report.error < 1e-3, "{report:?}");
    }
}
