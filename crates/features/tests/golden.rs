//! Filterbanks against torchaudio.compliance.kaldi.fbank. The WAVs, expected features
//! and configs in tests/golden/ were made by tests/golden/make_golden.py; this test
//! needs no Python.

use std::path::PathBuf;

use lasr_features::{load, Fbank, FeatureConfig};
use ndarray::Array2;
use ndarray_npy::read_npy;

/// torchaudio and kaldi-native-fbank themselves differ by up to 1e-3.
const TOLERANCE: f32 = 2e-3;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn fbank_matches_torchaudio_kaldi_on_every_element() {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("cases.json")).unwrap())
            .unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    assert!(cases.len() >= 3);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let config: FeatureConfig = serde_json::from_value(case["config"].clone()).unwrap();
        let audio = load(golden_dir().join(format!("{name}.wav"))).unwrap();
        assert_eq!(audio.sample_rate, 16000);
        assert_eq!(
            audio.samples.len() as u64,
            case["samples"].as_u64().unwrap()
        );
        let expected: Array2<f32> = read_npy(golden_dir().join(format!("{name}.npy"))).unwrap();
        let mut fbank = Fbank::new(&config).unwrap();
        assert_eq!(
            config.num_frames(audio.samples.len()),
            expected.nrows(),
            "{name}: frame count"
        );
        let got = fbank.compute(&audio.samples).unwrap();
        assert_eq!(got.dim(), expected.dim(), "{name}: shape");
        let mut worst = (0.0f32, 0, 0);
        for ((t, m), &e) in expected.indexed_iter() {
            let d = (got[(t, m)] - e).abs();
            if d > worst.0 || d.is_nan() {
                worst = (d, t, m);
            }
        }
        eprintln!(
            "{name}: {:?}, max |diff| {:.2e} at frame {} bin {}",
            got.dim(),
            worst.0,
            worst.1,
            worst.2
        );
        assert!(
            worst.0 <= TOLERANCE,
            "{name}: frame {} bin {}: lasr {} vs torchaudio {} (|diff| {:.2e})",
            worst.1,
            worst.2,
            got[(worst.1, worst.2)],
            expected[(worst.1, worst.2)],
            worst.0
        );
        // Reusing the planned extractor must give the same features again.
        assert_eq!(
            fbank.compute(&audio.samples).unwrap(),
            got,
            "{name}: second call differs"
        );
    }
}
