//! Global cepstral mean and variance normalisation: statistics accumulated over a whole
//! corpus, then applied to every utterance as `(x - mean) / std` per feature dimension.

use ndarray::{ArrayView2, ArrayViewMut2};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Variance floor, as in Kaldi's `apply-cmvn`: a dimension that never varies (a filter
/// that only ever saw the log floor, say) is centred but not blown up.
const VAR_FLOOR: f64 = 1e-10;

/// Running sums over any number of `[T, D]` feature matrices. Accumulators from
/// different threads combine with [`CmvnStats::merge`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CmvnStats {
    /// Frames seen.
    pub frames: u64,
    /// Per-dimension sum of values, `[D]`.
    pub sum: Vec<f64>,
    /// Per-dimension sum of squared values, `[D]`.
    pub sum_sq: Vec<f64>,
}

impl CmvnStats {
    /// Empty statistics for `dim`-wide features.
    pub fn new(dim: usize) -> Self {
        CmvnStats {
            frames: 0,
            sum: vec![0.0; dim],
            sum_sq: vec![0.0; dim],
        }
    }

    /// Feature width.
    pub fn dim(&self) -> usize {
        self.sum.len()
    }

    /// Adds every frame of `feats` `[T, D]`.
    pub fn accumulate(&mut self, feats: ArrayView2<f32>) -> Result<()> {
        if feats.ncols() != self.dim() {
            return Err(Error::Config(format!(
                "CMVN statistics are {}-wide, features are [{} x {}]",
                self.dim(),
                feats.nrows(),
                feats.ncols()
            )));
        }
        for row in feats.rows() {
            for ((s, q), &x) in self.sum.iter_mut().zip(&mut self.sum_sq).zip(row) {
                let x = f64::from(x);
                *s += x;
                *q += x * x;
            }
        }
        self.frames += feats.nrows() as u64;
        Ok(())
    }

    /// Combines two accumulators (for a parallel reduce).
    pub fn merge(mut self, other: &CmvnStats) -> Result<Self> {
        if other.dim() != self.dim() {
            return Err(Error::Config(format!(
                "cannot merge {}-wide CMVN statistics into {}-wide ones",
                other.dim(),
                self.dim()
            )));
        }
        self.frames += other.frames;
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.sum_sq.iter_mut().zip(&other.sum_sq) {
            *a += b;
        }
        Ok(self)
    }

    /// Mean and standard deviation; fails when no frame was seen.
    pub fn finish(&self) -> Result<Cmvn> {
        if self.frames == 0 {
            return Err(Error::Config(
                "CMVN statistics saw no frames: nothing to normalise with".into(),
            ));
        }
        let n = self.frames as f64;
        let mut mean = Vec::with_capacity(self.dim());
        let mut std = Vec::with_capacity(self.dim());
        for (&s, &q) in self.sum.iter().zip(&self.sum_sq) {
            let m = s / n;
            let var = (q / n - m * m).max(VAR_FLOOR);
            mean.push(m as f32);
            std.push(var.sqrt() as f32);
        }
        Ok(Cmvn {
            frames: self.frames,
            mean,
            std,
        })
    }
}

/// Finished normalisation statistics, serialised with the model's feature config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cmvn {
    /// Frames the statistics were computed from (for the record).
    pub frames: u64,
    /// Per-dimension mean, `[D]`.
    pub mean: Vec<f32>,
    /// Per-dimension standard deviation, `[D]`, floored.
    pub std: Vec<f32>,
}

impl Cmvn {
    /// Feature width.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Normalises `feats` `[T, D]` in place.
    pub fn apply(&self, mut feats: ArrayViewMut2<f32>) -> Result<()> {
        if feats.ncols() != self.dim() || self.std.len() != self.dim() {
            return Err(Error::Config(format!(
                "CMVN is {}-wide (std {}-wide), features are [{} x {}]",
                self.dim(),
                self.std.len(),
                feats.nrows(),
                feats.ncols()
            )));
        }
        let inv: Vec<f32> = self.std.iter().map(|s| 1.0 / s).collect();
        for mut row in feats.rows_mut() {
            for ((x, m), i) in row.iter_mut().zip(&self.mean).zip(&inv) {
                *x = (*x - m) * i;
            }
        }
        Ok(())
    }
}

/// Per-utterance cepstral mean normalisation: subtracts each dimension's mean over the
/// utterance's frames `[T, D]` (nothing for `T = 0`). A fixed gain or microphone
/// colouring adds a constant to every frame of a log-mel dimension, so this removes it;
/// what differs between speakers' voices partly goes with it.
pub fn subtract_mean(feats: ArrayViewMut2<f32>) {
    let frames = feats.nrows();
    if frames == 0 {
        return;
    }
    let mean: Vec<f32> = band_sums(feats.view())
        .iter()
        .map(|m| (m / frames as f64) as f32)
        .collect();
    subtract_from_every_frame(feats, &mean);
}

/// Each band's sum over the frames of `feats` `[T, D]`, in f64 (long utterances).
fn band_sums(feats: ArrayView2<f32>) -> Vec<f64> {
    let mut sums = vec![0f64; feats.ncols()];
    for row in feats.rows() {
        for (m, &x) in sums.iter_mut().zip(row) {
            *m += f64::from(x);
        }
    }
    sums
}

/// `feats[t, d] -= v[d]` for every frame `t`.
fn subtract_from_every_frame(mut feats: ArrayViewMut2<f32>, v: &[f32]) {
    for mut row in feats.rows_mut() {
        for (x, m) in row.iter_mut().zip(v) {
            *x -= m;
        }
    }
}

/// How many frames' worth of trust the utterance's shape must earn: [`subtract_shape`]
/// takes off `T / (T + SHAPE_PRIOR_FRAMES)` of it, half for a one-second utterance.
/// Over a few words the mean spectrum says more about what was said than about the
/// microphone. (On test-clean-dev's tuning utterances 100 read slightly better than
/// taking the whole shape off at every length, and 50 to 400 read alike:
/// DEVELOPERS.md, "Twenty-first session".)
pub const SHAPE_PRIOR_FRAMES: usize = 100;

/// Per-utterance spectral-shape normalisation: subtracts from every frame of `feats`
/// `[T, D]` the utterance's mean over frames less that mean's average over the `D`
/// bands, scaled by `T / (T + SHAPE_PRIOR_FRAMES)` (nothing for `T = 0`). A
/// microphone's or room's response adds a fixed log-gain to each band of every frame;
/// this takes that colouring off but leaves the overall level alone. Removing the level
/// too ([`subtract_mean`]) would lift a quiet recording's pauses above any silence a
/// model trained without it has seen.
pub fn subtract_shape(feats: ArrayViewMut2<f32>) {
    let frames = feats.nrows();
    if frames == 0 {
        return;
    }
    let sums = band_sums(feats.view());
    let level = sums.iter().sum::<f64>() / sums.len().max(1) as f64;
    // The sums over frames, divided by the frames and shrunk by T / (T + prior).
    let scale = 1.0 / (frames + SHAPE_PRIOR_FRAMES) as f64;
    let shape: Vec<f32> = sums.iter().map(|m| ((m - level) * scale) as f32).collect();
    subtract_from_every_frame(feats, &shape);
}

/// Smallest standard deviation [`scale_spread`] divides by: a band that hardly moves
/// (digital silence, a pure tone's neighbours) is not blown up into noise.
pub const SPREAD_FLOOR: f32 = 0.1;

/// Per-utterance partial variance normalisation: each band `d` of `feats` `[T, D]`
/// becomes `mu + (x - mu) * max(s, SPREAD_FLOOR)^-power`, `mu` and `s` being that
/// band's mean and standard deviation over the utterance (nothing for `T = 0`). At
/// `power` 1 every band has unit variance (or its floor's); at 0 nothing changes.
pub fn scale_spread(mut feats: ArrayViewMut2<f32>, power: f32) {
    let frames = feats.nrows();
    if frames == 0 {
        return;
    }
    let means: Vec<f64> = band_sums(feats.view())
        .iter()
        .map(|s| s / frames as f64)
        .collect();
    let mut squares = vec![0f64; feats.ncols()];
    for row in feats.rows() {
        for ((q, &x), m) in squares.iter_mut().zip(row).zip(&means) {
            *q += (f64::from(x) - m).powi(2);
        }
    }
    let gains: Vec<f32> = squares
        .iter()
        .map(|q| {
            ((q / frames as f64).sqrt() as f32)
                .max(SPREAD_FLOOR)
                .powf(-power)
        })
        .collect();
    for mut row in feats.rows_mut() {
        for ((x, &m), g) in row.iter_mut().zip(&means).zip(&gains) {
            *x = m as f32 + (*x - m as f32) * g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array2};

    #[test]
    fn utterance_means_become_zero() {
        let mut f = array![[1.0f32, -3.0], [3.0, -5.0], [5.0, 2.0]];
        subtract_mean(f.view_mut());
        assert_eq!(f, array![[-2.0f32, -1.0], [0.0, -3.0], [2.0, 4.0]]);
        let mut empty = Array2::<f32>::zeros((0, 4));
        subtract_mean(empty.view_mut());
    }

    #[test]
    fn utterance_shapes_go_and_levels_stay() {
        // Frames [1, -3], [3, -5], [5, 2] repeated: means [3, -2], so level 0.5 and
        // shape [2.5, -2.5].
        let frames = 3 * SHAPE_PRIOR_FRAMES;
        let mut f = Array2::from_shape_fn((frames, 2), |(t, d)| {
            [[1.0f32, -3.0], [3.0, -5.0], [5.0, 2.0]][t % 3][d]
        });
        let before = f.clone();
        subtract_shape(f.view_mut());
        // 300 frames against a prior of 100: three quarters of the shape comes off.
        let off = 0.75 * 2.5;
        for (a, b) in f.rows().into_iter().zip(before.rows()) {
            assert!((a[0] - (b[0] - off)).abs() < 1e-5, "{a} {b}");
            assert!((a[1] - (b[1] + off)).abs() < 1e-5, "{a} {b}");
        }
        // One frame: its whole spectrum is its shape, and 1 / 101 of it comes off.
        let mut one = array![[2.0f32, 0.0]];
        subtract_shape(one.view_mut());
        assert!((one[[0, 0]] - (2.0 - 1.0 / 101.0)).abs() < 1e-6, "{one}");
        assert!((one[[0, 1]] - 1.0 / 101.0).abs() < 1e-6, "{one}");
        let mut empty = Array2::<f32>::zeros((0, 4));
        subtract_shape(empty.view_mut());
    }

    #[test]
    fn spreads_scale_by_a_power_of_their_deviation_around_the_band_mean() {
        // Band 0: mean 1, deviation 4 (values -3, 5); band 1: constant, under the floor.
        let mut f = array![[-3.0f32, 2.0], [5.0, 2.0]];
        scale_spread(f.view_mut(), 0.5);
        // 4^-0.5 = 0.5: -3 -> 1 - 2, 5 -> 1 + 2; the constant band stays.
        assert_eq!(f, array![[-1.0f32, 2.0], [3.0, 2.0]]);
        let mut g = array![[-3.0f32, 2.0], [5.0, 2.05]];
        scale_spread(g.view_mut(), 1.0);
        // Power 1: unit deviation; band 1's 0.025 is floored at 0.1, so x10.
        assert_eq!(g.column(0).to_vec(), [0.0, 2.0]);
        assert!((g[[1, 1]] - g[[0, 1]] - 0.5).abs() < 1e-5, "{g}");
        let before = array![[1.0f32, -3.0], [3.0, -5.0], [5.0, 2.0]];
        let mut h = before.clone();
        scale_spread(h.view_mut(), 0.0);
        assert_eq!(h, before);
        let mut empty = Array2::<f32>::zeros((0, 4));
        scale_spread(empty.view_mut(), 0.3);
    }

    #[test]
    fn normalised_corpus_has_zero_mean_unit_variance() {
        let a = Array2::from_shape_fn((50, 3), |(t, d)| {
            (t as f32 * 0.37 + d as f32 * 5.0).sin() * (d + 1) as f32 + d as f32
        });
        let b = Array2::from_shape_fn((70, 3), |(t, d)| (t as f32 * 0.11).cos() * 2.0 - d as f32);
        let mut s1 = CmvnStats::new(3);
        s1.accumulate(a.view()).unwrap();
        let mut s2 = CmvnStats::new(3);
        s2.accumulate(b.view()).unwrap();
        let cmvn = s1.merge(&s2).unwrap().finish().unwrap();
        assert_eq!(cmvn.frames, 120);
        let mut all = ndarray::concatenate(ndarray::Axis(0), &[a.view(), b.view()]).unwrap();
        cmvn.apply(all.view_mut()).unwrap();
        for d in 0..3 {
            let col = all.column(d);
            let mean = col.sum() / 120.0;
            let var = col.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 120.0;
            assert!(mean.abs() < 1e-5, "dim {d} mean {mean}");
            assert!((var - 1.0).abs() < 1e-4, "dim {d} var {var}");
        }
    }

    #[test]
    fn constant_dimension_and_mismatches() {
        let mut s = CmvnStats::new(2);
        s.accumulate(array![[1.0, 5.0], [2.0, 5.0]].view()).unwrap();
        let c = s.finish().unwrap();
        let mut x = array![[1.5f32, 5.0]];
        c.apply(x.view_mut()).unwrap();
        assert_eq!(x, array![[0.0, 0.0]]);
        assert!(s.accumulate(Array2::zeros((1, 3)).view()).is_err());
        assert!(CmvnStats::new(2).finish().is_err());
        assert!(c.apply(Array2::zeros((1, 3)).view_mut()).is_err());
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Cmvn>(&json).unwrap(), c);
    }
}
