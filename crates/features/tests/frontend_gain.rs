//! Per-utterance mean normalisation makes features blind to a recording's gain.

use lasr_features::{Audio, FrontEnd, FrontEndConfig};

fn tone(gain: f32) -> Audio {
    let rate = 16_000;
    let samples = (0..rate)
        .map(|i| {
            let t = i as f32 / rate as f32;
            // Two tones and a little deterministic noise, so every mel bin has energy.
            let noise = ((i as f32 * 12.9898).sin() * 43_758.547).fract() - 0.5;
            10_000.0
                * gain
                * (0.3 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                    + 0.2 * (2.0 * std::f32::consts::PI * 2_500.0 * t).sin()
                    + 0.05 * noise)
        })
        .collect();
    Audio {
        samples,
        sample_rate: rate,
    }
}

#[test]
fn utterance_mean_removes_a_gain_change() {
    let features = |utterance_mean: bool, gain: f32| {
        let mut front = FrontEnd::new(FrontEndConfig {
            utterance_mean,
            ..FrontEndConfig::default()
        })
        .unwrap();
        front.audio_features(tone(gain)).unwrap()
    };
    let max_diff = |a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    // Half the amplitude: every log-mel value drops by ln 4 = 1.39.
    let (loud, quiet) = (features(false, 1.0), features(false, 0.5));
    assert!(max_diff(&loud, &quiet) > 1.3);
    let (loud, quiet) = (features(true, 1.0), features(true, 0.5));
    assert!(
        max_diff(&loud, &quiet) < 1e-3,
        "{}",
        max_diff(&loud, &quiet)
    );
    for col in loud.columns() {
        assert!(col.mean().unwrap().abs() < 1e-4);
    }
}
