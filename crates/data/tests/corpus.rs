//! Corpora on disk (synthesised in a temporary directory), loading and batching.

use std::path::Path;

use lasr_data::{librispeech, tsv, BatchPlan, Dataset, Error};
use lasr_features::FrontEndConfig;

fn write_wav(path: &Path, samples: usize, seed: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..samples {
        let v = 3000.0 * ((i as f32) * 0.05 * (1.0 + seed as f32 * 0.1)).sin();
        w.write_sample(v as i16).unwrap();
    }
    w.finalize().unwrap();
}

/// A two-speaker LibriSpeech-layout corpus with one corrupt file.
fn small_librispeech(root: &Path) {
    for (spk, ch, n) in [("19", "198", 3), ("26", "495", 2)] {
        let dir = root.join(spk).join(ch);
        std::fs::create_dir_all(&dir).unwrap();
        let mut trans = String::new();
        for u in 0..n {
            let id = format!("{spk}-{ch}-{u:04}");
            write_wav(&dir.join(format!("{id}.wav")), 1600 * (u + 2), u as u32);
            trans.push_str(&format!("{id} WORDS OF UTTERANCE {u}\n"));
        }
        std::fs::write(dir.join(format!("{spk}-{ch}.trans.txt")), trans).unwrap();
    }
    // Corrupt audio: listed and present, but not audio.
    std::fs::write(root.join("26/495/26-495-0001.wav"), b"not audio at all").unwrap();
}

#[test]
fn librispeech_layout_loads_and_a_corrupt_file_is_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    small_librispeech(dir.path());
    let entries = librispeech(dir.path()).unwrap();
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "19-198-0000",
            "19-198-0001",
            "19-198-0002",
            "26-495-0000",
            "26-495-0001"
        ]
    );
    assert_eq!(entries[1].transcript, "WORDS OF UTTERANCE 1");
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let (data, skipped) = Dataset::load(entries, &FrontEndConfig::default(), &|| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(counter.into_inner(), 5);
    assert_eq!(data.len(), 4);
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].entry.id, "26-495-0001");
    assert!(skipped[0].error.to_string().contains("26-495-0001.wav"));
    // 3200 samples -> 18 frames; 4800 -> 28; 6400 -> 38.
    let frames: Vec<usize> = data.utterances.iter().map(|u| u.feats.nrows()).collect();
    assert_eq!(frames, [18, 28, 38, 18]);
    assert_eq!(data.frames(), 18 + 28 + 38 + 18);
}

#[test]
fn librispeech_errors_name_the_transcript_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    small_librispeech(dir.path());
    std::fs::remove_file(dir.path().join("19/198/19-198-0002.wav")).unwrap();
    let e = librispeech(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("19-198.trans.txt:3") && e.contains("19-198-0002"),
        "{e}"
    );
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        librispeech(empty.path()),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        librispeech(Path::new("/no/such/corpus")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn tsv_manifests_take_paths_or_ids() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("audio")).unwrap();
    write_wav(&dir.path().join("audio/7_jackson_3.wav"), 4000, 1);
    write_wav(&dir.path().join("other.wav"), 4000, 2);
    let m = dir.path().join("list.tsv");
    std::fs::write(
        &m,
        "# digits\naudio/7_jackson_3\tSEVEN\nother.wav\tSOMETHING ELSE\n\n",
    )
    .unwrap();
    let entries = tsv(&m, None).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].id, "7_jackson_3");
    assert_eq!(entries[0].audio, dir.path().join("audio/7_jackson_3.wav"));
    assert_eq!(entries[1].transcript, "SOMETHING ELSE");
    // The FSDD layout: ids in the manifest, audio in another directory.
    let m2 = dir.path().join("ids.tsv");
    std::fs::write(&m2, "7_jackson_3\tSEVEN\n").unwrap();
    assert_eq!(
        tsv(&m2, Some(&dir.path().join("audio"))).unwrap()[0].audio,
        dir.path().join("audio/7_jackson_3.wav")
    );
    // Errors name file and line.
    std::fs::write(&m2, "7_jackson_3\tSEVEN\nmissing\tX\n").unwrap();
    let e = tsv(&m2, Some(&dir.path().join("audio")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ids.tsv:2") && e.contains("missing"), "{e}");
    std::fs::write(&m2, "a\tb\tc\n").unwrap();
    assert!(tsv(&m2, None)
        .unwrap_err()
        .to_string()
        .contains("ids.tsv:1: expected 2"));
    std::fs::write(&m2, "other.wav\tA\nother.wav\tB\n").unwrap();
    assert!(tsv(&m2, None).unwrap_err().to_string().contains("twice"));
}

fn synthetic(lengths: &[usize]) -> Dataset {
    Dataset {
        utterances: lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| lasr_data::Utterance {
                id: format!("u{i:03}"),
                transcript: format!("T{i}"),
                feats: ndarray::Array2::from_elem((n, 3), i as f32 + 1.0),
            })
            .collect(),
    }
}

#[test]
fn batches_cover_every_utterance_once_within_budget_and_are_seeded() {
    let lengths: Vec<usize> = (0..57).map(|i| 20 + (i * 37) % 180).collect();
    let data = synthetic(&lengths);
    let plan = BatchPlan {
        max_frames: 600,
        max_utterances: 8,
    };
    let batches = data.batches(plan, 1);
    let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
    seen.sort();
    assert_eq!(seen, (0..57).collect::<Vec<_>>());
    for b in &batches {
        let max = b.iter().map(|&i| lengths[i]).max().unwrap();
        assert!(b.len() <= 8);
        assert!(
            b.len() == 1 || b.len() * max <= 600,
            "batch of {} with longest {max}",
            b.len()
        );
    }
    assert_eq!(data.batches(plan, 1), batches, "same seed, same epoch");
    assert_ne!(data.batches(plan, 2), batches, "another seed reorders");
    // Bucketing keeps padding low: at most 15% of padded frames are padding here.
    let padded: usize = batches
        .iter()
        .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap())
        .sum();
    let real: usize = lengths.iter().sum();
    assert!(
        (padded - real) as f64 / (padded as f64) < 0.15,
        "{padded} padded for {real} real"
    );
    // An utterance over budget gets a batch to itself.
    let big = synthetic(&[10, 700, 12]);
    assert!(big.batches(plan, 0).iter().any(|b| b == &vec![1]));
}

#[test]
fn padded_batches_are_time_major_and_zero_filled() {
    let data = synthetic(&[4, 7, 2]);
    let p = data.padded(&[2, 1]);
    assert_eq!(p.feats.dim(), (7, 2, 3));
    assert_eq!(p.lengths, [2, 7]);
    assert_eq!(p.ids, ["u002", "u001"]);
    assert_eq!(p.transcripts, ["T2", "T1"]);
    assert_eq!(p.feats[(1, 0, 0)], 3.0);
    assert_eq!(p.feats[(2, 0, 0)], 0.0, "padding");
    assert_eq!(p.feats[(6, 1, 2)], 2.0);
}
