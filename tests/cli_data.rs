//! End-to-end tests of the data options of the `lasr` binary: Kaldi data directories
//! for `train` and `bench`, `--feature-cache` and `--speed-perturb`.

use std::path::Path;
use std::process::Output;

mod common;
use common::{lasr, text, write_tone};

/// A Kaldi data directory of four tones (absolute paths) and one piped line.
fn kaldi_dir(root: &Path) -> std::path::PathBuf {
    let audio = root.join("audio");
    std::fs::create_dir_all(&audio).unwrap();
    let data = root.join("data/train");
    std::fs::create_dir_all(&data).unwrap();
    let (mut scp, mut txt) = (String::new(), String::new());
    for u in 0..4 {
        let (f0, words) = if u % 2 == 0 {
            (150.0, "HI")
        } else {
            (1700.0, "YO")
        };
        let wav = audio.join(format!("{u}.wav"));
        write_tone(&wav, f0, 8000 + 800 * u);
        scp.push_str(&format!("utt{u} {}\n", wav.display()));
        txt.push_str(&format!("utt{u} {words}\n"));
    }
    scp.push_str("utt9 sox in.flac -t wav - |\n");
    txt.push_str("utt9 PIPED\n");
    std::fs::write(data.join("wav.scp"), scp).unwrap();
    std::fs::write(data.join("text"), txt).unwrap();
    data
}

fn train(data: &Path, out: &Path, cfg: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--train",
        data.to_str().unwrap(),
        "--valid",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--model-config",
        cfg.to_str().unwrap(),
        "--epochs",
        "1",
        "--json",
    ];
    args.extend_from_slice(extra);
    lasr(&args)
}

#[test]
fn train_reads_a_kaldi_directory_caches_features_and_perturbs_only_the_training_set() {
    let dir = tempfile::tempdir().unwrap();
    let data = kaldi_dir(dir.path());
    let cfg = dir.path().join("model.json");
    std::fs::write(&cfg, r#"{"listener_hidden": 8, "pyramid_layers": 1, "embedding_dim": 4, "speller_hidden": 8, "attention_dim": 8}"#).unwrap();
    let cache = dir.path().join("cache");
    let cache_s = cache.to_str().unwrap();
    let flags = ["--feature-cache", cache_s, "--speed-perturb", "0.9,1.0,1.1"];
    let run = train(&data, &dir.path().join("run1"), &cfg, &flags);
    let err = text(&run.stderr);
    assert!(run.status.success(), "{err}");
    // The piped line is reported with file and line, and skipped.
    let scp = data.join("wav.scp").display().to_string();
    assert!(
        err.contains(&format!(
            "skipped: {scp}:5: utt9: piped commands are not supported"
        )),
        "{err}"
    );
    // Three copies of the four training utterances, all computed; validation is the
    // four originals, already in the cache.
    assert!(
        err.contains("train: 12 utterances") && err.contains("0 from the cache, 12 computed"),
        "{err}"
    );
    assert!(
        err.contains("valid: 4 utterances") && err.contains("4 from the cache, 0 computed"),
        "{err}"
    );
    // The model records how many utterances it was trained on.
    let model = std::fs::read(dir.path().join("run1/model.safetensors")).unwrap();
    let header = String::from_utf8_lossy(&model[..model.len().min(1 << 16)]).into_owned();
    assert!(
        header.contains(r#"\"train_utterances\":12"#),
        "model info lacks train_utterances 12"
    );

    // Second start: everything comes from the cache.
    let run = train(&data, &dir.path().join("run2"), &cfg, &flags);
    let err = text(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(err.contains("12 from the cache, 0 computed"), "{err}");

    // A damaged cache entry is reported, recomputed, and the run goes on.
    let sub = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let victim = std::fs::read_dir(&sub)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "feats"))
        .unwrap();
    std::fs::write(&victim, b"garbage").unwrap();
    let run = train(&data, &dir.path().join("run3"), &cfg, &flags);
    let err = text(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(
        err.contains(&format!("feature cache: {}: corrupt", victim.display())),
        "{err}"
    );

    // A bad factor is refused before anything is computed.
    let run = train(
        &data,
        &dir.path().join("run4"),
        &cfg,
        &["--speed-perturb", "0"],
    );
    assert!(!run.status.success());
    assert!(
        text(&run.stderr).contains("speed perturbation factor 0"),
        "{}",
        text(&run.stderr)
    );
}

#[test]
fn bench_reads_a_kaldi_directory_and_cuts_its_segments() {
    let dir = tempfile::tempdir().unwrap();
    let data = kaldi_dir(dir.path());
    let out = lasr(&["bench", data.to_str().unwrap(), "--only", "ctc", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("piped"), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["utterances"], 4, "{v}");

    std::fs::write(data.join("segments"), "s1 utt0 0 0.3\n").unwrap();
    std::fs::write(data.join("text"), "s1 HI\n").unwrap();
    let out = lasr(&["bench", data.to_str().unwrap(), "--only", "ctc", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["utterances"], 1, "{v}");
    // 0.3 s cut out of the recording, not the whole of it.
    let hours = v["audio_hours"].as_f64().unwrap();
    assert!((hours * 3600.0 - 0.3).abs() < 0.01, "{v}");
}
