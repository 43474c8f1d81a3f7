//! Audio fixtures for the data tests: synthesised, written with hound.

#![allow(dead_code)]

use std::path::Path;

/// Writes 16-bit mono `samples` (16-bit scale) at `rate`.
pub fn write_wav(path: &Path, samples: &[f32], rate: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &v in samples {
        w.write_sample(v.round().clamp(-32768.0, 32767.0) as i16)
            .unwrap();
    }
    w.finalize().unwrap();
}

/// `seconds` of a sine at `freq` Hz and amplitude 8000, sampled at `rate`.
pub fn tone(freq: f64, seconds: f64, rate: u32) -> Vec<f32> {
    (0..(seconds * f64::from(rate)).round() as usize)
        .map(|i| {
            (8000.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin()) as f32
        })
        .collect()
}

/// A tone whose frequency depends on `seed`, `seconds` long at 16 kHz, written to
/// `path`.
pub fn write_tone(path: &Path, seed: u32, seconds: f64) {
    write_wav(
        path,
        &tone(200.0 + 150.0 * f64::from(seed), seconds, 16000),
        16000,
    );
}
