//! Kaldi-compatible log-mel filterbank features (`compute-fbank-feats`, as exposed by
//! `torchaudio.compliance.kaldi.fbank`).
//!
//! Per frame: optional dither, DC removal, pre-emphasis, window, zero padding to the FFT
//! size, power spectrum, triangular mel filters on Kaldi's mel scale
//! (`1127 ln(1 + f/700)`), log with a floor at `f32::EPSILON`.
//!
//! [`Fbank`] plans the FFT and builds the window and filters once; computing a frame
//! allocates nothing.

use std::sync::Arc;

use ndarray::Array2;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::specaug::SpecAugmentConfig;

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
        if !(self.frame_length_ms > 0.0) || self.frame_length() < 2 {
            return bad(format!(
                "frame_length_ms = {} gives fewer than 2 samples per frame",
                self.frame_length_ms
            ));
        }
        if !(self.frame_shift_ms > 0.0) || self.frame_shift() == 0 {
            return bad(format!(
                "frame_shift_ms = {} gives a shift of 0 samples",
                self.frame_shift_ms
            ));
        }
        if self.frame_length() > 1 << 20 {
            return bad(format!("frame_length_ms = {} is absurdly long", self.frame_length_ms));
        }
        if !(self.dither >= 0.0 && self.dither.is_finite()) {
            return bad(format!("dither = {} must be a finite value >= 0", self.dither));
        }
        if !(0.0..=1.0).contains(&self.preemphasis) {
            return bad(format!("preemphasis = {} must lie in [0, 1]", self.preemphasis));
        }
        if self.num_mel_bins < 1 || self.num_mel_bins > 1024 {
            return bad(format!("num_mel_bins = {} must lie in 1..=1024", self.num_mel_bins));
        }
        let nyquist = 0.5 * self.sample_rate as f32;
        let high = self.resolved_high_freq();
        if !(self.low_freq >= 0.0 && self.low_freq < high && high <= nyquist) {
            return bad(format!(
                "need 0 <= low_freq < high_freq <= Nyquist ({nyquist} Hz); got low_freq = {}, high_freq = {} (resolved {high})",
                self.low_freq, self.high_freq
            ));
        }
        if !(self.log_floor > 0.0 && self.log_floor.is_finite()) {
            return bad(format!("log_floor = {} must be positive", self.log_floor));
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
    #[inline]
    fn apply(&self, spectrum: &[f32], out: &mut [f32]) {
        for (m, o) in out.iter_mut().enumerate() {
            let first = self.first[m];
            let len = self.len[m];
            let w = &self.weights[self.offset[m]..self.offset[m] + len];
            let s = &spectrum[first..first + len];
            *o = w.iter().zip(s).map(|(a, b)| a * b).sum();
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
    fft: Arc<dyn RealToComplex<f32>>,
    fft_in: Vec<f32>,
    fft_out: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    spectrum: Vec<f32>,
    rng: ChaCha8Rng,
}

impl std::fmt::Debug for Fbank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fbank").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Clone for Fbank {
    fn clone(&self) -> Self {
        // Plans are shared behind an Arc; scratch buffers must not be.
        Fbank {
            config: self.config.clone(),
            frame_length: self.frame_length,
            frame_shift: self.frame_shift,
            window: self.window.clone(),
            banks: self.banks.clone(),
            fft: Arc::clone(&self.fft),
            fft_in: self.fft_in.clone(),
            fft_out: self.fft_out.clone(),
            scratch: self.scratch.clone(),
            spectrum: self.spectrum.clone(),
            rng: self.rng.clone(),
        }
    }
}

impl Fbank {
    /// Validates `config`, plans the FFT, builds the window and the mel filters.
    pub fn new(config: &FeatureConfig) -> Result<Self> {
        config.validate()?;
        let padded = config.padded_length();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(padded);
        let fft_in = fft.make_input_vec();
        let fft_out = fft.make_output_vec();
        let scratch = fft.make_scratch_vec();
        Ok(Fbank {
            config: config.clone(),
            frame_length: config.frame_length(),
            frame_shift: config.frame_shift(),
            window: window_function(config),
            banks: MelBanks::new(config)?,
            spectrum: vec![0.0; fft_out.len()],
            fft,
            fft_in,
            fft_out,
            scratch,
            rng: ChaCha8Rng::seed_from_u64(config.dither_seed),
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
        for (t, row) in out.chunks_exact_mut(dim).enumerate() {
            self.load_frame(samples, t);
            self.frame_to_mels(row);
        }
        Ok(frames)
    }

    /// Copies frame `t` into the FFT input, reflecting at the ends when not snipping.
    fn load_frame(&mut self, samples: &[f32], t: usize) {
        let len = self.frame_length;
        let frame = &mut self.fft_in[..len];
        if self.config.snip_edges {
            let start = t * self.frame_shift;
            frame.copy_from_slice(&samples[start..start + len]);
        } else {
            let n = samples.len() as isize;
            let start = (t * self.frame_shift + self.frame_shift / 2) as isize - (len / 2) as isize;
            for (j, x) in frame.iter_mut().enumerate() {
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

    /// Turns the raw frame in `fft_in[..frame_length]` into `num_mel_bins` features.
    fn frame_to_mels(&mut self, out: &mut [f32]) {
        let len = self.frame_length;
        let frame = &mut self.fft_in[..len];
        if self.config.dither > 0.0 {
            add_gaussian(&mut self.rng, frame, self.config.dither);
        }
        if self.config.remove_dc_offset {
            let mean = frame.iter().sum::<f32>() / len as f32;
            frame.iter_mut().for_each(|x| *x -= mean);
        }
        let k = self.config.preemphasis;
        if k != 0.0 {
            for i in (1..len).rev() {
                frame[i] -= k * frame[i - 1];
            }
            frame[0] -= k * frame[0];
        }
        for (x, w) in frame.iter_mut().zip(&self.window) {
            *x *= w;
        }
        // realfft uses its input as scratch, so the padding is rewritten every frame.
        self.fft_in[len..].fill(0.0);
        self.fft
            .process_with_scratch(&mut self.fft_in, &mut self.fft_out, &mut self.scratch)
            .expect("buffers were made by the plan");
        if self.config.use_power {
            for (p, c) in self.spectrum.iter_mut().zip(&self.fft_out) {
                *p = c.re * c.re + c.im * c.im;
            }
        } else {
            for (p, c) in self.spectrum.iter_mut().zip(&self.fft_out) {
                *p = (c.re * c.re + c.im * c.im).sqrt();
            }
        }
        self.banks.apply(&self.spectrum, out);
        if self.config.use_log {
            let floor = self.config.log_floor;
            out.iter_mut().for_each(|v| *v = v.max(floor).ln());
        }
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
