//! Speed perturbation (Ko et al., "Audio augmentation for speech recognition", 2015):
//! the waveform played `factor` times faster, pitch and tempo together, as sox's
//! `speed` effect in Kaldi's `perturb_data_dir_speed.sh` does.
//!
//! Audio at `rate` Hz is taken to be at `rate * factor` Hz and resampled back to `rate`
//! with [`lasr_features::Resampler`] (band-limited, so speeding up does not alias), so
//! `n` samples become `ceil(n / factor)` and a 440 Hz tone becomes `440 * factor` Hz.
//! The pretended rate is rounded to whole Hz, so the factor applied is
//! `round(rate * factor) / rate` (exact for up to three decimals at 16 kHz).

use lasr_features::{Audio, Resampler};

use crate::error::{Error, Result};

/// Smallest and largest factors accepted; Kaldi uses 0.9 and 1.1.
pub const SPEED_RANGE: (f32, f32) = (0.5, 2.0);

/// A speed change at one sample rate, its filter designed once.
#[derive(Debug, Clone)]
pub struct SpeedPerturb {
    factor: f32,
    resampler: Resampler,
}

impl SpeedPerturb {
    /// The change by `factor` (in [`SPEED_RANGE`]) of audio at `rate` Hz.
    pub fn new(factor: f32, rate: u32) -> Result<Self> {
        if !(factor.is_finite() && (SPEED_RANGE.0..=SPEED_RANGE.1).contains(&factor)) {
            return Err(Error::Config(format!(
                "speed perturbation factor {factor} is outside {}..={}",
                SPEED_RANGE.0, SPEED_RANGE.1
            )));
        }
        let pretend = (f64::from(rate) * f64::from(factor)).round() as u32;
        let resampler = Resampler::new(pretend, rate).map_err(|e| {
            Error::Config(format!(
                "speed perturbation factor {factor} at {rate} Hz: {e} (use fewer decimals)"
            ))
        })?;
        Ok(SpeedPerturb { factor, resampler })
    }

    /// The factor asked for.
    pub fn factor(&self) -> f32 {
        self.factor
    }

    /// The sample rate it works at.
    pub fn rate(&self) -> u32 {
        self.resampler.to_rate()
    }

    /// `samples` `[n]` at [`SpeedPerturb::rate`], played `factor` times faster:
    /// `[ceil(n / factor)]` at the same rate.
    pub fn apply(&self, samples: &[f32]) -> Vec<f32> {
        self.resampler.process(samples)
    }
}

/// `audio` played `factor` times faster (pitch changes too), at its own rate.
pub fn speed_perturb(audio: &Audio, factor: f32) -> Result<Audio> {
    let sp = SpeedPerturb::new(factor, audio.sample_rate)?;
    Ok(Audio {
        samples: sp.apply(&audio.samples),
        sample_rate: audio.sample_rate,
    })
}

/// The id of `id`'s copy at speed `factor`, Kaldi's way: `sp0.9-ID`.
pub fn perturbed_id(id: &str, factor: f32) -> String {
    format!("sp{factor}-{id}")
}
