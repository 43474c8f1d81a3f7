//! Power spectra of real frames through a half-length complex FFT.
//!
//! A real frame `x[0..n]` (`n` even) is packed as `z[m] = x[2m] + i x[2m+1]`, transformed
//! with an `n/2`-point complex FFT, and unpacked with one twiddle per bin into the
//! `n/2 + 1` non-negative-frequency bins. The unpacking is written here rather than
//! taken from `realfft` because it is fused with `|X|^2` and laid out so that it
//! vectorises; in `realfft` it took as long as the FFT itself. Odd lengths, which only
//! odd frame lengths with `round_to_power_of_two = false` produce, use a full-length
//! complex FFT of the frame.

use std::sync::Arc;

use num_complex::Complex;
use rustfft::{Fft, FftPlanner};

/// Planned power spectrum of `n`-sample real frames.
pub(crate) struct PowerSpectrum {
    n: usize,
    fft: Arc<dyn Fft<f32>>,
    /// Packed frame, transformed in place: `[n/2]` complex (or `[n]` for odd `n`).
    buf: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    /// `cos(2 pi k / n)` and `-sin(2 pi k / n)` for `k` in `0..n/2`.
    tw_re: Vec<f32>,
    tw_im: Vec<f32>,
}

impl Clone for PowerSpectrum {
    fn clone(&self) -> Self {
        PowerSpectrum {
            n: self.n,
            fft: Arc::clone(&self.fft),
            buf: self.buf.clone(),
            scratch: self.scratch.clone(),
            tw_re: self.tw_re.clone(),
            tw_im: self.tw_im.clone(),
        }
    }
}

impl PowerSpectrum {
    /// Plans for `n`-point frames (`n >= 2`).
    pub(crate) fn new(n: usize) -> Self {
        let even = n.is_multiple_of(2);
        let len = if even { n / 2 } else { n };
        let fft = FftPlanner::<f32>::new().plan_fft_forward(len);
        let scratch = vec![Complex::default(); fft.get_inplace_scratch_len()];
        let (tw_re, tw_im) = (0..n / 2)
            .map(|k| {
                let a = 2.0 * std::f64::consts::PI * k as f64 / n as f64;
                (a.cos() as f32, -a.sin() as f32)
            })
            .unzip();
        PowerSpectrum {
            n,
            fft,
            buf: vec![Complex::default(); len],
            scratch,
            tw_re,
            tw_im,
        }
    }

    /// Number of output bins, `n/2 + 1`.
    pub(crate) fn bins(&self) -> usize {
        self.n / 2 + 1
    }

    /// The frame buffer to fill: `[n]` reals, zero-padded by the caller. For odd `n`
    /// only the real parts (every other value) are the frame; see [`Self::input_stride`].
    pub(crate) fn input(&mut self) -> &mut [f32] {
        bytemuck::cast_slice_mut(&mut self.buf)
    }

    /// 1 when the frame fills `input()` densely, 2 when it goes in the real parts only.
    pub(crate) fn input_stride(&self) -> usize {
        if self.n.is_multiple_of(2) {
            1
        } else {
            2
        }
    }

    /// Transforms the frame in `input()` and writes `|X[k]|^2` (or `|X[k]|` when
    /// `power` is false) for `k` in `0..=n/2` into `out` `[n/2 + 1]`.
    #[inline(always)]
    pub(crate) fn compute(&mut self, out: &mut [f32], power: bool) {
        self.fft
            .process_with_scratch(&mut self.buf, &mut self.scratch);
        let half = self.n / 2;
        if self.n % 2 == 1 {
            for (o, c) in out.iter_mut().zip(&self.buf[..=half]) {
                *o = c.re * c.re + c.im * c.im;
            }
        } else {
            let z = &self.buf;
            // Bin 0 and bin n/2 come from z[0] alone (sum of evens +/- sum of odds).
            out[0] = (z[0].re + z[0].im) * (z[0].re + z[0].im);
            out[half] = (z[0].re - z[0].im) * (z[0].re - z[0].im);
            // 2E = Z[k] + conj(Z[M-k]), 2O = (Z[k] - conj(Z[M-k])) / i, X = E + W^k O.
            for ((((o, zk), zj), &wr), &wi) in out[1..half]
                .iter_mut()
                .zip(&z[1..half])
                .zip(z[1..half].iter().rev())
                .zip(&self.tw_re[1..half])
                .zip(&self.tw_im[1..half])
            {
                let er = zk.re + zj.re;
                let ei = zk.im - zj.im;
                let or = zk.im + zj.im;
                let oi = zj.re - zk.re;
                let xr = er + wr * or - wi * oi;
                let xi = ei + wr * oi + wi * or;
                *o = 0.25 * (xr * xr + xi * xi);
            }
        }
        if !power {
            for o in out.iter_mut() {
                *o = o.sqrt();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct O(n^2) DFT power in f64.
    fn dft_power(x: &[f32]) -> Vec<f64> {
        let n = x.len();
        (0..=n / 2)
            .map(|k| {
                let (mut re, mut im) = (0.0f64, 0.0f64);
                for (t, &v) in x.iter().enumerate() {
                    let a = -2.0 * std::f64::consts::PI * (k * t) as f64 / n as f64;
                    re += f64::from(v) * a.cos();
                    im += f64::from(v) * a.sin();
                }
                re * re + im * im
            })
            .collect()
    }

    #[test]
    fn matches_a_direct_dft_for_even_and_odd_lengths() {
        for n in [2usize, 8, 400, 512, 401, 7] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 + 13) % 101) as f32 - 50.0 + (i as f32 * 0.3).sin() * 20.0)
                .collect();
            let mut ps = PowerSpectrum::new(n);
            let stride = ps.input_stride();
            let input = ps.input();
            input.fill(0.0);
            for (i, &v) in x.iter().enumerate() {
                input[i * stride] = v;
            }
            let mut out = vec![0f32; ps.bins()];
            ps.compute(&mut out, true);
            let want = dft_power(&x);
            let peak = want.iter().cloned().fold(0.0, f64::max);
            for (k, (&got, &w)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(got) - w).abs() <= 1e-5 * peak,
                    "n={n} k={k}: {got} vs {w}"
                );
            }
            // Magnitude mode is the square root.
            let input = ps.input();
            input.fill(0.0);
            for (i, &v) in x.iter().enumerate() {
                input[i * stride] = v;
            }
            let mut mag = vec![0f32; ps.bins()];
            ps.compute(&mut mag, false);
            for (m, p) in mag.iter().zip(&out) {
                assert!((m * m - p).abs() <= 1e-4 * p.max(1.0), "{m} {p}");
            }
        }
    }
}
