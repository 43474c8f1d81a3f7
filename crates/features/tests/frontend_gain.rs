//! Per-utterance mean normalisation makes features blind to a recording's gain; taking
//! off the utterance's spectral shape makes them blind to its colouring, not its gain.

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

/// `audio`'s features `[T, 80]` through a front end with `config`.
fn features_of(config: FrontEndConfig, audio: Audio) -> ndarray::Array2<f32> {
    FrontEnd::new(config)
        .unwrap()
        .audio_features(audio)
        .unwrap()
}

#[test]
fn utterance_mean_removes_a_gain_change() {
    let features = |utterance_mean: bool, gain: f32| {
        features_of(
            FrontEndConfig {
                utterance_mean,
                ..FrontEndConfig::default()
            },
            tone(gain),
        )
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

/// Noise with a hum, 20 s: every band has energy in every frame, and the utterance is
/// long enough for nearly all of its shape to come off (`SHAPE_PRIOR_FRAMES`).
fn hiss() -> Audio {
    let rate = 16_000;
    let samples = (0..20 * rate)
        .map(|i| {
            let t = i as f32 / rate as f32;
            let noise = ((i as f32 * 12.9898).sin() * 43_758.547).fract() - 0.5;
            5_000.0 * (noise + 0.2 * (2.0 * std::f32::consts::PI * 180.0 * t).sin())
        })
        .collect();
    Audio {
        samples,
        sample_rate: rate,
    }
}

#[test]
fn utterance_shape_removes_a_colouring_and_keeps_the_level() {
    let features = |utterance_shape: bool, audio: Audio| {
        features_of(
            FrontEndConfig {
                utterance_shape,
                ..FrontEndConfig::default()
            },
            audio,
        )
    };
    // A microphone that favours the lows: y[n] = x[n] + 0.6 x[n-1] (+4 dB at the
    // bottom of the band, -8 dB at the top).
    let coloured = |audio: Audio| {
        let mut prev = 0.0;
        let samples = audio
            .samples
            .iter()
            .map(|&x| {
                let y = x + 0.6 * prev;
                prev = x;
                y
            })
            .collect();
        Audio { samples, ..audio }
    };
    // Spread of `a - b` over every frame and band, and its mean.
    let spread = |a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>| {
        let d: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        let lo = d.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = d.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        (hi - lo, d.iter().sum::<f32>() / d.len() as f32)
    };
    let (plain, tilted) = (features(false, hiss()), features(false, coloured(hiss())));
    let (coloured_range, _) = spread(&plain, &tilted);
    assert!(coloured_range > 2.0, "{coloured_range}");
    // With the shape off, the colouring leaves about one offset for every value (the
    // hum's band moves a little from frame to frame, and 1 / 21 of the shape stays).
    let (plain, tilted) = (features(true, hiss()), features(true, coloured(hiss())));
    let (range, _) = spread(&plain, &tilted);
    assert!(
        range < 0.25 * coloured_range,
        "{range} against {coloured_range}"
    );
    // And a quieter recording stays quieter: half the amplitude, ln 4 lower everywhere.
    let quiet = Audio {
        samples: hiss().samples.iter().map(|x| x * 0.5).collect(),
        ..hiss()
    };
    let (range, offset) = spread(&plain, &features(true, quiet));
    assert!(range < 1e-3, "{range}");
    assert!((offset - 4f32.ln()).abs() < 1e-3, "{offset}");
}

#[test]
fn statistics_are_gathered_without_cmvn_or_the_shape_and_the_rest_is_kept() {
    let front = FrontEndConfig {
        cmvn: Some(lasr_features::Cmvn {
            frames: 10,
            mean: vec![1.0; 80],
            std: vec![2.0; 80],
        }),
        utterance_mean: true,
        utterance_shape: true,
        utterance_spread: 0.3,
        pad_frames: 3,
        ..FrontEndConfig::default()
    };
    let raw = front.for_statistics();
    assert_eq!(raw.cmvn, None);
    assert!(!raw.utterance_shape);
    assert_eq!(raw.utterance_spread, 0.0);
    // Applied before the statistics are gathered, so kept.
    assert!(raw.utterance_mean);
    assert_eq!(raw.pad_frames, 3);
    assert_eq!(raw.features, front.features);
}
