//! Broken files give a typed error naming the file and the problem, never a panic.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use lasr_features::{decode, load, AudioErrorKind, Error, FrontEnd, FrontEndConfig};

fn kind_of(bytes: &[u8], name: &str) -> AudioErrorKind {
    let err = decode(bytes, Path::new(name)).expect_err("must be rejected");
    let msg = err.to_string();
    assert!(msg.contains(name), "error {msg:?} does not name the file");
    err.audio_kind()
        .cloned()
        .unwrap_or_else(|| panic!("not an audio error: {err:?}"))
}

fn good_wav() -> Vec<u8> {
    wav_int(&[test_signal(4000, 16000, 0)], 16000, 16)
}

fn good_flac() -> Vec<u8> {
    flac(&[test_signal(20000, 16000, 1)], 16000, 16)
}

#[test]
fn empty_file() {
    assert_eq!(kind_of(b"", "empty.wav"), AudioErrorKind::Empty);
}

#[test]
fn truncated_headers() {
    let wav = good_wav();
    for cut in [2, 4, 11, 20, 30, 40] {
        let k = kind_of(&wav[..cut], "cut.wav");
        assert_eq!(
            k,
            AudioErrorKind::TruncatedHeader { format: "WAV" },
            "cut at {cut}"
        );
    }
    let flac = good_flac();
    for cut in [3, 6, 20, 41] {
        let k = kind_of(&flac[..cut], "cut.flac");
        assert!(
            matches!(k, AudioErrorKind::TruncatedHeader { format: "FLAC" }),
            "cut at {cut}: {k:?}"
        );
    }
}

#[test]
fn truncated_data() {
    let wav = good_wav();
    let k = kind_of(&wav[..44 + 3000], "short.wav");
    assert_eq!(
        k,
        AudioErrorKind::TruncatedData {
            format: "WAV",
            expected: 4000,
            found: 1500
        }
    );
    // Cut in the middle of a sample.
    let k = kind_of(&wav[..44 + 3001], "odd.wav");
    assert!(
        matches!(k, AudioErrorKind::TruncatedData { found: 1500, .. }),
        "{k:?}"
    );
    let flac = good_flac();
    let k = kind_of(&flac[..flac.len() / 2], "short.flac");
    assert!(
        matches!(k, AudioErrorKind::TruncatedData { format: "FLAC", expected: 20000, found } if found < 20000),
        "{k:?}"
    );
}

#[test]
fn not_audio_at_all() {
    let k = kind_of(b"hello, this is a text file\n", "notes.wav");
    assert!(
        matches!(k, AudioErrorKind::UnknownFormat { ref magic } if magic.contains("hello")),
        "{k:?}"
    );
    let k = kind_of(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "picture.flac");
    assert!(matches!(k, AudioErrorKind::UnknownFormat { .. }), "{k:?}");
    // A RIFF container of something else.
    let mut avi = good_wav();
    avi[8..12].copy_from_slice(b"AVI ");
    assert!(matches!(
        kind_of(&avi, "movie.wav"),
        AudioErrorKind::UnknownFormat { .. }
    ));
    // Compressed WAV (format tag 0x55, MP3) is valid but not ours to read.
    let mut mp3 = good_wav();
    mp3[20..22].copy_from_slice(&0x55u16.to_le_bytes());
    assert!(matches!(
        kind_of(&mp3, "mp3.wav"),
        AudioErrorKind::Unsupported { .. } | AudioErrorKind::BadHeader { .. }
    ));
}

#[test]
fn zero_channels_and_zero_rate() {
    let mut wav = good_wav();
    wav[22..24].copy_from_slice(&0u16.to_le_bytes());
    assert_eq!(kind_of(&wav, "nochan.wav"), AudioErrorKind::ZeroChannels);
    let mut wav = good_wav();
    wav[24..28].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(kind_of(&wav, "norate.wav"), AudioErrorKind::ZeroSampleRate);
}

#[test]
fn absurd_header_sizes_do_not_allocate_or_panic() {
    // "fmt " chunk claiming 4 GiB.
    let mut wav = good_wav();
    wav[16..20].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    assert!(matches!(
        kind_of(&wav, "hugefmt.wav"),
        AudioErrorKind::BadHeader { .. }
    ));
    // "data" chunk claiming 4 GiB of samples in a 8 kB file.
    let mut wav = good_wav();
    wav[40..44].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    let k = kind_of(&wav, "hugedata.wav");
    assert!(
        matches!(k, AudioErrorKind::TruncatedData { found: 4000, .. }),
        "{k:?}"
    );
    // RIFF size field lying.
    let mut wav = good_wav();
    wav[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    let _ = decode(&wav, Path::new("riff.wav"));
    // FLAC STREAMINFO claiming 2^36 - 1 samples.
    let mut flac = good_flac();
    // STREAMINFO starts at byte 8; the 36-bit sample count is in bytes 21..26 (low 4 bits of 21).
    flac[21] |= 0x0f;
    flac[22..26].copy_from_slice(&[0xff; 4]);
    let k = kind_of(&flac, "hugecount.flac");
    assert!(
        matches!(k, AudioErrorKind::TruncatedData { found: 20000, .. }),
        "{k:?}"
    );
    // FLAC metadata block claiming 16 MiB.
    let mut flac = good_flac();
    flac[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    let _ = kind_of(&flac, "hugeblock.flac");
}

#[test]
fn zero_length_audio() {
    let wav = wav_int(&[vec![]], 16000, 16);
    assert_eq!(kind_of(&wav, "silence.wav"), AudioErrorKind::NoSamples);
}

#[test]
fn audio_shorter_than_one_frame() {
    let dir = tempfile::tempdir().unwrap();
    let mut front = FrontEnd::new(FrontEndConfig::default()).unwrap();
    // 399 samples at 16 kHz: one short of a 25 ms frame.
    let p = dir.path().join("blip.wav");
    std::fs::write(&p, wav_int(&[test_signal(399, 16000, 0)], 16000, 16)).unwrap();
    let err = front.file_features(&p).unwrap_err();
    assert!(err.to_string().contains("blip.wav"), "{err}");
    assert_eq!(
        err.audio_kind(),
        Some(&AudioErrorKind::TooShort {
            samples: 399,
            frame: 400
        })
    );
    // 200 samples at 8 kHz become exactly 400 at 16 kHz: one frame, accepted.
    let p = dir.path().join("ok8k.wav");
    std::fs::write(&p, wav_int(&[test_signal(200, 8000, 0)], 8000, 16)).unwrap();
    assert_eq!(front.file_features(&p).unwrap().dim(), (1, 80));
    // 199 at 8 kHz become 398: too short, and said in the feature rate's samples.
    let p = dir.path().join("short8k.wav");
    std::fs::write(&p, wav_int(&[test_signal(199, 8000, 0)], 8000, 16)).unwrap();
    let err = front.file_features(&p).unwrap_err();
    assert_eq!(
        err.audio_kind(),
        Some(&AudioErrorKind::TooShort {
            samples: 398,
            frame: 400
        })
    );
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let err = load("/nonexistent/dir/utt.flac").unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/dir/utt.flac"));
}

#[test]
fn a_bad_file_in_a_batch_is_reported_and_the_rest_still_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths: Vec<PathBuf> = Vec::new();
    for i in 0..6 {
        let p = dir.path().join(format!("utt{i}.wav"));
        if i == 3 {
            std::fs::write(&p, b"garbage").unwrap();
        } else {
            std::fs::write(
                &p,
                wav_int(&[test_signal(1600 * (i + 1), 16000, i as u32)], 16000, 16),
            )
            .unwrap();
        }
        paths.push(p);
    }
    let out = lasr_features::extract_files(&paths, &FrontEndConfig::default()).unwrap();
    assert_eq!(out.len(), 6);
    for (i, r) in out.iter().enumerate() {
        if i == 3 {
            assert!(r.as_ref().unwrap_err().to_string().contains("utt3.wav"));
        } else {
            // 1600 (i + 1) samples -> 1 + (1600 (i + 1) - 400) / 160 frames, in order.
            assert_eq!(
                r.as_ref().unwrap().nrows(),
                1 + (1600 * (i + 1) - 400) / 160
            );
        }
    }
}

/// A cheap deterministic generator so the mutation test needs no extra dependency.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn mutated_and_truncated_files_never_panic() {
    let seeds = [
        good_wav(),
        good_flac(),
        wav_int(
            &[test_signal(500, 8000, 2), test_signal(500, 8000, 3)],
            8000,
            24,
        ),
        wav_float(&[vec![0.1; 300]], 48000),
    ];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut errors = 0;
    for seed in &seeds {
        for _ in 0..1500 {
            let mut b = seed.clone();
            // Flip 1-4 bytes, mostly in the header where the structure lives.
            for _ in 0..1 + rng.next() % 4 {
                let span = if rng.next().is_multiple_of(4) {
                    b.len()
                } else {
                    b.len().min(64)
                };
                let i = (rng.next() as usize) % span;
                b[i] = rng.next() as u8;
            }
            if rng.next().is_multiple_of(3) {
                let keep = (rng.next() as usize) % b.len();
                b.truncate(keep);
            }
            let r = std::panic::catch_unwind(|| decode(&b, Path::new("fuzz.bin")));
            match r {
                Ok(Ok(a)) => assert!(!a.samples.is_empty() && a.sample_rate > 0),
                Ok(Err(e)) => {
                    errors += 1;
                    assert!(e.to_string().contains("fuzz.bin"));
                }
                Err(_) => panic!("decoder panicked on {:?}", &b[..b.len().min(64)]),
            }
        }
    }
    assert!(
        errors > 1000,
        "the mutations should break most files, broke {errors}"
    );
}

#[test]
fn absurd_sample_rates_are_refused_without_building_a_huge_filter() {
    let dir = tempfile::tempdir().unwrap();
    let mut front = FrontEnd::new(FrontEndConfig::default()).unwrap();
    for rate in [2_000_000_000u32, 16001, 1] {
        let p = dir.path().join(format!("rate{rate}.wav"));
        // Patch the rate (and the byte rate hound checks against it).
        let mut wav = wav_int(&[test_signal(2000, 16000, 0)], 16000, 16);
        wav[24..28].copy_from_slice(&rate.to_le_bytes());
        wav[28..32].copy_from_slice(&(rate * 2).to_le_bytes());
        std::fs::write(&p, wav).unwrap();
        let err = front.file_features(&p).unwrap_err();
        assert!(
            err.to_string().contains(&format!("rate{rate}.wav")),
            "{err}"
        );
        assert!(
            matches!(err.audio_kind(), Some(AudioErrorKind::UnsupportedRate { rate: r, .. }) if *r == rate),
            "{rate} Hz: {err}"
        );
    }
}
