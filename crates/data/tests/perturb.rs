//! Speed perturbation: length and pitch of the perturbed audio, the copies in a loaded
//! training set, and the errors.

mod common;

use common::{tone, write_tone, write_wav};
use lasr_data::{perturbed_id, speed_perturb, Dataset, Entry, Error, LoadOptions};
use lasr_features::{Audio, Fbank, FeatureConfig};

/// The frequency (1 Hz steps between `lo` and `hi`) where a Hann-windowed DFT of
/// `x` at `rate` peaks.
fn dominant_frequency(x: &[f32], rate: u32, lo: usize, hi: usize) -> usize {
    let n = x.len() as f64;
    let windowed: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            f64::from(v) * (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n).cos())
        })
        .collect();
    (lo..=hi)
        .max_by(|&a, &b| {
            let power = |f: usize| {
                let w = 2.0 * std::f64::consts::PI * f as f64 / f64::from(rate);
                let (re, im) = windowed
                    .iter()
                    .enumerate()
                    .fold((0.0, 0.0), |(re, im), (i, v)| {
                        (re + v * (w * i as f64).cos(), im - v * (w * i as f64).sin())
                    });
                re * re + im * im
            };
            power(a).total_cmp(&power(b))
        })
        .unwrap()
}

#[test]
fn a_440_hz_second_sped_up_by_1_1_lasts_0_909_s_at_484_hz() {
    let audio = Audio {
        samples: tone(440.0, 1.0, 16000),
        sample_rate: 16000,
    };
    assert_eq!(dominant_frequency(&audio.samples, 16000, 300, 700), 440);
    let fast = speed_perturb(&audio, 1.1).unwrap();
    assert_eq!(fast.sample_rate, 16000);
    // ceil(16000 / 1.1)
    assert_eq!(fast.samples.len(), 14546);
    assert!((fast.duration_secs() - 1.0 / 1.1).abs() < 1e-4);
    assert_eq!(dominant_frequency(&fast.samples, 16000, 300, 700), 484);
    let slow = speed_perturb(&audio, 0.9).unwrap();
    assert_eq!(slow.samples.len(), 17778);
    assert_eq!(dominant_frequency(&slow.samples, 16000, 300, 700), 396);
    // Amplitude is kept (away from the edges, where the signal starts and stops).
    let peak = fast.samples[1000..13000]
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()));
    assert!((peak - 8000.0).abs() < 80.0, "{peak}");
    // Speeding up does not alias: a 7.9 kHz tone (8.7 kHz after speeding up, above
    // Nyquist) is removed, not folded back to 7.3 kHz.
    let high = Audio {
        samples: tone(7900.0, 0.5, 16000),
        sample_rate: 16000,
    };
    let out = speed_perturb(&high, 1.1).unwrap();
    let rms = (out.samples[500..out.samples.len() - 500]
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        / (out.samples.len() - 1000) as f64)
        .sqrt();
    assert!(rms < 10.0, "aliased energy, rms {rms}");
    // Any sample rate.
    let a8k = Audio {
        samples: tone(440.0, 1.0, 8000),
        sample_rate: 8000,
    };
    let f = speed_perturb(&a8k, 1.1).unwrap();
    assert_eq!((f.samples.len(), f.sample_rate), (7273, 8000));
    assert_eq!(dominant_frequency(&f.samples, 8000, 300, 700), 484);
}

#[test]
fn a_perturbed_training_set_has_a_copy_per_factor_and_the_copies_sound_different() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.wav");
    write_wav(&a, &tone(440.0, 1.0, 16000), 16000);
    let b = tmp.path().join("b.wav");
    write_tone(&b, 2, 0.5);
    let entries = vec![Entry::new("a", &a, "AY"), Entry::new("b", &b, "BEE")];
    let options = LoadOptions {
        speed_perturb: vec![0.9, 1.0, 1.1],
        ..LoadOptions::default()
    };
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let (set, report) = Dataset::load_with(entries.clone(), &options, &|| {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(calls.into_inner(), 2, "progress counts entries, not copies");
    assert_eq!(report.computed, 6);
    let ids: Vec<&str> = set.utterances.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "sp0.9-a", "sp0.9-b", "sp1.1-a", "sp1.1-b"]);
    assert_eq!(perturbed_id("a", 0.9), "sp0.9-a");
    let get = |id: &str| set.utterances.iter().find(|u| u.id == id).unwrap();
    assert_eq!(get("sp1.1-b").transcript, "BEE");
    // 16000 samples -> 98 frames; 17778 -> 109; 14546 -> 89.
    assert_eq!(get("a").feats.nrows(), 98);
    assert_eq!(get("sp0.9-a").feats.nrows(), 109);
    assert_eq!(get("sp1.1-a").feats.nrows(), 89);
    // The copies' features are those of the perturbed waveform.
    let audio = lasr_features::load(&a).unwrap();
    let mut fbank = Fbank::new(&FeatureConfig::default()).unwrap();
    let fast = speed_perturb(&audio, 1.1).unwrap();
    assert_eq!(get("sp1.1-a").feats, fbank.compute(&fast.samples).unwrap());
    assert_eq!(get("a").feats, fbank.compute(&audio.samples).unwrap());
    // Seen through the features: the energy moves up with the speed.
    let centroid = |id: &str| {
        let f = &get(id).feats;
        let mean = f.mean_axis(ndarray::Axis(0)).unwrap();
        let w: Vec<f64> = mean.iter().map(|v| f64::from(*v).exp()).collect();
        w.iter().enumerate().map(|(i, v)| i as f64 * v).sum::<f64>() / w.iter().sum::<f64>()
    };
    assert!(centroid("sp0.9-a") < centroid("a") && centroid("a") < centroid("sp1.1-a"));

    // 1.0 alone adds nothing; the originals are always there.
    let (set, _) = Dataset::load_with(
        entries.clone(),
        &LoadOptions {
            speed_perturb: vec![1.0],
            ..LoadOptions::default()
        },
        &|| {},
    )
    .unwrap();
    assert_eq!(set.len(), 2);
    let (set, _) = Dataset::load_with(
        entries,
        &LoadOptions {
            speed_perturb: vec![1.1],
            ..LoadOptions::default()
        },
        &|| {},
    )
    .unwrap();
    assert_eq!(set.len(), 4);
}

#[test]
fn perturbed_copies_are_cached_under_their_own_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.wav");
    write_tone(&a, 1, 0.5);
    let entries = vec![Entry::new("a", &a, "AY")];
    let cache = Some(tmp.path().join("cache"));
    let plain = LoadOptions {
        cache: cache.clone(),
        ..LoadOptions::default()
    };
    let perturbed = LoadOptions {
        cache,
        speed_perturb: vec![0.9, 1.0, 1.1],
        ..LoadOptions::default()
    };
    let r = Dataset::load_with(entries.clone(), &plain, &|| {})
        .unwrap()
        .1;
    assert_eq!((r.computed, r.cache_hits), (1, 0));
    let (first, r) = Dataset::load_with(entries.clone(), &perturbed, &|| {}).unwrap();
    assert_eq!((r.computed, r.cache_hits), (2, 1));
    let (again, r) = Dataset::load_with(entries, &perturbed, &|| {}).unwrap();
    assert_eq!((r.computed, r.cache_hits), (0, 3));
    for (x, y) in first.utterances.iter().zip(&again.utterances) {
        assert_eq!((&x.id, &x.feats), (&y.id, &y.feats));
    }
}

#[test]
fn bad_factors_are_refused_and_a_copy_too_short_is_skipped_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.wav");
    write_tone(&a, 1, 0.5);
    let entries = vec![Entry::new("a", &a, "AY")];
    for factors in [
        vec![0.0],
        vec![-1.1],
        vec![f32::NAN],
        vec![f32::INFINITY],
        vec![3.0],
        vec![1.1, 1.1],
        vec![0.91237],
    ] {
        let e = Dataset::load_with(
            entries.clone(),
            &LoadOptions {
                speed_perturb: factors.clone(),
                ..LoadOptions::default()
            },
            &|| {},
        )
        .unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{factors:?}: {e}");
        assert!(e.to_string().contains("speed perturbation factor"), "{e}");
    }
    assert!(speed_perturb(
        &Audio {
            samples: vec![0.0; 10],
            sample_rate: 16000
        },
        0.0
    )
    .is_err());

    // 420 samples hold one 400-sample frame; sped up by 1.1 they are 382: too short.
    let short = tmp.path().join("short.wav");
    write_wav(&short, &tone(300.0, 420.0 / 16000.0, 16000), 16000);
    let (set, report) = Dataset::load_with(
        vec![Entry::new("s", &short, "ESS")],
        &LoadOptions {
            speed_perturb: vec![0.9, 1.1],
            ..LoadOptions::default()
        },
        &|| {},
    )
    .unwrap();
    let ids: Vec<&str> = set.utterances.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, ["s", "sp0.9-s"]);
    assert_eq!(report.skipped.len(), 1);
    let s = &report.skipped[0];
    assert_eq!(s.entry.id, "sp1.1-s");
    let Error::Features(e) = &s.error else {
        panic!("{}", s.error)
    };
    assert!(
        matches!(
            e.audio_kind(),
            Some(lasr_features::AudioErrorKind::TooShort { samples: 382, .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("short.wav"), "{e}");
}
