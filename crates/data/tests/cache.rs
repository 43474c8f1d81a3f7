//! The on-disk feature cache: hits, misses on a changed config or file, damaged entries
//! recomputed with a warning, raw features under CMVN and the utterance shape.

mod common;

use std::path::{Path, PathBuf};

use common::write_tone;
use lasr_data::{Dataset, Entry, Error, LoadOptions, LoadReport};
use lasr_features::FrontEndConfig;

/// Four WAV files of different lengths.
fn corpus(dir: &Path) -> Vec<Entry> {
    (0..4)
        .map(|i| {
            let path = dir.join(format!("u{i}.wav"));
            write_tone(&path, i, 0.3 + 0.1 * f64::from(i));
            Entry::new(format!("u{i}"), path, format!("TEXT {i}"))
        })
        .collect()
}

fn load(entries: &[Entry], options: &LoadOptions) -> (Dataset, LoadReport) {
    Dataset::load_with(entries.to_vec(), options, &|| {}).unwrap()
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for sub in std::fs::read_dir(dir).unwrap() {
        let sub = sub.unwrap().path();
        if sub.is_dir() {
            for f in std::fs::read_dir(&sub).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|e| e == "feats") {
                    files.push(f);
                }
            }
        }
    }
    files.sort();
    files
}

fn same(a: &Dataset, b: &Dataset) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.utterances.iter().zip(&b.utterances) {
        assert_eq!(x.id, y.id);
        assert_eq!(x.transcript, y.transcript);
        assert_eq!(x.feats, y.feats, "{}", x.id);
    }
}

#[test]
fn a_second_load_reads_the_cache_and_gets_the_same_features() {
    let tmp = tempfile::tempdir().unwrap();
    let entries = corpus(tmp.path());
    let cache = tmp.path().join("cache");
    let options = LoadOptions {
        cache: Some(cache.clone()),
        ..LoadOptions::default()
    };
    let (plain, r) = load(&entries, &LoadOptions::default());
    assert_eq!((r.computed, r.cache_hits), (4, 0));
    let (first, r) = load(&entries, &options);
    assert_eq!((r.computed, r.cache_hits), (4, 0));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(cache_files(&cache).len(), 4);
    let (second, r) = load(&entries, &options);
    assert_eq!((r.computed, r.cache_hits), (0, 4));
    same(&plain, &first);
    same(&plain, &second);
    // No temporary files are left behind, and the config is described for people.
    let sub = cache_files(&cache)[0].parent().unwrap().to_path_buf();
    let names: Vec<String> = std::fs::read_dir(&sub)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    assert!(names.iter().any(|n| n == "config.json"), "{names:?}");

    // A relative path to the same file hits the same entry (keys use absolute paths).
    let cwd = std::env::current_dir().unwrap();
    let rel = pathdiff(&entries[0].audio, &cwd);
    let r = load(&[Entry::new("u0", rel, "TEXT 0")], &options).1;
    assert_eq!((r.computed, r.cache_hits), (0, 1));
}

/// `path` relative to `base` (both absolute).
fn pathdiff(path: &Path, base: &Path) -> PathBuf {
    let mut rel = PathBuf::new();
    for _ in base.components().skip(1) {
        rel.push("..");
    }
    rel.join(path.strip_prefix("/").unwrap())
}

#[test]
fn changing_the_feature_config_or_a_file_misses_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let entries = corpus(tmp.path());
    let cache = tmp.path().join("cache");
    let base = LoadOptions {
        cache: Some(cache.clone()),
        ..LoadOptions::default()
    };
    load(&entries, &base);
    // Another filterbank setting: all four recomputed, and they have its width.
    let mut narrow = base.clone();
    narrow.front.features.num_mel_bins = 40;
    let (d, r) = load(&entries, &narrow);
    assert_eq!((r.computed, r.cache_hits), (4, 0));
    assert!(d.utterances.iter().all(|u| u.feats.ncols() == 40));
    let mut shifted = base.clone();
    shifted.front.features.low_freq = 60.0;
    assert_eq!(load(&entries, &shifted).1.computed, 4);
    // The old config's entries are still there: switching back hits.
    assert_eq!(load(&entries, &base).1.cache_hits, 4);
    // SpecAugment is applied in training, not stored: changing it keeps the entries.
    let mut masked = base.clone();
    masked.front.features.spec_augment.freq_masks += 1;
    assert_eq!(load(&entries, &masked).1.cache_hits, 4);

    // A rewritten file (new length): that one is recomputed, and correctly.
    write_tone(&entries[2].audio, 7, 0.8);
    let (d, r) = load(&entries, &base);
    assert_eq!((r.computed, r.cache_hits), (1, 3));
    let fresh = load(&entries, &LoadOptions::default()).0;
    same(&fresh, &d);
    assert_eq!(d.utterances[2].feats.nrows(), 78);
    // Same size, other content, later modification time: recomputed too.
    write_tone(&entries[2].audio, 8, 0.8);
    let f = std::fs::File::options()
        .write(true)
        .open(&entries[2].audio)
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(10))
        .unwrap();
    drop(f);
    let (d, r) = load(&entries, &base);
    assert_eq!((r.computed, r.cache_hits), (1, 3));
    same(&load(&entries, &LoadOptions::default()).0, &d);
}

#[test]
fn a_damaged_entry_is_reported_recomputed_and_rewritten() {
    let tmp = tempfile::tempdir().unwrap();
    let entries = corpus(tmp.path());
    let cache = tmp.path().join("cache");
    let options = LoadOptions {
        cache: Some(cache.clone()),
        ..LoadOptions::default()
    };
    let (good, _) = load(&entries, &options);
    let files = cache_files(&cache);
    // One truncated (as a crash mid-write without the rename would leave it), one
    // with a flipped bit in its features, one emptied.
    let bytes = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &bytes[..bytes.len() / 2]).unwrap();
    let mut bytes = std::fs::read(&files[1]).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0x04;
    std::fs::write(&files[1], &bytes).unwrap();
    std::fs::write(&files[2], b"").unwrap();
    let (d, r) = load(&entries, &options);
    same(&good, &d);
    assert_eq!((r.computed, r.cache_hits), (3, 1));
    let mut warned: Vec<PathBuf> = r.warnings.iter().map(|w| w.path.clone()).collect();
    warned.sort();
    assert_eq!(warned, files[..3]);
    let text: Vec<String> = r.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        text.iter().any(|t| t.contains("checksum mismatch")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t.contains("length mismatch")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t.contains("truncated: 0 bytes")),
        "{text:?}"
    );
    assert!(text.iter().all(|t| t.contains("recomputed")), "{text:?}");
    // Rewritten: the next load hits everything, silently.
    let (d, r) = load(&entries, &options);
    assert_eq!((r.computed, r.cache_hits), (0, 4));
    assert!(r.warnings.is_empty());
    same(&good, &d);
}

#[test]
fn the_cache_holds_raw_features_and_cmvn_is_applied_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let entries = corpus(tmp.path());
    let cache = tmp.path().join("cache");
    let raw = load(&entries, &LoadOptions::default()).0;
    let cmvn = raw.cmvn_stats().finish().unwrap();
    let normalised = LoadOptions {
        front: FrontEndConfig {
            cmvn: Some(cmvn.clone()),
            ..FrontEndConfig::default()
        },
        cache: Some(cache.clone()),
        ..LoadOptions::default()
    };
    let (d, r) = load(&entries, &normalised);
    assert_eq!(r.computed, 4);
    let mut expected = raw.clone();
    expected
        .normalize(&FrontEndConfig {
            cmvn: Some(cmvn.clone()),
            ..FrontEndConfig::default()
        })
        .unwrap();
    same(&expected, &d);
    // Same cache, no CMVN: every entry hits and is the raw features.
    let (d, r) = load(
        &entries,
        &LoadOptions {
            cache: Some(cache.clone()),
            ..LoadOptions::default()
        },
    );
    assert_eq!(r.cache_hits, 4);
    same(&raw, &d);
    // And with CMVN again: hits, normalised.
    let (d, r) = load(&entries, &normalised);
    assert_eq!(r.cache_hits, 4);
    same(&expected, &d);
    // The utterance's shape comes off after CMVN both ways: loaded with a model's
    // front end (as decoding does), or raw and normalised after (as training does).
    let shaped = FrontEndConfig {
        utterance_shape: true,
        utterance_spread: 0.3,
        ..normalised.front.clone()
    };
    let (d, _) = load(
        &entries,
        &LoadOptions {
            front: shaped.clone(),
            ..normalised.clone()
        },
    );
    let mut expected_shaped = raw.clone();
    expected_shaped.normalize(&shaped).unwrap();
    same(&expected_shaped, &d);
    // Both are CMVN first, then the shape and the spread, by hand; the shape before
    // CMVN differs.
    for (u, r) in d.utterances.iter().zip(&raw.utterances) {
        let mut by_hand = r.feats.clone();
        cmvn.apply(by_hand.view_mut()).unwrap();
        lasr_features::cmvn::subtract_shape(by_hand.view_mut());
        lasr_features::cmvn::scale_spread(by_hand.view_mut(), 0.3);
        assert_eq!(u.feats, by_hand, "{}", u.id);
        let mut reversed = r.feats.clone();
        lasr_features::cmvn::subtract_shape(reversed.view_mut());
        cmvn.apply(reversed.view_mut()).unwrap();
        lasr_features::cmvn::scale_spread(reversed.view_mut(), 0.3);
        let gap = reversed
            .iter()
            .zip(&by_hand)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(gap > 1e-3, "{}: {gap}", u.id);
    }
    assert_ne!(expected.utterances[0].feats, d.utterances[0].feats);
}

#[test]
fn a_cache_directory_that_cannot_be_made_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let entries = corpus(tmp.path());
    let blocker = tmp.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let e = Dataset::load_with(
        entries,
        &LoadOptions {
            cache: Some(blocker.join("cache")),
            ..LoadOptions::default()
        },
        &|| {},
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::Io { path, .. } if path.starts_with(&blocker)),
        "{e}"
    );
}

#[test]
fn bad_audio_is_skipped_not_cached_and_stays_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let mut entries = corpus(tmp.path());
    let bad = tmp.path().join("bad.wav");
    std::fs::write(&bad, b"not audio").unwrap();
    entries.push(Entry::new("bad", &bad, "X"));
    let cache = tmp.path().join("cache");
    let options = LoadOptions {
        cache: Some(cache.clone()),
        ..LoadOptions::default()
    };
    for expected_hits in [0, 4] {
        let (d, r) = load(&entries, &options);
        assert_eq!(d.len(), 4);
        assert_eq!(r.cache_hits, expected_hits);
        assert_eq!(r.skipped.len(), 1);
        assert!(r.skipped[0].error.to_string().contains("bad.wav"));
    }
    assert_eq!(cache_files(&cache).len(), 4);
}

#[test]
fn temporaries_left_by_an_interrupted_run_are_removed_once_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let entries = corpus(tmp.path());
    let cache = tmp.path().join("cache");
    let options = LoadOptions {
        cache: Some(cache.clone()),
        ..LoadOptions::default()
    };
    load(&entries, &options);
    let sub = cache_files(&cache)[0].parent().unwrap().to_path_buf();
    // What a run killed between write and rename leaves: a half-written temporary.
    let stale = sub.join(".0123456789abcdef.feats.999.0.tmp");
    let fresh = sub.join(".0123456789abcdef.feats.999.1.tmp");
    for p in [&stale, &fresh] {
        std::fs::write(p, b"LASRFEAT half").unwrap();
    }
    let f = std::fs::File::options().write(true).open(&stale).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
        .unwrap();
    drop(f);
    let r = load(&entries, &options).1;
    assert_eq!(r.cache_hits, 4);
    assert!(r.warnings.is_empty());
    assert!(!stale.exists(), "a stale temporary is removed");
    assert!(
        fresh.exists(),
        "another run may still be writing a fresh one"
    );
}
