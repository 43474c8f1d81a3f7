//! Kaldi-compatible log-mel filterbank features (`compute-fbank-feats`, as exposed by
//! `torchaudio.compliance.kaldi.fbank`).
//!
//! Per frame: optional dither, DC removal, pre-emphasis, window, zero padding to the FFT
//! size, power spectrum, triangular mel filters on Kaldi's mel scale
//! (`1127 ln(1 + f/700)`), log with a floor at `f32::EPSILON`.
//!
//! [`Fbank`] plans the FFT and builds the window and filters once; computing a frame
//! allocates nothing.

use ndarray::Array2;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::specaug::SpecAugmentConfig;
use crate::spectrum::PowerSpectrum;

/// Analysis window applied to each frame before the FFT (Kaldi's `--window-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WindowType {
    /// Hann window raised to the power 0.85 (Kaldi's default).
    #[default]
    Povey,
    /// Symmetric Hann window.
    Hanning,
    /// Symmetric Hamming window (0.54 - 0.46 cos).
    Hamming,
    /// Blackman window with coefficient [`FeatureConfig::blackman_coeff`].
    Blackman,
    /// No window.
    Rectangular,
}

/// Every setting that decides what features come out of a waveform.
///
/// The defaults reproduce `torchaudio.compliance.kaldi.fbank(wave, num_mel_bins=80,
/// dither=0.0)` on a 16 kHz waveform at 16-bit integer scale. Serialised with every
/// model, so a model always gets the features it was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeatureConfig {
    /// Rate the features are computed at; audio at any other rate is resampled first.
    pub sample_rate: u32,
    /// Frame length in milliseconds (Kaldi `--frame-length`).
    pub frame_length_ms: f32,
    /// Frame shift in milliseconds (Kaldi `--frame-shift`).
    pub frame_shift_ms: f32,
    /// Standard deviation of Gaussian noise added to every sample (16-bit scale);
    /// 0 turns it off. Kaldi's own default is 1.0; lasr's is 0 for reproducibility.
    pub dither: f32,
    /// Seed of the dither noise, so that dithered features are reproducible.
    pub dither_seed: u64,
    /// Subtract each frame's mean before anything else.
    pub remove_dc_offset: bool,
    /// Pre-emphasis coefficient: `x[i] -= k * x[i-1]` (and `x[0] -= k * x[0]`).
    pub preemphasis: f32,
    /// Window function.
    pub window: WindowType,
    /// Only used by [`WindowType::Blackman`].
    pub blackman_coeff: f32,
    /// Zero-pad each frame to the next power of two before the FFT.
    pub round_to_power_of_two: bool,
    /// Number of triangular mel filters, i.e. feature width.
    pub num_mel_bins: usize,
    /// Lower edge of the first mel filter in Hz.
    pub low_freq: f32,
    /// Upper edge of the last mel filter in Hz; zero or negative is an offset from the
    /// Nyquist frequency (Kaldi's convention).
    pub high_freq: f32,
    /// Use the power spectrum (`|X|^2`) rather than the magnitude.
    pub use_power: bool,
    /// Take the log of the mel energies.
    pub use_log: bool,
    /// Mel energies are floored here before the log (Kaldi: `FLT_EPSILON`).
    pub log_floor: f32,
    /// Only frames that fit whole in the signal (true), or frames every shift with the
    /// signal reflected at its ends (false).
    pub snip_edges: bool,
    /// Masks applied during training only; see [`crate::spec_augment`].
    pub spec_augment: SpecAugmentConfig,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            sample_rate: 16000,
            frame_length_ms: 25.0,
            frame_shift_ms: 10.0,
            dither: 0.0,
            dither_seed: 0,
            remove_dc_offset: true,
            preemphasis: 0.97,
            window: WindowType::Povey,
            blackman_coeff: 0.42,
            round_to_power_of_two: true,
            num_mel_bins: 80,
            low_freq: 20.0,
            high_freq: 0.0,
            use_power: true,
            use_log: true,
            log_floor: f32::EPSILON,
            snip_edges: true,
            spec_augment: SpecAugmentConfig::default(),
        }
    }
}

impl FeatureConfig {
    /// Samples per frame (Kaldi truncates, as `int(rate * ms / 1000)`).
    pub fn frame_length(&self) -> usize {
        (f64::from(self.sample_rate) * f64::from(self.frame_length_ms) * 0.001) as usize
    }

    /// Samples between frame starts.
    pub fn frame_shift(&self) -> usize {
        (f64::from(self.sample_rate) * f64::from(self.frame_shift_ms) * 0.001) as usize
    }

    /// FFT length.
    pub fn padded_length(&self) -> usize {
        let n = self.frame_length();
        if self.round_to_power_of_two {
            n.next_power_of_two()
        } else {
            n
        }
    }

    /// Frames produced from `num_samples` samples (Kaldi's `NumFrames`).
    pub fn num_frames(&self, num_samples: usize) -> usize {
        let (len, shift) = (self.frame_length(), self.frame_shift());
        if shift == 0 {
            return 0;
        }
        if self.snip_edges {
            if num_samples < len {
                0
            } else {
                1 + (num_samples - len) / shift
            }
        } else {
            (num_samples + shift / 2) / shift
        }
    }

    /// Upper filter edge in Hz after resolving the Nyquist-relative convention.
    pub fn resolved_high_freq(&self) -> f32 {
        let nyquist = 0.5 * self.sample_rate as f32;
        if self.high_freq <= 0.0 {
            nyquist + self.high_freq
        } else {
            self.high_freq
        }
    }

    /// Checks every value; the error names the field and why it is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.sample_rate == 0 {
            return bad("sample_rate must be positive".into());
        }
        if self.frame_length_ms.is_nan() || self.frame_length_ms <= 0.0 || self.frame_length() < 2 {
            return bad(format!(
                "frame_length_ms = {} gives fewer than 2 samples per frame",
                self.frame_length_ms
            ));
        }
        if self.frame_shift_ms.is_nan() || self.frame_shift_ms <= 0.0 || self.frame_shift() == 0 {
            return bad(format!(
                "frame_shift_ms = {} gives a shift of 0 samples",
                self.frame_shift_ms
            ));
        }
        if self.frame_length() > 1 << 20 {
            return bad(format!(
                "frame_length_ms = {} is absurdly long",
                self.frame_length_ms
            ));
        }
        if !(self.dither >= 0.0 && self.dither.is_finite()) {
            return bad(format!(
                "dither = {} must be a finite value >= 0",
                self.dither
            ));
        }
        if !(0.0..=1.0).contains(&self.preemphasis) {
            return bad(format!(
                "preemphasis = {} must lie in [0, 1]",
                self.preemphasis
            ));
        }
        if self.num_mel_bins < 1 || self.num_mel_bins > 1024 {
            return bad(format!(
                "num_mel_bins = {} must lie in 1..=1024",
                self.num_mel_bins
            ));
        }
        let nyquist = 0.5 * self.sample_rate as f32;
        let high = self.resolved_high_freq();
        if !(self.low_freq >= 0.0 && self.low_freq < high && high <= nyquist) {
            return bad(format!(
                "need 0 <= low_freq < high_freq <= Nyquist ({nyquist} Hz); got low_freq = {}, high_freq = {} (resolved {high})",
                self.low_freq, self.high_freq
            ));
        }
        if !(self.log_floor >= f32::MIN_POSITIVE && self.log_floor.is_finite()) {
            return bad(format!(
                "log_floor = {} must be a positive normal number",
                self.log_floor
            ));
        }
        self.spec_augment.validate()
    }
}

/// Kaldi's mel scale.
fn mel(hz: f64) -> f64 {
    1127.0 * (1.0 + hz / 700.0).ln()
}

/// Triangular filters stored sparsely: filter `m` covers FFT bins
/// `first[m] .. first[m] + len[m]` with weights `weights[offset[m] ..]`.
#[derive(Debug, Clone)]
struct MelBanks {
    first: Vec<usize>,
    offset: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<f32>,
}

impl MelBanks {
    fn new(config: &FeatureConfig) -> Result<Self> {
        let padded = config.padded_length();
        let num_fft_bins = padded / 2;
        let bin_width = f64::from(config.sample_rate) / padded as f64;
        let mel_low = mel(f64::from(config.low_freq));
        let mel_high = mel(f64::from(config.resolved_high_freq()));
        let delta = (mel_high - mel_low) / (config.num_mel_bins + 1) as f64;
        let mut banks = MelBanks {
            first: Vec::new(),
            offset: Vec::new(),
            len: Vec::new(),
            weights: Vec::new(),
        };
        for m in 0..config.num_mel_bins {
            let left = mel_low + m as f64 * delta;
            let center = mel_low + (m + 1) as f64 * delta;
            let right = mel_low + (m + 2) as f64 * delta;
            let mut first = None;
            let offset = banks.weights.len();
            // The Nyquist bin is never inside a filter (Kaldi only looks at the first
            // padded/2 bins), matching torchaudio's zero column for it.
            for k in 0..num_fft_bins {
                let f = mel(bin_width * k as f64);
                let up = (f - left) / (center - left);
                let down = (right - f) / (right - center);
                let w = up.min(down).max(0.0);
                if w > 0.0 {
                    if first.is_none() {
                        first = Some(k);
                    }
                    let start = first.unwrap_or(k);
                    // Zero weights between non-zero ones cannot happen for a triangle,
                    // but fill any gap so indices stay contiguous.
                    while banks.weights.len() - offset < k - start {
                        banks.weights.push(0.0);
                    }
                    banks.weights.push(w as f32);
                }
            }
            let Some(first) = first else {
                return Err(Error::Config(format!(
                    "mel filter {m} of {} covers no FFT bin: too many mel bins ({}) for a {padded}-point FFT between {} and {} Hz",
                    config.num_mel_bins, config.num_mel_bins, config.low_freq, config.resolved_high_freq()
                )));
            };
            banks.first.push(first);
            banks.offset.push(offset);
            banks.len.push(banks.weights.len() - offset);
        }
        Ok(banks)
    }

    /// `out[m] = sum_k spectrum[k] * filter_m[k]`.
    #[inline(always)]
    fn apply(&self, spectrum: &[f32], out: &mut [f32]) {
        for (m, o) in out.iter_mut().enumerate() {
            let first = self.first[m];
            let len = self.len[m];
            let w = &self.weights[self.offset[m]..self.offset[m] + len];
            *o = dot(w, &spectrum[first..first + len]);
        }
    }
}

fn window_function(config: &FeatureConfig) -> Vec<f32> {
    let n = config.frame_length();
    let a = 2.0 * std::f64::consts::PI / (n - 1) as f64;
    (0..n)
        .map(|i| {
            let i = i as f64;
            let hann = 0.5 - 0.5 * (a * i).cos();
            let w = match config.window {
                WindowType::Povey => hann.powf(0.85),
                WindowType::Hanning => hann,
                WindowType::Hamming => 0.54 - 0.46 * (a * i).cos(),
                WindowType::Blackman => {
                    let c = f64::from(config.blackman_coeff);
                    c - 0.5 * (a * i).cos() + (0.5 - c) * (2.0 * a * i).cos()
                }
                WindowType::Rectangular => 1.0,
            };
            w as f32
        })
        .collect()
}

/// A planned filterbank extractor. Build once per thread, call [`Fbank::compute`] for
/// every utterance.
pub struct Fbank {
    config: FeatureConfig,
    frame_length: usize,
    frame_shift: usize,
    window: Vec<f32>,
    banks: MelBanks,
    fft: PowerSpectrum,
    /// A frame copied out of the signal, when it cannot be read in place.
    frame: Vec<f32>,
    /// The prepared frame, for FFT plans that do not take it densely.
    prepared: Vec<f32>,
    spectrum: Vec<f32>,
    rng: ChaCha8Rng,
    /// The CPU runs AVX2 and FMA: use the build of the frame loop compiled for them.
    #[cfg(target_arch = "x86_64")]
    avx2: bool,
}

impl std::fmt::Debug for Fbank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fbank")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Clone for Fbank {
    fn clone(&self) -> Self {
        Fbank {
            config: self.config.clone(),
            frame_length: self.frame_length,
            frame_shift: self.frame_shift,
            window: self.window.clone(),
            banks: self.banks.clone(),
            fft: self.fft.clone(),
            frame: self.frame.clone(),
            prepared: self.prepared.clone(),
            spectrum: self.spectrum.clone(),
            rng: self.rng.clone(),
            #[cfg(target_arch = "x86_64")]
            avx2: self.avx2,
        }
    }
}

impl Fbank {
    /// Validates `config`, plans the FFT, builds the window and the mel filters.
    pub fn new(config: &FeatureConfig) -> Result<Self> {
        config.validate()?;
        let fft = PowerSpectrum::new(config.padded_length());
        Ok(Fbank {
            config: config.clone(),
            frame_length: config.frame_length(),
            frame_shift: config.frame_shift(),
            window: window_function(config),
            banks: MelBanks::new(config)?,
            spectrum: vec![0.0; fft.bins()],
            frame: vec![0.0; config.frame_length()],
            prepared: vec![0.0; config.frame_length()],
            fft,
            rng: ChaCha8Rng::seed_from_u64(config.dither_seed),
            #[cfg(target_arch = "x86_64")]
            avx2: std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma"),
        })
    }

    /// The configuration this extractor was built from.
    pub fn config(&self) -> &FeatureConfig {
        &self.config
    }

    /// Feature width (`num_mel_bins`).
    pub fn dim(&self) -> usize {
        self.config.num_mel_bins
    }

    /// Features of `samples` (mono, at the configured rate, 16-bit integer scale):
    /// `[num_frames, num_mel_bins]`, time-major. Fails with [`Error::TooShort`] when
    /// not even one frame fits.
    pub fn compute(&mut self, samples: &[f32]) -> Result<Array2<f32>> {
        let frames = self.config.num_frames(samples.len());
        if frames == 0 {
            return Err(Error::TooShort {
                samples: samples.len(),
                frame: self.frame_length,
            });
        }
        let dim = self.dim();
        let mut out = Array2::zeros((frames, dim));
        let slice = out
            .as_slice_mut()
            .expect("a freshly made Array2 is contiguous");
        self.compute_into(samples, slice)?;
        Ok(out)
    }

    /// Like [`Fbank::compute`], writing `[num_frames * num_mel_bins]` row-major into
    /// `out`, which must be exactly that long. Returns the number of frames.
    pub fn compute_into(&mut self, samples: &[f32], out: &mut [f32]) -> Result<usize> {
        let frames = self.config.num_frames(samples.len());
        if frames == 0 {
            return Err(Error::TooShort {
                samples: samples.len(),
                frame: self.frame_length,
            });
        }
        let dim = self.dim();
        if out.len() != frames * dim {
            return Err(Error::Config(format!(
                "output buffer holds {} values, features need [{frames} x {dim}] = {}",
                out.len(),
                frames * dim
            )));
        }
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: the CPU was checked for AVX2 and FMA when `self` was built.
            unsafe { self.frames_avx2(samples, out) };
            return Ok(frames);
        }
        self.frames(samples, out);
        Ok(frames)
    }

    /// [`Fbank::frames`] compiled for AVX2 and FMA. LLVM does not fuse separate
    /// multiplies and adds on its own, so results are bit-identical to the baseline build.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn frames_avx2(&mut self, samples: &[f32], out: &mut [f32]) {
        self.frames(samples, out)
    }

    /// The frame loop: `out` is `[num_frames * num_mel_bins]`, checked by the caller.
    #[inline(always)]
    fn frames(&mut self, samples: &[f32], out: &mut [f32]) {
        let dim = self.dim();
        for (t, row) in out.chunks_exact_mut(dim).enumerate() {
            let len = self.frame_length;
            // Frames that lie inside the signal are read in place; reflected or dithered
            // ones are assembled in `frame` first.
            let start = t * self.frame_shift;
            let copy = !self.config.snip_edges || self.config.dither > 0.0;
            if copy {
                self.load_frame(samples, t);
                if self.config.dither > 0.0 {
                    add_gaussian(&mut self.rng, &mut self.frame, self.config.dither);
                }
                let frame = std::mem::take(&mut self.frame);
                self.frame_to_mels(&frame, row);
                self.frame = frame;
            } else {
                self.frame_to_mels(&samples[start..start + len], row);
            }
        }
    }

    /// Copies frame `t` into `frame`, reflecting at the ends when not snipping.
    fn load_frame(&mut self, samples: &[f32], t: usize) {
        let len = self.frame_length;
        if self.config.snip_edges {
            let start = t * self.frame_shift;
            self.frame.copy_from_slice(&samples[start..start + len]);
        } else {
            let n = samples.len() as isize;
            let start = (t * self.frame_shift + self.frame_shift / 2) as isize - (len / 2) as isize;
            for (j, x) in self.frame.iter_mut().enumerate() {
                let mut s = start + j as isize;
                // Kaldi's reflection (x[-1] = x[0]); loop for signals shorter than the
                // reflection distance.
                while s < 0 || s >= n {
                    s = if s < 0 { -s - 1 } else { 2 * n - 1 - s };
                }
                *x = samples[s as usize];
            }
        }
    }

    /// Turns one raw frame `[frame_length]` into `[num_mel_bins]` features.
    #[inline(always)]
    fn frame_to_mels(&mut self, frame: &[f32], out: &mut [f32]) {
        let len = self.frame_length;
        let mean = if self.config.remove_dc_offset {
            sum(frame) / len as f32
        } else {
            0.0
        };
        let k = self.config.preemphasis;
        if self.fft.input_stride() == 1 {
            let input = self.fft.input();
            prepare(frame, &self.window, mean, k, &mut input[..len]);
            // The FFT works in place, so the padding is rewritten every frame.
            input[len..].fill(0.0);
        } else {
            prepare(frame, &self.window, mean, k, &mut self.prepared);
            let input = self.fft.input();
            input.fill(0.0);
            for (i, &v) in self.prepared.iter().enumerate() {
                input[2 * i] = v;
            }
        }
        self.fft.compute(&mut self.spectrum, self.config.use_power);
        self.banks.apply(&self.spectrum, out);
        if self.config.use_log {
            let floor = self.config.log_floor;
            for v in out.iter_mut() {
                // Not `max`: it would turn a NaN into the floor and hide it.
                *v = ln(if *v < floor { floor } else { *v });
            }
        }
    }
}

/// DC removal, pre-emphasis and window fused into one pass that reads the original
/// samples, so every lane is independent and the loop vectorises:
/// `y[i] = ((x[i] - mean) - k (x[i-1] - mean)) w[i]`, with `x[-1] = x[0]` (Kaldi).
#[inline(always)]
fn prepare(frame: &[f32], window: &[f32], mean: f32, k: f32, dst: &mut [f32]) {
    let len = frame.len();
    dst[0] = ((frame[0] - mean) - k * (frame[0] - mean)) * window[0];
    for (((y, &x), &prev), &w) in dst[1..]
        .iter_mut()
        .zip(&frame[1..])
        .zip(&frame[..len - 1])
        .zip(&window[1..])
    {
        *y = ((x - mean) - k * (prev - mean)) * w;
    }
}

/// Sum with eight independent accumulators: the plain left fold is one long
/// dependency chain that the compiler may not reorder, and so cannot vectorise.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Dot product with eight independent accumulators (see [`sum`]).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Natural log for the positive normal floats the filterbank produces (inputs are
/// floored at `log_floor` > 0 first). Cephes' `logf` polynomial: within 2 ulp of
/// `f32::ln` over the whole normal range, written without table look-ups or branches
/// so that the 80-wide loop over mel bins vectorises. NaN and infinity pass through.
#[inline(always)]
pub(crate) fn ln(x: f32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126;
    // Mantissa in [0.5, 1).
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    let small = m < SQRT_HALF;
    e -= small as i32;
    m = if small { m + m } else { m };
    let t = m - 1.0;
    let z = t * t;
    let mut y = 7.037_683_6e-2;
    y = y * t - 1.151_461_1e-1;
    y = y * t + 1.167_699_9e-1;
    y = y * t - 1.242_014_1e-1;
    y = y * t + 1.424_932_3e-1;
    y = y * t - 1.666_805_8e-1;
    y = y * t + 2.000_071_5e-1;
    y = y * t - 2.499_999_4e-1;
    y = y * t + 0.333_333_3;
    y *= t * z;
    let ef = e as f32;
    y += -2.121_944_4e-4 * ef;
    y += -0.5 * z;
    let r = t + y + 0.693_359_4 * ef;
    // NaN and infinity pass through (NaN < inf is false), so a corrupt input shows.
    if x < f32::INFINITY {
        r
    } else {
        x
    }
}

/// Adds `N(0, sigma^2)` noise (Box-Muller from uniform 32-bit draws).
fn add_gaussian(rng: &mut ChaCha8Rng, frame: &mut [f32], sigma: f32) {
    use rand::Rng;
    for x in frame.iter_mut() {
        let u1 = (rng.next_u32() as f64 + 1.0) / (u32::MAX as f64 + 2.0);
        let u2 = rng.next_u32() as f64 / (u32::MAX as f64 + 1.0);
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        *x += sigma * z as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_ln_is_within_a_few_ulp_of_the_exact_log() {
        let mut x = f32::MIN_POSITIVE;
        let mut worst = 0.0f64;
        while x < 1e38 {
            for y in [
                x,
                x * 1.000_001,
                x * 1.3,
                x * std::f32::consts::SQRT_2,
                x * 1.9,
            ] {
                let exact = f64::from(y).ln();
                let err = (f64::from(ln(y)) - exact).abs() / exact.abs().max(1.0);
                worst = worst.max(err);
            }
            x *= 1.37;
        }
        assert!(
            worst < 3.0 * f64::from(f32::EPSILON),
            "worst relative error {worst}"
        );
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln(f32::INFINITY), f32::INFINITY);
        assert!(ln(f32::NAN).is_nan());
    }

    #[test]
    fn accumulating_helpers_match_plain_loops() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.3).cos()).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-5);
        assert!((sum(&a) - a.iter().sum::<f32>()).abs() < 1e-5);
        assert_eq!(dot(&[], &[]), 0.0);
    }

    #[test]
    fn nan_samples_show_up_as_nan_features() {
        let mut fb = Fbank::new(&FeatureConfig::default()).unwrap();
        let mut x = vec![100.0f32; 800];
        x[500] = f32::NAN;
        let f = fb.compute(&x).unwrap();
        assert!(f.row(0).iter().all(|v| v.is_finite()));
        assert!(f.row(2).iter().all(|v| v.is_nan()));
    }

    #[test]
    fn silence_gives_the_log_floor_and_frame_counts_follow_kaldi() {
        let config = FeatureConfig::default();
        let mut fb = Fbank::new(&config).unwrap();
        let f = fb.compute(&vec![0.0; 16000]).unwrap();
        assert_eq!(f.nrows(), 98);
        assert!(f.iter().all(|&v| v == f32::EPSILON.ln()));
        assert_eq!(config.num_frames(399), 0);
        assert_eq!(config.num_frames(400), 1);
        assert_eq!(config.num_frames(559), 1);
        assert_eq!(config.num_frames(560), 2);
        let no_snip = FeatureConfig {
            snip_edges: false,
            ..config.clone()
        };
        assert_eq!(no_snip.num_frames(79), 0);
        assert_eq!(no_snip.num_frames(80), 1);
        assert_eq!(no_snip.num_frames(16000), 100);
        assert!(matches!(
            fb.compute(&[1.0; 399]),
            Err(Error::TooShort {
                samples: 399,
                frame: 400
            })
        ));
        // Even one sample gives a (reflected) frame when edges are not snipped.
        let mut fb = Fbank::new(&FeatureConfig {
            snip_edges: false,
            ..config
        })
        .unwrap();
        assert_eq!(fb.compute(&[5.0; 80]).unwrap().nrows(), 1);
    }

    #[test]
    fn invalid_configs_are_refused_with_the_field_named() {
        let bad = [
            FeatureConfig {
                num_mel_bins: 0,
                ..Default::default()
            },
            FeatureConfig {
                low_freq: 9000.0,
                ..Default::default()
            },
            FeatureConfig {
                high_freq: 9000.0,
                ..Default::default()
            },
            FeatureConfig {
                frame_shift_ms: 0.0,
                ..Default::default()
            },
            FeatureConfig {
                frame_length_ms: f32::NAN,
                ..Default::default()
            },
            FeatureConfig {
                preemphasis: 1.5,
                ..Default::default()
            },
            FeatureConfig {
                log_floor: 0.0,
                ..Default::default()
            },
            FeatureConfig {
                dither: -1.0,
                ..Default::default()
            },
            FeatureConfig {
                sample_rate: 0,
                ..Default::default()
            },
        ];
        for c in bad {
            let err = Fbank::new(&c).unwrap_err().to_string();
            assert!(err.starts_with("invalid configuration"), "{err}");
        }
        // 200 mel bins cannot all get an FFT bin from a 512-point FFT.
        let err = Fbank::new(&FeatureConfig {
            num_mel_bins: 200,
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("covers no FFT bin"), "{err}");
    }

    #[test]
    fn dither_is_seeded_and_changes_the_output() {
        // Broadband noise of ~580 LSB rms, so no filter is near-empty.
        let x: Vec<f32> = (0..4000u64)
            .map(|i| ((i * 2_654_435_761) % 2000) as f32 - 1000.0)
            .collect();
        let c = FeatureConfig {
            dither: 1.0,
            dither_seed: 7,
            ..Default::default()
        };
        let a = Fbank::new(&c).unwrap().compute(&x).unwrap();
        let b = Fbank::new(&c).unwrap().compute(&x).unwrap();
        let plain = Fbank::new(&FeatureConfig::default())
            .unwrap()
            .compute(&x)
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, plain);
        // Noise of 1 LSB on 580 LSB rms moves features a little on average.
        let diff = (&a - &plain).mapv(f32::abs).mean().unwrap();
        assert!(
            diff > 1e-6 && diff < 1e-2,
            "dither moved features by {diff} on average"
        );
    }

    #[test]
    fn config_round_trips_through_json_and_rejects_unknown_fields() {
        let c = FeatureConfig {
            num_mel_bins: 40,
            window: WindowType::Hamming,
            ..Default::default()
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"window\":\"hamming\""));
        assert_eq!(serde_json::from_str::<FeatureConfig>(&json).unwrap(), c);
        assert!(serde_json::from_str::<FeatureConfig>(r#"{"num_mel_bin": 40}"#).is_err());
        assert_eq!(
            serde_json::from_str::<FeatureConfig>("{}").unwrap(),
            FeatureConfig::default()
        );
    }
}
