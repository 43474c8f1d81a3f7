//! Edge padding: rows of each band's floor around the utterance, and nothing else.

use lasr_features::{pad_edges, Audio, FrontEnd, FrontEndConfig};
use ndarray::{array, s, Array2};

#[test]
fn padding_rows_hold_each_bands_floor_and_the_middle_is_untouched() {
    let f = array![[1.0f32, -3.0, 2.0], [3.0, -5.0, 0.5], [-1.0, 2.0, 4.0]];
    let p = pad_edges(f.clone(), 2);
    assert_eq!(p.dim(), (7, 3));
    assert_eq!(p.slice(s![2..5, ..]), f);
    for i in [0, 1, 5, 6] {
        assert_eq!(p.row(i), array![-1.0f32, -5.0, 0.5]);
    }
    assert_eq!(pad_edges(f.clone(), 0), f);
    let empty = Array2::<f32>::zeros((0, 3));
    assert_eq!(pad_edges(empty, 4).dim(), (0, 3));
}

#[test]
fn a_nan_stays_in_its_frame() {
    let f = array![[f32::NAN, 1.0], [f32::NAN, 2.0]];
    let p = pad_edges(f, 1);
    assert_eq!(p.row(0)[0], 0.0);
    assert_eq!(p.row(0)[1], 1.0);
    assert!(p.row(1)[0].is_nan() && p.row(2)[0].is_nan());
}

fn chirp() -> Audio {
    let rate = 16_000;
    let samples = (0..rate / 2)
        .map(|i| {
            let t = i as f32 / rate as f32;
            8_000.0 * (2.0 * std::f32::consts::PI * (300.0 + 3_000.0 * t) * t).sin()
        })
        .collect();
    Audio {
        samples,
        sample_rate: rate,
    }
}

#[test]
fn the_front_end_pads_before_normalising() {
    let features = |pad_frames: usize, utterance_mean: bool| {
        FrontEnd::new(FrontEndConfig {
            pad_frames,
            utterance_mean,
            ..FrontEndConfig::default()
        })
        .unwrap()
        .audio_features(chirp())
        .unwrap()
    };
    let plain = features(0, false);
    let padded = features(7, false);
    assert_eq!(padded.nrows(), plain.nrows() + 14);
    assert_eq!(padded.slice(s![7..7 + plain.nrows(), ..]), plain);
    // The mean is taken over the padded utterance, the padding included.
    let centred = features(7, true);
    for col in centred.columns() {
        assert!(col.mean().unwrap().abs() < 1e-4);
    }
    assert!(centred[[0, 0]] != padded[[0, 0]]);
}

#[test]
fn settings_files_without_padding_say_nothing_of_it_and_too_much_is_refused() {
    let json = serde_json::to_string(&FrontEndConfig::default()).unwrap();
    assert!(!json.contains("pad_frames"), "{json}");
    let back: FrontEndConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back.pad_frames, 0);
    let padded = FrontEndConfig {
        pad_frames: 20,
        ..FrontEndConfig::default()
    };
    let json = serde_json::to_string(&padded).unwrap();
    let back: FrontEndConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, padded);
    let huge = FrontEndConfig {
        pad_frames: FrontEndConfig::MAX_PAD_FRAMES + 1,
        ..FrontEndConfig::default()
    };
    let err = FrontEnd::new(huge).unwrap_err().to_string();
    assert!(err.contains("pad_frames"), "{err}");
}
