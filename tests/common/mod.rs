//! Helpers shared by the CLI test files.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `lasr` binary built for these tests.
pub fn lasr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lasr"))
        .args(args)
        .output()
        .expect("the lasr binary runs")
}

/// The JSON object a successful run printed (its stderr shown if it failed).
pub fn json_stdout(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_str(text(&out.stdout).trim()).unwrap()
}

/// The stderr of a run that must have failed (its stdout shown if it succeeded).
pub fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "{}", text(&out.stdout));
    text(&out.stderr)
}

/// Bytes of an output stream as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes `samples` of a 16 kHz tone on `f0` with two overtones, at 16-bit scale.
pub fn write_tone(path: &Path, f0: f64, samples: usize) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..samples {
        let t = i as f64 / 16000.0;
        let v: f64 = (1..4)
            .map(|h| 4000.0 / h as f64 * (2.0 * std::f64::consts::PI * f0 * h as f64 * t).sin())
            .sum();
        w.write_sample(v as i16).unwrap();
    }
    w.finalize().unwrap();
}
