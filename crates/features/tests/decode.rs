//! Every WAV sample format, channel layouts, sample rates, and FLAC against WAV.

mod common;

use std::path::Path;

use common::*;
use lasr_features::{decode, Audio};

fn dec(bytes: &[u8]) -> Audio {
    decode(bytes, Path::new("test.wav")).unwrap()
}

#[test]
fn sixteen_bit_samples_come_back_unchanged() {
    let x = test_signal(5000, 16000, 0);
    let a = dec(&wav_int(std::slice::from_ref(&x), 16000, 16));
    assert_eq!(a.sample_rate, 16000);
    let want: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    assert_eq!(a.samples, want);
}

#[test]
fn every_integer_width_lands_on_the_16_bit_scale() {
    let x = test_signal(3000, 16000, 1);
    // 8-bit: the top 8 bits of the 16-bit value.
    let x8: Vec<i32> = x.iter().map(|v| v >> 8).collect();
    let a = dec(&wav_int(std::slice::from_ref(&x8), 16000, 8));
    let want: Vec<f32> = x8.iter().map(|&v| (v * 256) as f32).collect();
    assert_eq!(a.samples, want);
    // 24-bit and 32-bit: extra low bits become fractions of a 16-bit step.
    let x24: Vec<i32> = x
        .iter()
        .enumerate()
        .map(|(i, v)| v * 256 + (i as i32 % 256) - 128)
        .collect();
    let a = dec(&wav_int(std::slice::from_ref(&x24), 16000, 24));
    let want: Vec<f32> = x24.iter().map(|&v| v as f32 / 256.0).collect();
    assert_eq!(a.samples, want);
    let x32: Vec<i32> = x
        .iter()
        .enumerate()
        .map(|(i, v)| v * 65536 + (i as i32 * 977) % 65536)
        .collect();
    let a = dec(&wav_int(std::slice::from_ref(&x32), 16000, 32));
    for (got, v) in a.samples.iter().zip(&x32) {
        // f32 holds 24 bits of mantissa, so 32-bit samples keep 1/256 of a 16-bit step.
        assert!(
            (got - *v as f32 / 65536.0).abs() <= 1.0 / 256.0,
            "{got} vs {v}"
        );
    }
}

#[test]
fn eight_bit_wav_is_unsigned_with_128_as_silence() {
    // Built by hand so the convention is checked independently of hound's writer.
    let data = [0x80u8, 0xff, 0x00, 0x81];
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // PCM
    b.extend_from_slice(&1u16.to_le_bytes()); // mono
    b.extend_from_slice(&8000u32.to_le_bytes());
    b.extend_from_slice(&8000u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&8u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&data);
    let a = dec(&b);
    assert_eq!(a.samples, vec![0.0, 127.0 * 256.0, -128.0 * 256.0, 256.0]);
    assert_eq!(a.sample_rate, 8000);
}

#[test]
fn float_wav_is_scaled_by_32768() {
    let x = [0.0f32, 0.5, -1.0, 0.999, -0.25];
    let a = dec(&wav_float(&[x.to_vec()], 22050));
    assert_eq!(
        a.samples,
        vec![0.0, 16384.0, -32768.0, 0.999 * 32768.0, -8192.0]
    );
    assert_eq!(a.sample_rate, 22050);
}

#[test]
fn channels_are_averaged() {
    let l = test_signal(2000, 16000, 2);
    let r = test_signal(2000, 16000, 3);
    let a = dec(&wav_int(&[l.clone(), r.clone()], 16000, 16));
    let want: Vec<f32> = l
        .iter()
        .zip(&r)
        .map(|(a, b)| (*a as f32 + *b as f32) / 2.0)
        .collect();
    assert_eq!(a.samples, want);
    // Six channels (WAVE_FORMAT_EXTENSIBLE in hound's writer), 24-bit.
    let chans: Vec<Vec<i32>> = (0..6)
        .map(|c| {
            test_signal(1000, 16000, c)
                .iter()
                .map(|v| v * 256)
                .collect()
        })
        .collect();
    let a = dec(&wav_int(&chans, 16000, 24));
    for (i, got) in a.samples.iter().enumerate() {
        let want = chans.iter().map(|c| c[i] as f32 / 256.0).sum::<f32>() / 6.0;
        assert!((got - want).abs() < 1e-2, "sample {i}: {got} vs {want}");
    }
    // Float stereo.
    let a = dec(&wav_float(&[vec![0.5, 0.25], vec![-0.5, 0.75]], 16000));
    assert_eq!(a.samples, vec![0.0, 16384.0]);
}

#[test]
fn common_rates_resample_to_16k_preserving_a_tone() {
    for rate in [8000u32, 22050, 44100, 48000] {
        let n = rate as usize; // one second
        let x: Vec<i32> = (0..n)
            .map(|i| {
                (10000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / f64::from(rate)).sin())
                    .round() as i32
            })
            .collect();
        let a = dec(&wav_int(&[x], rate, 16));
        assert_eq!(a.sample_rate, rate);
        let a = a.resampled(16000).unwrap();
        assert_eq!(a.sample_rate, 16000);
        assert_eq!(a.samples.len(), 16000, "{rate} Hz");
        let mut worst = 0.0f64;
        for (i, &y) in a.samples.iter().enumerate().skip(500).take(15000) {
            let ideal = 10000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 16000.0).sin();
            worst = worst.max((f64::from(y) - ideal).abs());
        }
        // Quantisation of the input alone is worth 0.5; allow a little filter ripple.
        assert!(worst < 10.0, "{rate} Hz: worst error {worst} of 10000");
    }
}

#[test]
fn flac_decodes_bit_exact_against_the_same_audio_as_wav() {
    // 16-bit mono at 16 kHz, the LibriSpeech layout.
    let x = test_signal(20_000, 16000, 4);
    let from_flac = dec(&flac(std::slice::from_ref(&x), 16000, 16));
    let from_wav = dec(&wav_int(&[x], 16000, 16));
    assert_eq!(from_flac, from_wav);
    // 24-bit stereo at 44.1 kHz.
    let l: Vec<i32> = test_signal(9_000, 44100, 5)
        .iter()
        .enumerate()
        .map(|(i, v)| v * 256 + (i as i32 % 200))
        .collect();
    let r: Vec<i32> = test_signal(9_000, 44100, 6)
        .iter()
        .map(|v| v * 256 - 77)
        .collect();
    let from_flac = decode(
        &flac(&[l.clone(), r.clone()], 44100, 24),
        Path::new("x.flac"),
    )
    .unwrap();
    let from_wav = dec(&wav_int(&[l, r], 44100, 24));
    assert_eq!(from_flac.sample_rate, 44100);
    assert_eq!(from_flac, from_wav);
}

#[test]
fn format_is_chosen_by_content_not_name() {
    let x = test_signal(1000, 16000, 7);
    let flac_bytes = flac(std::slice::from_ref(&x), 16000, 16);
    let a = decode(&flac_bytes, Path::new("misnamed.wav")).unwrap();
    assert_eq!(a.samples.len(), 1000);
}

#[test]
fn bits_narrower_than_their_container_are_read_through_hound() {
    // 24 valid bits in 4-byte containers (WAVE_FORMAT_EXTENSIBLE), stereo.
    let x: Vec<i32> = test_signal(1500, 16000, 8)
        .iter()
        .map(|v| v * 256 + 31)
        .collect();
    let spec = hound::WavSpecEx {
        spec: hound::WavSpec {
            channels: 2,
            sample_rate: 16000,
            bits_per_sample: 24,
            sample_format: hound::SampleFormat::Int,
        },
        bytes_per_sample: 4,
    };
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut w = hound::WavWriter::new_with_spec_ex(&mut buf, spec).unwrap();
        for v in &x {
            w.write_sample(*v).unwrap();
            w.write_sample(-*v).unwrap();
        }
        w.finalize().unwrap();
    }
    let a = dec(buf.get_ref());
    assert_eq!(a.samples.len(), 1500);
    assert!(a.samples.iter().all(|&v| v == 0.0), "left and right cancel");
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mono = hound::WavSpecEx {
            spec: hound::WavSpec {
                channels: 1,
                ..spec.spec
            },
            ..spec
        };
        let mut w = hound::WavWriter::new_with_spec_ex(&mut buf, mono).unwrap();
        for v in &x {
            w.write_sample(*v).unwrap();
        }
        w.finalize().unwrap();
    }
    let a = dec(buf.get_ref());
    let want: Vec<f32> = x.iter().map(|&v| v as f32 / 256.0).collect();
    assert_eq!(a.samples, want);
}

#[test]
fn non_finite_float_samples_are_corrupt_data() {
    let bytes = wav_float(&[vec![0.1, f32::NAN, 0.2]], 16000);
    let err = decode(&bytes, Path::new("nan.wav")).unwrap_err();
    assert!(
        matches!(err.audio_kind(), Some(lasr_features::AudioErrorKind::CorruptData { reason, .. }) if reason.contains("sample 1")),
        "{err}"
    );
    let bytes = wav_float(&[vec![0.1, 0.3], vec![f32::INFINITY, 0.0]], 16000);
    assert!(decode(&bytes, Path::new("inf.wav")).is_err());
}
