//! Band-limited sample-rate conversion by a rational factor.
//!
//! A polyphase windowed-sinc FIR (Kaiser window, beta 8.6, about 85 dB stop band).
//! The filter is centred on every output instant, so the output has no delay: output
//! sample `n` sits at input time `n * from / to`, and the output length is
//! `ceil(len * to / from)`. That exactness is why this is not a streaming resampler from
//! a crate: whole utterances are converted at once and alignments must not shift.
//!
//! Input beyond either end is taken as zero, which is what a recording's silence
//! before and after would give.

use crate::error::{Error, Result};
use crate::fbank::dot;

/// Fraction of the lower Nyquist frequency that passes untouched. The transition band
/// runs from here to the Nyquist frequency of the slower rate, so nothing aliases.
const ROLLOFF: f64 = 0.92;
/// Filter half-length in zero crossings of the cutoff sinc.
const ZERO_CROSSINGS: f64 = 32.0;
const KAISER_BETA: f64 = 8.6;
/// Rates whose reduced ratio needs more phases than this are refused: no audio rate
/// in use gets anywhere near (44.1 kHz -> 16 kHz needs 160).
const MAX_PHASES: usize = 4096;
/// Largest filter (phases x taps) we agree to build: 4 M coefficients, 16 MB. Ordinary
/// ratios need a few tens of thousands; absurd ones (from a corrupt header) would
/// otherwise ask for gigabytes.
const MAX_COEFFICIENTS: usize = 1 << 22;

/// Converts whole signals from one sample rate to another. Build once, reuse.
#[derive(Debug, Clone)]
pub struct Resampler {
    from: u32,
    to: u32,
    /// Reduced ratio: every `up` output samples advance `down` input samples.
    up: usize,
    down: usize,
    /// Taps per phase.
    taps: usize,
    /// `phases[p * taps + j]` weights input `base - half + 1 + j` for outputs whose
    /// position has fractional part `p / up` (`half = taps / 2`).
    phases: Vec<f32>,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Modified Bessel function of the first kind, order 0 (power series).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let q = x * x / 4.0;
    for k in 1..200 {
        term *= q / (k * k) as f64;
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

impl Resampler {
    /// A converter from `from` Hz to `to` Hz.
    pub fn new(from: u32, to: u32) -> Result<Self> {
        let fail = |reason: String| Err(Error::Resample { from, to, reason });
        if from == 0 || to == 0 {
            return fail("rates must be positive".into());
        }
        let g = gcd(u64::from(from), u64::from(to));
        let up = (u64::from(to) / g) as usize;
        let down = (u64::from(from) / g) as usize;
        if up > MAX_PHASES {
            return fail(format!(
                "the ratio {up}/{down} needs too many filter phases"
            ));
        }
        // Cutoff in cycles per input sample, relative to the input Nyquist.
        let cutoff = ROLLOFF * (f64::from(to) / f64::from(from)).min(1.0);
        let half_width = ZERO_CROSSINGS / cutoff; // in input samples
        let half = half_width.ceil() as usize;
        let taps = 2 * half;
        if taps.saturating_mul(up) > MAX_COEFFICIENTS {
            return fail(format!(
                "the ratio {up}/{down} needs a {up} x {taps} filter, over the {MAX_COEFFICIENTS}-coefficient limit"
            ));
        }
        let mut phases = vec![0f32; up * taps];
        let norm = bessel_i0(KAISER_BETA);
        for p in 0..up {
            let frac = p as f64 / up as f64;
            let row = &mut phases[p * taps..(p + 1) * taps];
            let mut sum = 0.0;
            let mut taps64 = vec![0f64; taps];
            for (j, w) in taps64.iter_mut().enumerate() {
                // Distance from the output instant to input sample (base - half + 1 + j).
                let t = (j as f64 - half as f64 + 1.0) - frac;
                if t.abs() >= half_width {
                    continue;
                }
                let x = std::f64::consts::PI * cutoff * t;
                let sinc = if x == 0.0 { 1.0 } else { x.sin() / x };
                let r = t / half_width;
                let window = bessel_i0(KAISER_BETA * (1.0 - r * r).max(0.0).sqrt()) / norm;
                *w = cutoff * sinc * window;
                sum += *w;
            }
            // Normalise each phase to unit DC gain, so a constant stays constant
            // whatever the fractional position.
            for (dst, w) in row.iter_mut().zip(&taps64) {
                *dst = (w / sum) as f32;
            }
        }
        Ok(Resampler {
            from,
            to,
            up,
            down,
            taps,
            phases,
        })
    }

    /// Input rate in Hz.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// Output rate in Hz.
    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Number of output samples for `len` input samples: `ceil(len * to / from)`.
    pub fn output_len(&self, len: usize) -> usize {
        (len as u64 * self.up as u64).div_ceil(self.down as u64) as usize
    }

    /// Resamples a whole signal `[len]` into `[output_len(len)]`.
    pub fn process(&self, input: &[f32]) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { self.process_avx2(input) };
        }
        self.process_impl(input)
    }

    /// [`Resampler::process`] compiled for AVX2 and FMA (bit-identical results: LLVM
    /// does not fuse multiplies and adds unasked).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn process_avx2(&self, input: &[f32]) -> Vec<f32> {
        self.process_impl(input)
    }

    #[inline(always)]
    fn process_impl(&self, input: &[f32]) -> Vec<f32> {
        let n_out = self.output_len(input.len());
        let mut out = Vec::with_capacity(n_out);
        let half = self.taps / 2;
        for n in 0..n_out {
            let pos = n as u64 * self.down as u64;
            let base = (pos / self.up as u64) as usize;
            let phase = (pos % self.up as u64) as usize;
            let row = &self.phases[phase * self.taps..(phase + 1) * self.taps];
            // Input index of row[0] is base + 1 - half; clip both ends to the signal.
            let first = (base + 1) as isize - half as isize;
            let j0 = (-first).max(0) as usize;
            let j1 = ((input.len() as isize - first).max(0) as usize).min(self.taps);
            let acc = if j0 < j1 {
                let start = (first + j0 as isize) as usize;
                dot(&input[start..start + (j1 - j0)], &row[j0..j1])
            } else {
                0.0
            };
            out.push(acc);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: u32, len: usize, amp: f64) -> Vec<f32> {
        (0..len)
            .map(|i| {
                (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin())
                    as f32
            })
            .collect()
    }

    /// Peak error against the ideal tone away from the edges, relative to amplitude.
    fn tone_error(out: &[f32], freq: f64, rate: u32, amp: f64, margin: usize) -> f64 {
        out.iter()
            .enumerate()
            .skip(margin)
            .take(out.len() - 2 * margin)
            .map(|(i, &y)| {
                let ideal =
                    amp * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin();
                (f64::from(y) - ideal).abs() / amp
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn passband_tones_survive_every_common_rate() {
        for from in [8000u32, 11025, 22050, 32000, 44100, 48000] {
            let r = Resampler::new(from, 16000).unwrap();
            for freq in [440.0, 1000.0, 3000.0] {
                let x = tone(freq, from, from as usize, 10000.0);
                let y = r.process(&x);
                assert_eq!(y.len(), 16000);
                let err = tone_error(&y, freq, 16000, 10000.0, 400);
                assert!(
                    err < 2e-3,
                    "{from} Hz -> 16 kHz, {freq} Hz tone: error {err}"
                );
            }
        }
    }

    #[test]
    fn tones_above_the_new_nyquist_are_removed() {
        for from in [22050u32, 44100, 48000] {
            let r = Resampler::new(from, 16000).unwrap();
            // Only tones the input can represent: 15 kHz at 22.05 kHz is already 7.05 kHz.
            for freq in [8500.0, 10000.0, 15000.0]
                .into_iter()
                .filter(|f| *f < f64::from(from) / 2.0)
            {
                let x = tone(freq, from, from as usize, 10000.0);
                let y = r.process(&x);
                let rms = (y[400..y.len() - 400]
                    .iter()
                    .map(|v| f64::from(*v).powi(2))
                    .sum::<f64>()
                    / (y.len() - 800) as f64)
                    .sqrt();
                // Input RMS is 7071; demand at least 70 dB of rejection.
                assert!(
                    rms < 7071.0 * 10f64.powf(-70.0 / 20.0),
                    "{from} Hz, {freq} Hz tone leaks rms {rms}"
                );
            }
        }
    }

    #[test]
    fn dc_is_preserved_and_identity_ratio_is_exact_length() {
        let r = Resampler::new(8000, 16000).unwrap();
        let y = r.process(&vec![100.0; 4000]);
        assert_eq!(y.len(), 8000);
        for v in &y[200..7800] {
            assert!((v - 100.0).abs() < 1e-3, "{v}");
        }
        assert_eq!(
            Resampler::new(44100, 16000).unwrap().output_len(44101),
            16001
        );
        assert!(Resampler::new(0, 16000).is_err());
        assert!(Resampler::new(16000, 0).is_err());
        assert!(Resampler::new(1_000_003, 16000).is_err());
    }

    #[test]
    fn impulse_stays_centred() {
        // A click at input sample 800 of 8 kHz audio must peak at output sample 1600.
        let r = Resampler::new(8000, 16000).unwrap();
        let mut x = vec![0f32; 1600];
        x[800] = 1000.0;
        let y = r.process(&x);
        let peak = y
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.partial_cmp(b.1).unwrap())
            .unwrap()
            .0;
        assert_eq!(peak, 1600);
        // The pass band stops short of the input Nyquist, so the peak is the cutoff
        // fraction of the click, not all of it.
        assert!(
            (y[1600] - 1000.0 * ROLLOFF as f32).abs() < 10.0,
            "{}",
            y[1600]
        );
    }
}
