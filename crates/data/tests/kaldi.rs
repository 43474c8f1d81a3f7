//! Kaldi data directories (wav.scp, text, segments) synthesised in a temporary
//! directory: what is read, what is reported and skipped, and how segments are cut.

mod common;

use std::path::{Path, PathBuf};

use common::{tone, write_tone, write_wav};
use lasr_data::{corpus, entries, kaldi, Dataset, Error, Segment};
use lasr_features::{Fbank, FeatureConfig, FrontEndConfig};

/// `path` (absolute) written relative to the current directory, as a Kaldi recipe
/// run from here would list it.
fn relative_to_cwd(path: &Path) -> PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let ups = cwd.components().count() - 1;
    let mut rel = PathBuf::new();
    for _ in 0..ups {
        rel.push("..");
    }
    rel.join(path.strip_prefix("/").unwrap())
}

#[test]
fn wav_scp_and_text_are_joined_and_what_cannot_be_used_is_reported_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let audio = tmp.path().join("audio");
    std::fs::create_dir_all(&audio).unwrap();
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        write_tone(&audio.join(format!("{name}.wav")), i as u32, 0.5);
    }
    let data = tmp.path().join("data/train");
    std::fs::create_dir_all(&data).unwrap();
    let abs = |n: &str| audio.join(format!("{n}.wav")).display().to_string();
    let scp = format!(
        "utt-a {}\nutt-b {}\nutt-p sox {} -t wav - |\n\nutt-r ../../audio/d.wav\nutt-c {}\nutt-x {}\nutt-k feats.ark:1234\n",
        abs("a"),
        relative_to_cwd(&audio.join("b.wav")).display(),
        abs("c"),
        abs("c"),
        audio.join("nothing.wav").display(),
    );
    std::fs::write(data.join("wav.scp"), scp).unwrap();
    std::fs::write(
        data.join("text"),
        "utt-a HELLO THERE\nutt-b  SPACED   OUT \nutt-p PIPED\nutt-c\nutt-t ONLY TEXT\nutt-u ALSO ONLY TEXT\n",
    )
    .unwrap();
    // Kaldi ignores these; so do we.
    std::fs::write(data.join("utt2spk"), "utt-a s1\n").unwrap();

    let c = kaldi(&data).unwrap();
    let ids: Vec<&str> = c.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["utt-a", "utt-b", "utt-c"]);
    assert_eq!(c.entries[0].audio, audio.join("a.wav"));
    assert_eq!(c.entries[0].transcript, "HELLO THERE");
    // The relative path is taken from the current directory and stored absolute.
    assert!(c.entries[1].audio.is_absolute());
    assert_eq!(
        c.entries[1].audio.canonicalize().unwrap(),
        audio.join("b.wav").canonicalize().unwrap()
    );
    assert_eq!(c.entries[1].transcript, "SPACED   OUT");
    assert_eq!(
        c.entries[2].transcript, "",
        "an empty transcript is allowed"
    );
    assert!(c.entries.iter().all(|e| e.segment.is_none()));

    let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    let scp_path = data.join("wav.scp").display().to_string();
    let find = |needle: &str| {
        warnings
            .iter()
            .find(|w| w.contains(needle))
            .unwrap_or_else(|| panic!("no warning with {needle:?} in {warnings:#?}"))
            .clone()
    };
    // Piped command: file and line, not a panic.
    let w = find("piped");
    assert!(w.starts_with(&format!("{scp_path}:3:")), "{w}");
    assert!(w.contains("utt-p"), "{w}");
    // Relative to the data directory is not Kaldi's rule: ../../audio/d.wav does not
    // exist from the current directory.
    let w = find("utt-r");
    assert!(
        w.starts_with(&format!("{scp_path}:5:")) && w.contains("no audio file"),
        "{w}"
    );
    let w = find("utt-x");
    assert!(
        w.starts_with(&format!("{scp_path}:7:")) && w.contains("nothing.wav"),
        "{w}"
    );
    let w = find("utt-k");
    assert!(
        w.starts_with(&format!("{scp_path}:8:")) && w.contains("archives"),
        "{w}"
    );
    // Text ids without audio: counted and named; utt-p is not reported twice.
    let w = find("not listed");
    assert!(
        w.contains("2 utterances") && w.contains("utt-t, utt-u"),
        "{w}"
    );
    assert!(!w.contains("utt-p"), "{w}");
    // Audio ids without text: utt-r, utt-x, utt-k have none either, but only usable
    // ones are counted there (the others were reported at their lines).
    assert_eq!(c.warnings.len(), 5, "{warnings:#?}");

    // Usable audio without a transcript: counted and named against `text`.
    let mut scp = std::fs::read_to_string(data.join("wav.scp")).unwrap();
    scp.push_str(&format!("utt-z {}\n", abs("a")));
    std::fs::write(data.join("wav.scp"), &scp).unwrap();
    let c = kaldi(&data).unwrap();
    let w = c
        .warnings
        .iter()
        .find(|w| w.message.contains("no transcript"))
        .unwrap();
    assert_eq!(w.path, data.join("text"));
    assert!(
        w.message.contains("1 utterances") && w.message.contains("utt-z"),
        "{w}"
    );

    // The form is detected: `corpus` and `entries` read the directory as Kaldi's.
    assert_eq!(corpus(&data).unwrap().entries, c.entries);
    assert_eq!(entries(&data).unwrap(), c.entries);

    // And the entries load.
    let (set, skipped) = Dataset::load(c.entries, &FrontEndConfig::default(), &|| {}).unwrap();
    assert!(skipped.is_empty());
    assert_eq!(set.len(), 3);
    assert!(set.utterances.iter().all(|u| u.feats.nrows() == 48));
}

#[test]
fn broken_kaldi_directories_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    std::fs::create_dir_all(&data).unwrap();
    let wav = tmp.path().join("a.wav");
    write_tone(&wav, 0, 0.2);
    // wav.scp without text: not silently read as LibriSpeech.
    std::fs::write(data.join("wav.scp"), format!("a {}\n", wav.display())).unwrap();
    let e = corpus(&data).unwrap_err().to_string();
    assert!(e.contains("wav.scp but no text"), "{e}");
    // An id twice in one file.
    std::fs::write(data.join("text"), "a X\na Y\n").unwrap();
    let e = corpus(&data).unwrap_err();
    assert!(matches!(e, Error::Format { line: 2, .. }), "{e}");
    assert!(e.to_string().contains("text:2") && e.to_string().contains("twice"));
    // Nothing usable: every path missing, the message says relative paths are taken
    // from the current directory.
    std::fs::write(data.join("text"), "a X\n").unwrap();
    std::fs::write(data.join("wav.scp"), "a some/where/a.wav\n").unwrap();
    let e = corpus(&data).unwrap_err();
    assert!(matches!(e, Error::Empty { .. }), "{e}");
    assert!(e.to_string().contains("current directory"), "{e}");
    // Only piped lines: empty, with the reason.
    std::fs::write(data.join("wav.scp"), "a cat a.wav |\n").unwrap();
    let e = corpus(&data).unwrap_err().to_string();
    assert!(e.contains("piped"), "{e}");
    // Unreadable text (not UTF-8): an I/O error naming it.
    std::fs::write(data.join("text"), b"a \xff\xfe\n").unwrap();
    std::fs::write(data.join("wav.scp"), format!("a {}\n", wav.display())).unwrap();
    let e = corpus(&data).unwrap_err();
    assert!(
        matches!(&e, Error::Io { path, .. } if path == &data.join("text")),
        "{e}"
    );
}

/// A 4 s recording: 1 s each of 300 Hz, 700 Hz, 1100 Hz, 1500 Hz.
fn recording() -> Vec<f32> {
    [300.0, 700.0, 1100.0, 1500.0]
        .iter()
        .flat_map(|&f| tone(f, 1.0, 16000))
        .collect()
}

#[test]
fn segments_are_cut_out_of_their_recordings_by_kaldis_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = tmp.path().join("rec.wav");
    let samples = recording();
    write_wav(&rec, &samples, 16000);
    let rec2 = tmp.path().join("rec2.wav");
    write_tone(&rec2, 3, 1.0);
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("wav.scp"),
        format!(
            "r1 {}\nr2 {}\nr3 cat x.wav |\n",
            rec.display(),
            rec2.display()
        ),
    )
    .unwrap();
    std::fs::write(
        data.join("segments"),
        "s1 r1 1.0 2.0\n\
         s2 r1 2.5 4.3\n\
         s3 r1 3.0 -1\n\
         s4 r2 0 0.5\n\
         s5 r1 3.5 5.0\n\
         s6 r1 4.2 4.4\n\
         s7 r1 -1 2\n\
         s8 r1 2 1\n\
         s9 r1 0 1 A\n\
         s10 r1 zero 1\n\
         s11 r9 0 1\n\
         s12 r3 0 1\n\
         s13 r1\n",
    )
    .unwrap();
    let text: String = (1..=13)
        .filter(|i| *i != 4)
        .map(|i| format!("s{i} SEGMENT {i}\n"))
        .chain(["r1 THE WHOLE RECORDING\n".to_string()])
        .collect();
    std::fs::write(data.join("text"), text).unwrap();

    let c = corpus(&data).unwrap();
    let ids: Vec<&str> = c.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["s1", "s2", "s3", "s5", "s6"]);
    assert_eq!(
        c.entries[0].segment,
        Some(Segment {
            start: 1.0,
            end: Some(2.0)
        })
    );
    assert_eq!(c.entries[0].audio, rec);
    assert_eq!(c.entries[0].transcript, "SEGMENT 1");
    assert_eq!(
        c.entries[2].segment,
        Some(Segment {
            start: 3.0,
            end: None
        })
    );
    let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    let seg_path = data.join("segments").display().to_string();
    for (line, what) in [
        (7, "s7: invalid span"),
        (8, "s8: invalid span"),
        (9, "s9: a channel field"),
        (10, "s10: start and end must be numbers"),
        (13, "s13: expected"),
    ] {
        let prefix = format!("{seg_path}:{line}: {what}");
        assert!(
            warnings.iter().any(|w| w.starts_with(&prefix)),
            "no {prefix:?} in {warnings:#?}"
        );
    }
    // s11 names an unknown recording; s12 a piped one (reported at its wav.scp line).
    assert!(warnings.iter().any(|w| w
        .contains("1 segments name recordings that are not in wav.scp")
        && w.contains("s11")));
    assert!(warnings
        .iter()
        .any(|w| w.contains("wav.scp:3:") && w.contains("piped")));
    // s4 has no transcript; the whole-recording id r1 in text is not a segment.
    assert!(warnings
        .iter()
        .any(|w| w.contains("no transcript") && w.contains("s4")));
    assert!(warnings
        .iter()
        .any(|w| w.contains("not listed") && w.contains("1 utterances") && w.contains("r1")));

    // Loading cuts each span: the features of a segment are exactly the features of
    // the recording's samples in it (Kaldi's truncation to whole samples).
    let all = lasr_features::load(&rec).unwrap().samples;
    let mut fbank = Fbank::new(&FeatureConfig::default()).unwrap();
    let (set, skipped) =
        Dataset::load(c.entries.clone(), &FrontEndConfig::default(), &|| {}).unwrap();
    let got = |id: &str| {
        set.utterances
            .iter()
            .find(|u| u.id == id)
            .unwrap_or_else(|| panic!("{id} missing"))
            .feats
            .clone()
    };
    assert_eq!(got("s1"), fbank.compute(&all[16000..32000]).unwrap());
    // Ends 0.3 s after the recording: within Kaldi's 0.5 s overshoot, cut at the end.
    assert_eq!(got("s2"), fbank.compute(&all[40000..64000]).unwrap());
    // -1: to the end.
    assert_eq!(got("s3"), fbank.compute(&all[48000..64000]).unwrap());
    // s1 is the 700 Hz second: its strongest mel bin is the 700 Hz tone's.
    let peak = |f: &ndarray::Array2<f32>| {
        let mean = f.mean_axis(ndarray::Axis(0)).unwrap();
        (0..mean.len())
            .max_by(|&a, &b| mean[a].total_cmp(&mean[b]))
            .unwrap()
    };
    let reference = fbank.compute(&tone(700.0, 1.0, 16000)).unwrap();
    assert_eq!(peak(&got("s1")), peak(&reference));
    // s5 ends 1 s after the recording: skipped, naming the recording and segment.
    // s6 starts after the end: skipped.
    assert_eq!(set.len(), 3);
    let reasons: Vec<(String, String)> = skipped
        .iter()
        .map(|s| (s.entry.id.clone(), s.error.to_string()))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[0].0, "s5");
    assert!(
        reasons[0].1.contains("rec.wav") && reasons[0].1.contains("segment s5: ends at 5.000 s"),
        "{reasons:?}"
    );
    assert!(matches!(skipped[0].error, Error::Segment { .. }));
    assert_eq!(reasons[1].0, "s6");
    assert!(reasons[1].1.contains("starts at 4.200 s"), "{reasons:?}");

    // Entry::load_audio cuts the same span.
    let a = c.entries[0].load_audio().unwrap();
    assert_eq!(a.samples, all[16000..32000]);
}

#[test]
fn a_bad_recording_skips_each_of_its_segments_with_the_file_named() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = tmp.path().join("bad.wav");
    std::fs::write(&rec, b"RIFF but not really a wave file").unwrap();
    let good = tmp.path().join("good.wav");
    write_tone(&good, 1, 1.0);
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("wav.scp"),
        format!("bad {}\ngood {}\n", rec.display(), good.display()),
    )
    .unwrap();
    std::fs::write(
        data.join("segments"),
        "x1 bad 0 1\nx2 bad 1 2\ny good 0 -1\n",
    )
    .unwrap();
    std::fs::write(data.join("text"), "x1 A\nx2 B\ny C\n").unwrap();
    let c = corpus(&data).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let (set, skipped) = Dataset::load(c.entries, &FrontEndConfig::default(), &|| {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(calls.into_inner(), 3, "one progress tick per entry");
    assert_eq!(set.len(), 1);
    assert_eq!(skipped.len(), 2);
    for s in &skipped {
        let Error::Features(e) = &s.error else {
            panic!("{}", s.error)
        };
        assert!(e.audio_kind().is_some(), "typed kind kept: {e}");
        assert!(e.to_string().contains("bad.wav"), "{e}");
    }
}
