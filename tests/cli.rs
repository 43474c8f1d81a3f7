//! End-to-end tests of the `lasr` binary: what a user types, what they get back.

use std::path::{Path, PathBuf};

mod common;
use common::{json_stdout, lasr, refused, text, write_tone};

use lasr_features::{load, Fbank, FeatureConfig, FrontEndConfig};
use ndarray::Array2;
use ndarray_npy::read_npy;

fn write_wav(path: &Path, seconds: f64, rate: u32, seed: u64) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    for i in 0..(seconds * f64::from(rate)) as usize {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let noise = ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 2000.0;
        let t = i as f64 / f64::from(rate);
        let v: f64 = (1..6)
            .map(|h| 3000.0 / h as f64 * (2.0 * std::f64::consts::PI * 150.0 * h as f64 * t).sin())
            .sum();
        w.write_sample((v + noise) as i16).unwrap();
    }
    w.finalize().unwrap();
}

/// The names of the settings a `bench --json` report ran, in order.
fn setting_names(v: &serde_json::Value) -> Vec<String> {
    let settings = v["settings"].as_array().unwrap().iter();
    settings
        .map(|s| s["name"].as_str().unwrap().into())
        .collect()
}

/// Runs `lasr ensemble MODELS... -o OUT` (equal weights, the first model's storage).
fn ensemble(models: &[&Path], out: &Path) -> std::process::Output {
    ensemble_with(models, &[], out)
}

/// Runs `lasr ensemble MODELS... FLAGS... -o OUT`.
fn ensemble_with(models: &[&Path], flags: &[&str], out: &Path) -> std::process::Output {
    let mut args = vec!["ensemble"];
    args.extend(models.iter().map(|m| m.to_str().unwrap()));
    args.extend(flags);
    args.extend(["-o", out.to_str().unwrap()]);
    lasr(&args)
}

/// Checks an n-best list re-ranked by one more model against the list before it:
/// each alternative's score is its old score plus `weight` times the model's
/// log-probability `field` (negative), and the list is sorted by the new scores.
fn assert_reranked(
    plain: &[serde_json::Value],
    rescored: &[serde_json::Value],
    field: &str,
    weight: f64,
) {
    assert_eq!(rescored.len(), plain.len());
    for (i, alt) in rescored.iter().enumerate() {
        let lp = alt[field].as_f64().unwrap();
        assert!(lp < 0.0, "{alt}");
        let before = plain.iter().find(|p| p["text"] == alt["text"]).unwrap();
        let want = before["score"].as_f64().unwrap() + weight * lp;
        assert!(
            (alt["score"].as_f64().unwrap() - want).abs() < 1e-9,
            "{alt}"
        );
        if i > 0 {
            assert!(rescored[i - 1]["score"].as_f64() >= alt["score"].as_f64());
        }
    }
}

/// Text in LibriSpeech's form (an id first), "hi" far more often than "yo", for the
/// LSTM language model tests: (training, held-out) files in `dir`.
fn hi_yo_text(dir: &Path) -> (PathBuf, PathBuf) {
    let train = dir.join("train.txt");
    let valid = dir.join("valid.txt");
    let mut t = String::new();
    for i in 0..60 {
        t += &format!("{i}-0-0 {}\n", if i % 10 == 0 { "YO" } else { "HI" });
    }
    std::fs::write(&train, &t).unwrap();
    std::fs::write(&valid, "1-0-0 HI\n2-0-0 HI\n3-0-0 YO\n").unwrap();
    (train, valid)
}

/// `lasr rnnlm` on `train` held out on `valid` (as `hi_yo_text` makes them): a model
/// 16 wide for `epochs` epochs, written to `out`, with `extra` flags.
fn tiny_rnnlm(
    train: &Path,
    valid: &Path,
    epochs: &str,
    out: &Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "rnnlm",
        train.to_str().unwrap(),
        "--strip-ids",
        "--valid",
        valid.to_str().unwrap(),
        "--hidden",
        "16",
        "--embedding",
        "8",
        "--epochs",
        epochs,
        "--learning-rate",
        "0.02",
        "--batch-tokens",
        "64",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    lasr(&args)
}

/// `lasr transcribe --json` of `audio` by `model`'s CTC beam of 4 without a character
/// LM, its 4 best reported, with `extra` flags.
fn ctc_nbest(model: &Path, audio: &Path, extra: &[&str]) -> std::process::Output {
    ctc_nbest_lm(model, audio, &["--no-lm"], extra)
}

/// [`ctc_nbest`] with the character-LM flags `lm` in place of `--no-lm`.
fn ctc_nbest_lm(model: &Path, audio: &Path, lm: &[&str], extra: &[&str]) -> std::process::Output {
    let mut args = vec!["transcribe", "-m", model.to_str().unwrap()];
    args.extend(lm);
    args.extend(["--ctc-only", "--beam", "4", "--json", "--nbest", "4"]);
    args.extend(extra);
    args.push(audio.to_str().unwrap());
    lasr(&args)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The committed tiny model and its two recordings: (tiny.safetensors, low.wav,
/// high.wav), which it reads as "hi" and "yo".
fn tiny_fixtures() -> (PathBuf, PathBuf, PathBuf) {
    let f = repo().join("tests/fixtures");
    (
        f.join("tiny.safetensors"),
        f.join("low.wav"),
        f.join("high.wav"),
    )
}

#[test]
fn features_writes_the_same_npy_the_library_computes() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("a.wav");
    write_wav(&wav, 1.3, 16000, 1);
    let npy = dir.path().join("a.npy");
    let png = dir.path().join("a.png");
    let out = lasr(&[
        "features",
        wav.to_str().unwrap(),
        "-o",
        npy.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got: Array2<f32> = read_npy(&npy).unwrap();
    let want = Fbank::new(&FeatureConfig::default())
        .unwrap()
        .compute(&load(&wav).unwrap().samples)
        .unwrap();
    assert_eq!(got, want);
    let png_bytes = std::fs::read(&png).unwrap();
    assert_eq!(&png_bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(text(&out.stdout).contains("a.wav"));
}

#[test]
fn json_output_is_one_parseable_object_per_file_and_errors_are_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    write_wav(&dir.path().join("one.wav"), 0.5, 16000, 2);
    write_wav(&dir.path().join("two.wav"), 0.7, 8000, 3);
    std::fs::write(dir.path().join("broken.wav"), b"RIFF\x10\0\0\0WAVEfmt ").unwrap();
    let outdir = dir.path().join("feats");
    let out = lasr(&[
        "features",
        dir.path().to_str().unwrap(),
        "--out-dir",
        outdir.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed file makes the exit status non-zero"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("broken.wav") && stderr.contains("truncated"),
        "{stderr}"
    );
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let by_name = |n: &str| {
        lines
            .iter()
            .find(|v| v["file"].as_str().unwrap().ends_with(n))
            .unwrap()
    };
    assert!(by_name("broken.wav")["error"]
        .as_str()
        .unwrap()
        .contains("broken.wav"));
    assert_eq!(by_name("one.wav")["frames"], 48);
    assert_eq!(by_name("two.wav")["sample_rate"], 8000);
    // 0.7 s at 8 kHz is 11200 samples at 16 kHz: 1 + (11200 - 400) / 160 = 68 frames.
    assert_eq!(by_name("two.wav")["frames"], 68);
    let two: Array2<f32> = read_npy(outdir.join("two.npy")).unwrap();
    assert_eq!(two.dim(), (68, 80));
    assert!(!outdir.join("broken.npy").exists());
}

#[test]
fn cmvn_config_normalises_the_corpus_it_was_computed_on() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(corpus.join("spk1")).unwrap();
    write_wav(&corpus.join("spk1/u1.wav"), 1.0, 16000, 4);
    write_wav(&corpus.join("spk1/u2.wav"), 2.0, 16000, 5);
    std::fs::write(corpus.join("spk1/bad.flac"), b"fLaC\0\0").unwrap();
    let cfg = dir.path().join("frontend.json");
    let out = lasr(&[
        "cmvn",
        corpus.to_str().unwrap(),
        "-o",
        cfg.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("bad.flac"));
    let summary: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(summary["files"], 2);
    assert_eq!(summary["skipped"], 1);
    let config: FrontEndConfig =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    assert_eq!(config.cmvn.as_ref().unwrap().frames, 98 + 198);
    // Features of the whole corpus under that config: zero mean, unit variance per bin.
    let outdir = dir.path().join("feats");
    let out = lasr(&[
        "features",
        corpus.join("spk1/u1.wav").to_str().unwrap(),
        corpus.join("spk1/u2.wav").to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--out-dir",
        outdir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let a: Array2<f32> = read_npy(outdir.join("u1.npy")).unwrap();
    let b: Array2<f32> = read_npy(outdir.join("u2.npy")).unwrap();
    let all = ndarray::concatenate(ndarray::Axis(0), &[a.view(), b.view()]).unwrap();
    for col in all.columns() {
        let mean = col.mean().unwrap();
        let var = col.mapv(|v| (v - mean).powi(2)).mean().unwrap();
        assert!(
            mean.abs() < 1e-3 && (var - 1.0).abs() < 1e-2,
            "mean {mean} var {var}"
        );
    }
}

#[test]
fn usage_errors_say_what_to_do() {
    let out = lasr(&["features"]);
    let err = refused(&out);
    assert!(err.contains("<INPUT>"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    write_wav(&dir.path().join("x.wav"), 0.2, 16000, 6);
    write_wav(&dir.path().join("y.wav"), 0.2, 16000, 7);
    let out = lasr(&[
        "features",
        dir.path().to_str().unwrap(),
        "-o",
        "/tmp/never.npy",
    ]);
    let err = refused(&out);
    assert!(err.contains("--out-dir"), "{err}");
    let bad_cfg = dir.path().join("cfg.json");
    std::fs::write(
        &bad_cfg,
        r#"{"version": 1, "features": {"num_mel_bins": 0}, "cmvn": null}"#,
    )
    .unwrap();
    let out = lasr(&[
        "features",
        dir.path().join("x.wav").to_str().unwrap(),
        "--config",
        bad_cfg.to_str().unwrap(),
    ]);
    let err = refused(&out);
    assert!(
        err.contains("cfg.json") && err.contains("num_mel_bins"),
        "{err}"
    );
    let out = lasr(&["features", "/no/such/file.wav"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/no/such/file.wav"));
}

#[test]
fn default_config_printed_by_the_tool_reads_back_as_the_default() {
    let out = lasr(&["config"]);
    assert!(out.status.success());
    let c: FrontEndConfig = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c, FrontEndConfig::default());
}

#[test]
fn the_shipped_sample_decodes() {
    let out = lasr(&[
        "features",
        repo().join("assets/sample.wav").to_str().unwrap(),
        "--json",
    ]);
    let v = json_stdout(&out);
    assert_eq!(v["dim"], 80);
    assert!(v["frames"].as_u64().unwrap() > 100);
}

#[test]
fn spec_augment_flag_masks_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("s.wav");
    write_wav(&wav, 3.0, 16000, 8);
    let run = |name: &str, extra: &[&str]| -> Array2<f32> {
        let npy = dir.path().join(name);
        let mut args = vec![
            "features",
            wav.to_str().unwrap(),
            "-o",
            npy.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = lasr(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        read_npy(&npy).unwrap()
    };
    let plain = run("plain.npy", &[]);
    let a = run("a.npy", &["--spec-augment", "5"]);
    let b = run("b.npy", &["--spec-augment", "5"]);
    assert_eq!(a, b);
    assert_ne!(a, plain);
    let changed = a.iter().zip(&plain).filter(|(x, y)| x != y).count();
    assert!(
        a.iter().zip(&plain).all(|(x, y)| x == y || *x == 0.0),
        "masks write the mask value 0"
    );
    assert!(changed > 0);
}

/// Trains a tiny model to tell two synthetic "words" apart, saves it as a model file,
/// and checks that `lasr transcribe` spells them: audio -> features -> listener ->
/// beam search -> text, end to end.
/// Trains the tiny model of these tests in `dir`: two 0.6 s tones ("low.wav" says
/// "hi", "high.wav" says "yo"), a 2,000-parameter LAS with a CTC head, 500 Adam steps.
/// Returns (model, low, high).
fn make_tiny(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use lasr_decode::Vocab;
    use lasr_features::{CmvnStats, FrontEnd};
    use lasr_model::{Batch, Las, ModelConfig, ModelFile};
    use lasr_nn::{clip_grad_norm, Adam, Module};
    use rand::SeedableRng;

    let a = dir.join("low.wav");
    let b = dir.join("high.wav");
    // Two different spectra: a low harmonic tone and a high one.
    write_tone(&a, 150.0, 9600);
    write_tone(&b, 1700.0, 9600);
    let mut front_cfg = FrontEndConfig::default();
    let mut raw = FrontEnd::new(front_cfg.clone()).unwrap();
    let fa = raw.file_features(&a).unwrap();
    let fb = raw.file_features(&b).unwrap();
    let mut stats = CmvnStats::new(80);
    stats.accumulate(fa.view()).unwrap();
    stats.accumulate(fb.view()).unwrap();
    front_cfg.cmvn = Some(stats.finish().unwrap());
    let mut front = FrontEnd::new(front_cfg.clone()).unwrap();
    let (fa, fb) = (
        front.file_features(&a).unwrap(),
        front.file_features(&b).unwrap(),
    );
    let vocab = Vocab::librispeech();
    let config = ModelConfig {
        listener_hidden: 16,
        pyramid_layers: 1,
        embedding_dim: 8,
        speller_hidden: 32,
        attention_dim: 16,
        ctc_weight: 0.5,
        ..ModelConfig::default()
    };
    let mut las = Las::new(config, &mut rand_chacha::ChaCha8Rng::seed_from_u64(3)).unwrap();
    let frames = fa.nrows();
    let mut feats = ndarray::Array3::zeros((frames, 2, 80));
    feats.index_axis_mut(ndarray::Axis(1), 0).assign(&fa);
    feats.index_axis_mut(ndarray::Axis(1), 1).assign(&fb);
    let batch = Batch {
        feats,
        lengths: vec![frames, frames],
        targets: vec![vocab.encode("hi"), vocab.encode("yo")],
        seeds: None,
    };
    let mut opt = Adam::new(&las, 0.01);
    // The CTC loss drops off a cliff between steps 300 and 500 (0.43, 0.22, 0.013 in
    // the fourteenth session), so 400 steps passed or failed on the rounding of
    // the products; 500 leaves margin.
    for _ in 0..500 {
        let mut grads = las.zeros_like();
        las.train_step(&batch, &mut grads).unwrap();
        clip_grad_norm(&mut grads, 5.0).unwrap();
        opt.step(&mut las, &grads);
    }
    let (stats, _) = las.forward(&batch).unwrap();
    assert!(stats.mean() < 0.05 && stats.ctc_mean() < 0.2, "{stats:?}");
    let model_path = dir.join("tiny.safetensors");
    ModelFile {
        info: serde_json::json!({"made_by": "tests/cli.rs"}),
        ..ModelFile::new(las, front_cfg, vocab)
    }
    .save(&model_path)
    .unwrap();
    (model_path, a, b)
}

/// Regenerates the committed fixtures: `cargo test --release --test cli -- --ignored
/// make_tiny_fixture`. Run it only when the model file format changes on purpose.
#[test]
#[ignore]
fn make_tiny_fixture() {
    let dir = repo().join("tests/fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let (model, _, _) = make_tiny(&dir);
    std::fs::rename(model, dir.join("tiny.safetensors")).unwrap();
}

/// A model file committed under tests/fixtures (made by `make_tiny_fixture`) still
/// loads and transcribes its fixture audio: model files stay readable across changes.
#[test]
fn the_committed_tiny_checkpoint_transcribes_its_fixtures() {
    let dir = repo().join("tests/fixtures");
    let model = dir.join("tiny.safetensors");
    let out = lasr(&[
        "transcribe",
        "-m",
        model.to_str().unwrap(),
        dir.join("low.wav").to_str().unwrap(),
        dir.join("high.wav").to_str().unwrap(),
        "--beam",
        "1",
        "--no-lm",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines.iter().any(|l| l.ends_with("low.wav\thi")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with("high.wav\tyo")),
        "{lines:?}"
    );
    // Every run below transcribes high.wav with this model and some flags.
    let high = dir.join("high.wav");
    let on_high = |extra: &[&str]| {
        let mut args = vec!["transcribe", "-m", model.to_str().unwrap()];
        args.extend(extra);
        args.push(high.to_str().unwrap());
        lasr(&args)
    };
    let out = on_high(&["--ctc-only"]);
    assert!(
        text(&out.stdout).ends_with("\tyo\n"),
        "{}",
        text(&out.stdout)
    );
    // Joint CTC/attention decoding agrees on a clear answer, and reports the CTC score
    // it ranked by.
    let out = on_high(&[
        "--ctc-weight",
        "0.5",
        "--joint",
        "--beam",
        "3",
        "--no-lm",
        "--json",
    ]);
    let v = json_stdout(&out);
    assert_eq!(v["text"], "yo", "{v}");
    let best = &v["nbest"][0];
    let (lp, ctc) = (
        best["log_prob"].as_f64().unwrap(),
        best["ctc_log_prob"].as_f64().unwrap(),
    );
    assert!(ctc < 0.0 && lp < 0.0, "{v}");
    // Attention rescoring of the CTC beam's n-best: each alternative's score gains W
    // times the attention decoder's log-probability of its text, which is what the
    // attention beam search itself gives that text.
    let decode = |extra: &[&str]| {
        let mut args = vec!["--no-lm", "--json", "--nbest", "4"];
        args.extend(extra);
        let out = on_high(&args);
        let v = json_stdout(&out);
        v["nbest"].as_array().unwrap().clone()
    };
    let plain = decode(&["--ctc-only", "--beam", "4"]);
    let rescored = decode(&[
        "--ctc-only",
        "--beam",
        "4",
        "--rescore",
        "0.5",
        "--rescore-nbest",
        "4",
    ]);
    let attention = decode(&["--attention", "--beam", "4", "--ctc-weight", "0"]);
    assert_reranked(&plain, &rescored, "attention_log_prob", 0.5);
    assert!(rescored.len() > 1, "{rescored:?}");
    let mut compared = 0;
    for alt in &rescored {
        let att = alt["attention_log_prob"].as_f64().unwrap();
        if let Some(a) = attention.iter().find(|a| a["text"] == alt["text"]) {
            let lp = a["log_prob"].as_f64().unwrap();
            assert!((lp - att).abs() < 1e-4, "{a} vs {alt}");
            compared += 1;
        }
    }
    assert!(compared > 0, "{attention:?}");
    assert!(plain.iter().all(|p| p.get("attention_log_prob").is_none()));
    // Only the rescored hypotheses are kept: the others' scores are on another scale.
    let top2 = decode(&[
        "--ctc-only",
        "--beam",
        "4",
        "--rescore",
        "0.5",
        "--rescore-nbest",
        "2",
    ]);
    assert_eq!(top2.len(), 2, "{top2:?}");
    let err = refused(&on_high(&["--attention", "--rescore", "1"]));
    assert!(err.contains("ctc_only"), "{err}");
    // A model file that recommends rescoring (as the built-in one does) rescores by
    // default, and still decodes with the attention searches, which cannot rescore.
    let tmp_dir = tempfile::tempdir().unwrap();
    // The tiny model packed with the recommended decoding `json`, as NAME.safetensors.
    let pack_with = |name: &str, json: &str| {
        let recommends = tmp_dir.path().join(format!("{name}.json"));
        std::fs::write(&recommends, json).unwrap();
        let packed = tmp_dir.path().join(format!("{name}.safetensors"));
        let out = lasr(&[
            "pack",
            model.to_str().unwrap(),
            "--decode",
            recommends.to_str().unwrap(),
            "-o",
            packed.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        packed
    };
    let packed = pack_with(
        "rescoring",
        r#"{"ctc_only": true, "search": {"beam_size": 4}, "attention_rescore_weight": 0.5, "rescore_nbest": 4}"#,
    );
    let on_packed = |extra: &[&str]| {
        let mut args = vec!["transcribe", "-m", packed.to_str().unwrap(), "--no-lm"];
        args.extend(extra);
        args.push(high.to_str().unwrap());
        lasr(&args)
    };
    let out = on_packed(&["--json", "--nbest", "4"]);
    let v = json_stdout(&out);
    assert_eq!(
        v["nbest"],
        serde_json::Value::Array(rescored.clone()),
        "{v}"
    );
    for flags in [&["--attention"][..], &["--joint", "--beam", "2"][..]] {
        let out = on_packed(flags);
        assert!(out.status.success(), "{flags:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).ends_with("\tyo\n"),
            "{}",
            text(&out.stdout)
        );
    }
    // Nor does its CTC beam width: a CTC best path (width 1) recommended, --attention
    // searches with the attention default (8), so it has more than one alternative.
    let packed1 = pack_with(
        "greedy-ctc",
        r#"{"ctc_only": true, "search": {"beam_size": 1}}"#,
    );
    let alternatives = |extra: &[&str]| {
        let mut args = vec!["transcribe", "-m", packed1.to_str().unwrap(), "--no-lm"];
        args.extend(["--json", "--nbest", "8"]);
        args.extend(extra);
        args.push(high.to_str().unwrap());
        let out = lasr(&args);
        assert!(out.status.success(), "{extra:?}: {}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
        v["nbest"].as_array().unwrap().len()
    };
    assert_eq!(alternatives(&[]), 1);
    assert_eq!(alternatives(&["--attention", "--beam", "1"]), 1);
    assert!(alternatives(&["--attention"]) > 1);
    assert!(alternatives(&["--joint"]) > 1);
    // A model file may recommend a weight format: decoding is then that format's,
    // which differs from f32 in the scores, and --weights f32 brings the file's
    // weights back.
    let packed8 = pack_with(
        "int8",
        r#"{"ctc_only": true, "search": {"beam_size": 4}, "weights": "int8"}"#,
    );
    let info: serde_json::Value =
        serde_json::from_slice(&lasr(&["info", packed8.to_str().unwrap()]).stdout).unwrap();
    assert_eq!(info["decode"]["weights"], "int8", "{info}");
    let scores = |m: &Path, extra: &[&str]| {
        let mut args = vec!["transcribe", "-m", m.to_str().unwrap(), "--no-lm", "--json"];
        args.extend(["--nbest", "4"]);
        args.extend(extra);
        args.push(high.to_str().unwrap());
        let out = lasr(&args);
        assert!(out.status.success(), "{extra:?}: {}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
        v["nbest"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["score"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    let plain = ["--ctc-only", "--beam", "4"];
    let recommended = scores(&packed8, &[]);
    assert_eq!(
        recommended,
        scores(&model, &[&plain[..], &["--weights", "int8"]].concat())
    );
    let f32_scores = scores(&model, &plain);
    assert_ne!(recommended, f32_scores);
    assert_eq!(scores(&packed8, &["--weights", "f32"]), f32_scores);
    // `bench` makes its weights and its attention settings' width the same way.
    let one = tmp_dir.path().join("one.tsv");
    std::fs::write(&one, format!("{}\tYO\n", high.display())).unwrap();
    let bench = |m: &Path, extra: &[&str]| {
        let mut args = vec!["bench", one.to_str().unwrap(), "-m", m.to_str().unwrap()];
        args.extend(["--no-lm", "--json"]);
        args.extend(extra);
        let out = lasr(&args);
        assert!(out.status.success(), "{extra:?}: {}", text(&out.stderr));
        serde_json::from_str::<serde_json::Value>(text(&out.stdout).trim()).unwrap()
    };
    assert_eq!(bench(&packed8, &["--only", "ctc-beam"])["weights"], "int8");
    let f32_bench = bench(&packed8, &["--only", "ctc-beam", "--weights", "f32"]);
    assert_eq!(f32_bench["weights"], "f32");
    let v = bench(&packed1, &["--only", "greedy,beam"]);
    assert_eq!(setting_names(&v), ["greedy", "beam 8"]);
    let v = bench(&packed1, &["--only", "beam,ctc-beam", "--beam", "3"]);
    assert_eq!(setting_names(&v), ["beam 3", "CTC beam 3"]);
    let err = refused(&on_packed(&["--attention", "--rescore", "0.5"]));
    assert!(err.contains("ctc_only"), "{err}");
    let err = refused(&on_packed(&["--attention", "--rescore-nbest", "2"]));
    assert!(err.contains("--rescore-nbest re-ranks the CTC"), "{err}");
    // Word-model settings without a word model are refused, not ignored.
    for flags in [
        &["--word-lm-weight", "0.5"][..],
        &["--word-bonus", "1"][..],
        &["--oov-penalty", "2"][..],
    ] {
        let mut args = vec!["--ctc-only"];
        args.extend(flags);
        let err = refused(&on_high(&args));
        assert!(
            err.contains(flags[0]) && err.contains("give --word-lm FILE"),
            "{err}"
        );
    }
    // And the reason is named when a flag turned the word model off.
    let err = refused(&on_high(&[
        "--ctc-only",
        "--no-word-lm",
        "--word-bonus",
        "1",
    ]));
    assert!(err.contains("--no-word-lm turned"), "{err}");
    let err = refused(&on_high(&["--ctc-only", "--rescore-nbest", "3"]));
    assert!(err.contains("--rescore or --rnnlm re-rank"), "{err}");
    // Rescoring takes the CTC best path through the prefix search, so the one
    // hypothesis still gets its attention score.
    let best_path = decode(&["--ctc-only", "--beam", "1", "--rescore", "1"]);
    assert_eq!(best_path.len(), 1);
    assert!(best_path[0]["attention_log_prob"].as_f64().unwrap() < 0.0);
    // A word list and bfloat16 weights leave a clear answer as it is.
    let tmp = tempfile::tempdir().unwrap();
    let words = tmp.path().join("words.txt");
    std::fs::write(&words, "hi\nyo\n").unwrap();
    let with_list = |extra: &[&str]| {
        let list = [
            "--lexicon",
            words.to_str().unwrap(),
            "--oov-penalty",
            "5",
            "--weights",
            "bf16",
        ];
        on_high(&[&list[..], extra].concat())
    };
    let out = with_list(&["--ctc-only"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).ends_with("\tyo\n"),
        "{}",
        text(&out.stdout)
    );
    // The list constrains CTC search only: asking it of the attention decoder is an error.
    let err = refused(&with_list(&[]));
    assert!(err.contains("--ctc-only"), "{err}");

    // A word model built by `lasr lm --words` scores the CTC search's words.
    let corpus = tmp.path().join("words-text.txt");
    std::fs::write(&corpus, "u1 HI\nu2 YO\nu3 HI YO\n").unwrap();
    let wlm = tmp.path().join("words.bin");
    let built = lasr(&[
        "lm",
        corpus.to_str().unwrap(),
        "--strip-ids",
        "--words",
        "--eval",
        corpus.to_str().unwrap(),
        "-o",
        wlm.to_str().unwrap(),
        "--json",
    ]);
    assert!(built.status.success(), "{}", text(&built.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&built.stdout).trim()).unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["words"].as_u64(), v["order"].as_u64()),
        (Some("word"), Some(2), Some(3)),
        "{v}"
    );
    let with_words = |lm: &Path, extra: &[&str]| {
        let model = [
            "--word-lm",
            lm.to_str().unwrap(),
            "--word-lm-weight",
            "0.5",
            "--json",
        ];
        on_high(&[&model[..], extra].concat())
    };
    let out = with_words(&wlm, &["--ctc-only", "--beam", "4"]);
    let v = json_stdout(&out);
    assert_eq!(v["text"], "yo", "{v}");
    let err = refused(&with_words(&wlm, &[]));
    assert!(err.contains("--ctc-only"), "{err}");
    // A character model given as a word model says what it is, naming the file.
    let chars = tmp.path().join("chars.bin");
    let built = lasr(&[
        "lm",
        corpus.to_str().unwrap(),
        "--strip-ids",
        "-o",
        chars.to_str().unwrap(),
    ]);
    assert!(built.status.success(), "{}", text(&built.stderr));
    let err = refused(&with_words(&chars, &["--ctc-only"]));
    assert!(
        err.contains("chars.bin") && err.contains("a lasr character language model"),
        "{err}"
    );
    // In `bench`, the word model goes with the char LM into the full CTC setting; the
    // plain "CTC beam" setting then has neither (the CTC search alone). Without a
    // char LM, the plain one is the full setting and keeps the word model.
    let manifest = tmp.path().join("one.tsv");
    std::fs::write(&manifest, format!("{}\tYO\n", high.display())).unwrap();
    let bench_names = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            manifest.to_str().unwrap(),
            "-m",
            model.to_str().unwrap(),
            "--word-lm",
            wlm.to_str().unwrap(),
            "--beam",
            "4",
            "--json",
        ];
        args.extend(extra);
        let out = lasr(&args);
        let v = json_stdout(&out);
        v["settings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let names = bench_names(&[
        "--lm",
        chars.to_str().unwrap(),
        "--only",
        "ctc-beam,ctc-beam+lm",
    ]);
    assert_eq!(names[0], "CTC beam 4", "{names:?}");
    assert!(names[1].contains("word LM"), "{names:?}");
    let names = bench_names(&["--no-lm", "--only", "ctc-beam"]);
    assert!(names[0].starts_with("CTC beam 4 + word LM"), "{names:?}");
}

/// A model whose config says it trained with CTC alone (`ctc_weight` 1) decodes with
/// CTC by default, and every use of its (untrained) speller is refused or left out.
#[test]
fn a_ctc_only_model_decodes_with_ctc_and_keeps_its_speller_out() {
    let dir = repo().join("tests/fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let mut file = lasr_model::ModelFile::load(&dir.join("tiny.safetensors")).unwrap();
    file.las.config.ctc_weight = 1.0;
    let model = tmp.path().join("ctc-only.safetensors");
    file.save(&model).unwrap();
    let high = dir.join("high.wav");
    let run = |extra: &[&str]| {
        let mut args = vec!["transcribe", "-m", model.to_str().unwrap(), "--no-lm"];
        args.extend(extra);
        args.push(high.to_str().unwrap());
        lasr(&args)
    };
    let out = run(&["--json"]);
    let v = json_stdout(&out);
    assert_eq!(v["text"], "yo", "{v}");
    assert!(
        v["nbest"][0]["ctc_log_prob"].is_number(),
        "a CTC search: {v}"
    );
    let plots = tmp.path().join("plots");
    // With --json a file that failed at its plot would print its error on stdout.
    let plot = ["--plot-attention", plots.to_str().unwrap(), "--json"];
    for flags in [&["--attention"][..], &["--rescore", "0.5"], &plot] {
        let out = run(flags);
        assert!(!out.status.success(), "{flags:?}: {}", text(&out.stdout));
        // Refused before decoding anything.
        assert!(
            text(&out.stdout).is_empty(),
            "{flags:?}: {}",
            text(&out.stdout)
        );
        assert!(
            text(&out.stderr).contains("trained with CTC alone"),
            "{flags:?}: {}",
            text(&out.stderr)
        );
    }
    assert!(!plots.exists(), "nothing made for a refused plot");
    let one = tmp.path().join("one.tsv");
    std::fs::write(&one, format!("{}\tYO\n", high.display())).unwrap();
    let out = lasr(&[
        "bench",
        one.to_str().unwrap(),
        "-m",
        model.to_str().unwrap(),
        "--no-lm",
        "--beam",
        "4",
        "--json",
    ]);
    let v = json_stdout(&out);
    assert_eq!(setting_names(&v), ["CTC best path", "CTC beam 4"], "{v}");
    let out = lasr(&[
        "bench",
        one.to_str().unwrap(),
        "-m",
        model.to_str().unwrap(),
        "--no-lm",
        "--rescore",
        "0.5",
    ]);
    let err = refused(&out);
    assert!(err.contains("trained with CTC alone"), "{err}");
    // An ensemble keeps its first model's speller: a CTC-only model first drops the
    // other's trained one, and says so; the other order is quiet.
    let tiny = dir.join("tiny.safetensors");
    let join = |a: &Path, b: &Path, out: &Path| {
        let run = ensemble(&[a, b], out);
        assert!(run.status.success(), "{}", text(&run.stderr));
        text(&run.stderr)
    };
    let joined = tmp.path().join("joined.safetensors");
    let warned = join(&model, &tiny, &joined);
    assert!(
        warned.contains("ctc-only.safetensors was trained with CTC alone")
            && warned.contains("tiny.safetensors has one: put it first"),
        "{warned}"
    );
    // Grown further, its main model is still the CTC-only one; an ensemble cannot go
    // second, so the advice is to rebuild it.
    let warned = join(&joined, &tiny, &tmp.path().join("grown.safetensors"));
    assert!(
        warned.contains("the main model of") && warned.contains("rebuild the ensemble"),
        "{warned}"
    );
    assert!(!join(&tiny, &model, &joined).contains("warning"));
}

#[test]
fn transcribe_spells_what_a_tiny_trained_model_learned() {
    let dir = tempfile::tempdir().unwrap();
    let (model_path, a, b) = make_tiny(dir.path());
    std::fs::write(dir.path().join("broken.wav"), b"RIFF").unwrap();

    let out = lasr(&[
        "transcribe",
        "--model",
        model_path.to_str().unwrap(),
        dir.path().to_str().unwrap(),
        "--json",
        "--beam",
        "4",
        "--nbest",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(1), "the broken file fails the run");
    assert!(text(&out.stderr).contains("broken.wav"));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by = |n: &str| {
        lines
            .iter()
            .find(|v| v["file"].as_str().unwrap().ends_with(n))
            .unwrap()
            .clone()
    };
    for (name, want) in [("low.wav", "hi"), ("high.wav", "yo")] {
        let v = by(name);
        assert_eq!(v["text"], want, "{v}");
        assert_eq!(v["finished"], true);
        let words = v["words"].as_array().unwrap();
        assert_eq!(words.len(), 1);
        let (s, e) = (
            words[0]["start"].as_f64().unwrap(),
            words[0]["end"].as_f64().unwrap(),
        );
        assert!(0.0 <= s && s < e && e <= 0.6 + 1e-6, "{s}..{e}");
        let nbest = v["nbest"].as_array().unwrap();
        assert!(!nbest.is_empty() && nbest.len() <= 3);
        assert_eq!(nbest[0]["text"], want);
    }
    // Plain output: file<TAB>text.
    let out = lasr(&[
        "transcribe",
        "-m",
        model_path.to_str().unwrap(),
        a.to_str().unwrap(),
        "--beam",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim_end(), format!("{}\thi", a.display()));
    // The CTC head alone, with word times from its spikes.
    let out = lasr(&[
        "transcribe",
        "-m",
        model_path.to_str().unwrap(),
        b.to_str().unwrap(),
        "--ctc-only",
        "--json",
    ]);
    let v = json_stdout(&out);
    assert_eq!(v["text"], "yo", "{v}");
    assert_eq!(v["words"].as_array().unwrap().len(), 1);
    assert!((v["duration"].as_f64().unwrap() - 0.6).abs() < 1e-6, "{v}");
    assert!(v["real_time_factor"].as_f64().unwrap() > 0.0);
    // Standard input.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lasr"))
        .args(["transcribe", "-m", model_path.to_str().unwrap(), "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        &std::fs::read(&a).unwrap(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim_end(), "-\thi");
    // bench over a manifest: every setting is perfect on what the model learned; a
    // reference the model cannot know costs exactly its edits.
    let manifest = dir.path().join("dev.tsv");
    std::fs::write(
        &manifest,
        format!("{}\tHi!\n{}\tYO YO\n", a.display(), b.display()),
    )
    .unwrap();
    let report_path = dir.path().join("report.json");
    let out = lasr(&[
        "bench",
        manifest.to_str().unwrap(),
        "-m",
        model_path.to_str().unwrap(),
        "--beam",
        "2",
        "--json",
        "--report",
        report_path.to_str().unwrap(),
    ]);
    let v = json_stdout(&out);
    let settings = v["settings"].as_array().unwrap();
    assert_eq!(
        settings.len(),
        5,
        "greedy, beam, beam + CTC, CTC best path, CTC beam: {v}"
    );
    for s in settings {
        // "HI" is right; "YO" against "YO YO" is one deleted word of three, and
        // three deleted characters ("YO" plus a space) of seven ("HI", "YO YO").
        assert_eq!(s["words"]["deletions"], 1, "{s}");
        assert_eq!(s["words"]["reference_len"], 3);
        assert!((s["wer"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9, "{s}");
        assert!((s["cer"].as_f64().unwrap() - 3.0 / 7.0).abs() < 1e-9, "{s}");
        assert!(s["real_time_factor"].as_f64().unwrap() > 0.0);
    }
    // A character LM built by `lasr lm`, fused into the CTC and attention beams.
    let text_path = dir.path().join("lm.txt");
    std::fs::write(&text_path, "1 hi\n2 yo\n3 hi yo\n").unwrap();
    let lm_path = dir.path().join("lm.bin");
    let built = lasr(&[
        "lm",
        text_path.to_str().unwrap(),
        "--strip-ids",
        "--order",
        "3",
        "--eval",
        text_path.to_str().unwrap(),
        "-o",
        lm_path.to_str().unwrap(),
        "--json",
    ]);
    assert!(built.status.success(), "{}", text(&built.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&built.stdout).trim()).unwrap();
    let ppl = v["eval_perplexity"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl < 30.0, "{v}");
    for extra in [&["--ctc-only"][..], &[][..]] {
        let mut a = vec![
            "transcribe",
            "-m",
            model_path.to_str().unwrap(),
            b.to_str().unwrap(),
            "--lm",
            lm_path.to_str().unwrap(),
            "--beam",
            "4",
        ];
        a.extend_from_slice(extra);
        let out = lasr(&a);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).trim_end().ends_with("\tyo"), "{extra:?}");
    }
    let with_lm = lasr(&[
        "bench",
        manifest.to_str().unwrap(),
        "-m",
        model_path.to_str().unwrap(),
        "--lm",
        lm_path.to_str().unwrap(),
        "--only",
        "beam+lm,beam+ctc+lm,ctc-beam+lm",
        "--json",
    ]);
    assert!(with_lm.status.success(), "{}", text(&with_lm.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&with_lm.stdout).trim()).unwrap();
    assert_eq!(v["settings"].as_array().unwrap().len(), 3, "{v}");
    // A packed model recommends its decoding; `info` shows it.
    let decode_json = dir.path().join("decode.json");
    std::fs::write(
        &decode_json,
        r#"{"ctc_only": true, "search": {"beam_size": 1}}"#,
    )
    .unwrap();
    // `lasr pack FROM FLAGS -o TO`, then what `lasr info TO` says.
    let pack_with = |from: &Path, flags: &[&str], to: &Path| -> serde_json::Value {
        let mut args = vec!["pack", from.to_str().unwrap()];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["-o", to.to_str().unwrap()]);
        let out = lasr(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&lasr(&["info", to.to_str().unwrap()]).stdout).unwrap()
    };
    let packed = dir.path().join("packed.safetensors");
    let v = pack_with(
        &model_path,
        &["--decode", decode_json.to_str().unwrap()],
        &packed,
    );
    assert_eq!(v["decode"]["ctc_only"], true, "{v}");
    assert_eq!(v["config"]["ctc_weight"], 0.5);
    let out = lasr(&[
        "transcribe",
        "-m",
        packed.to_str().unwrap(),
        b.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["text"], "yo");
    assert!(
        v["nbest"][0]["ctc_log_prob"].is_number(),
        "decoded by CTC: {v}"
    );
    // The utterance's shape taken off: set in the file (`info` shows it), it changes
    // the features and so the scores; `--utterance-shape false` undoes it when decoding.
    let unshaped = v["nbest"][0]["ctc_log_prob"].as_f64().unwrap();
    let shaped = dir.path().join("shaped.safetensors");
    let info = pack_with(&packed, &["--utterance-shape", "true"], &shaped);
    assert_eq!(info["utterance_shape"], true, "{info}");
    assert_eq!(info["decode"]["ctc_only"], true, "{info}");
    // Noise: a steady tone's frames are all alike, so it has no spread to scale.
    let noise = dir.path().join("noise.wav");
    write_wav(&noise, 0.5, 16_000, 5);
    let score_of = |file: &Path, extra: &[&str]| {
        let mut args = vec![
            "transcribe",
            "-m",
            shaped.to_str().unwrap(),
            file.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = lasr(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
        v["nbest"][0]["ctc_log_prob"].as_f64().unwrap()
    };
    let score = |extra: &[&str]| score_of(&b, extra);
    assert_ne!(score(&[]), unshaped);
    assert_eq!(score(&["--utterance-shape", "false"]), unshaped);
    // The spread, per run: it changes the scores again, and 0 gives the shape alone.
    let noise_score = score_of(&noise, &[]);
    assert_ne!(
        score_of(&noise, &["--utterance-spread", "0.3"]),
        noise_score
    );
    assert_eq!(score_of(&noise, &["--utterance-spread", "0"]), noise_score);
    let out = lasr(&[
        "transcribe",
        "-m",
        shaped.to_str().unwrap(),
        b.to_str().unwrap(),
        "--utterance-spread",
        "1.5",
    ]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--utterance-spread") && err.contains("outside 0..=1"),
        "{err}"
    );
    // Packed: `info` shows it.
    let info = pack_with(&shaped, &["--utterance-spread", "0.3"], &shaped);
    assert_eq!(info["utterance_spread"], 0.3f32 as f64, "{info}");
    assert_eq!(info["utterance_shape"], true, "{info}");
    // Half-precision storage: half the file, the decoding kept, the same transcript.
    let small = dir.path().join("small.safetensors");
    let v = pack_with(&packed, &["--storage", "f16"], &small);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&small) * 10 < size(&packed) * 6,
        "{} vs {}",
        size(&small),
        size(&packed)
    );
    assert_eq!(
        (v["storage"].as_str(), v["format"].as_u64()),
        (Some("f16"), Some(3))
    );
    assert_eq!(v["decode"]["ctc_only"], true, "{v}");
    let out = lasr(&[
        "transcribe",
        "-m",
        small.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert!(
        text(&out.stdout).trim_end().ends_with("\tyo"),
        "{}",
        text(&out.stdout)
    );
    // int8 storage: smaller again, format 4, and decoding in int8 reads it as it
    // reads the 16-bit file.
    let int8_file = dir.path().join("int8.safetensors");
    let v = pack_with(&small, &["--storage", "int8"], &int8_file);
    assert!(
        size(&int8_file) < size(&small),
        "{} vs {}",
        size(&int8_file),
        size(&small)
    );
    assert_eq!(
        (v["storage"].as_str(), v["format"].as_u64()),
        (Some("int8"), Some(4))
    );
    let in_int8 = |m: &Path| {
        let out = lasr(&[
            "transcribe",
            "-m",
            m.to_str().unwrap(),
            b.to_str().unwrap(),
            "--weights",
            "int8",
            "--json",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
        (
            v["text"].clone(),
            v["nbest"][0]["ctc_log_prob"].as_f64().unwrap(),
        )
    };
    let ((want, want_lp), (got, got_lp)) = (in_int8(&small), in_int8(&int8_file));
    assert_eq!(want, got);
    assert!((want_lp - got_lp).abs() < 1e-4, "{want_lp} vs {got_lp}");
    // --attention overrides the recommendation.
    let out = lasr(&[
        "transcribe",
        "-m",
        packed.to_str().unwrap(),
        b.to_str().unwrap(),
        "--attention",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["text"], "yo");
    assert!(
        v["nbest"][0].get("ctc_log_prob").is_none(),
        "attention: {v}"
    );
    std::fs::write(&decode_json, r#"{"ctc_only": true, "beam": 3}"#).unwrap();
    let out = lasr(&[
        "pack",
        model_path.to_str().unwrap(),
        "--decode",
        decode_json.to_str().unwrap(),
        "-o",
        packed.to_str().unwrap(),
    ]);
    let err = refused(&out);
    assert!(err.contains("beam"), "{err}");
    // --only picks settings by key; an unknown key is an error naming the choices.
    let only = lasr(&[
        "bench",
        manifest.to_str().unwrap(),
        "-m",
        model_path.to_str().unwrap(),
        "--only",
        "greedy,ctc-beam",
        "--json",
    ]);
    assert!(only.status.success(), "{}", text(&only.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&only.stdout).trim()).unwrap();
    assert_eq!(setting_names(&v), ["greedy", "CTC beam 8"]);
    let bad = lasr(&[
        "bench",
        manifest.to_str().unwrap(),
        "-m",
        model_path.to_str().unwrap(),
        "--only",
        "beam+lm",
    ]);
    let err = refused(&bad);
    assert!(err.contains("ctc-beam"), "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let utterances = report["per_utterance"].as_array().unwrap();
    assert_eq!(utterances.len(), 2);
    let low = utterances
        .iter()
        .find(|u| u["audio"].as_str().unwrap().ends_with("low.wav"))
        .unwrap();
    assert_eq!(low["reference"], "HI", "punctuation stripped");
    assert_eq!(low["results"][0]["text"], "HI");
    // A file that is not a model.
    let out = lasr(&["transcribe", "-m", a.to_str().unwrap(), a.to_str().unwrap()]);
    let err = refused(&out);
    assert!(
        err.contains("low.wav") && err.contains("safetensors"),
        "{err}"
    );
}

/// `lasr train` end to end on a tiny synthetic LibriSpeech-layout corpus: it learns,
/// writes its checkpoints and log, resumes, and its model transcribes.
#[test]
fn train_learns_checkpoints_resumes_and_its_model_transcribes() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus/1/2");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut trans = String::new();
    for u in 0..4 {
        let (f0, text) = if u % 2 == 0 {
            (150.0f64, "HI")
        } else {
            (1700.0, "YO")
        };
        let id = format!("1-2-{u:04}");
        write_tone(&corpus.join(format!("{id}.wav")), f0, 8000 + 800 * u);
        trans.push_str(&format!("{id} {text}\n"));
    }
    std::fs::write(corpus.join("1-2.trans.txt"), trans).unwrap();
    let cfg = dir.path().join("model.json");
    std::fs::write(&cfg, r#"{"listener_hidden": 16, "pyramid_layers": 1, "embedding_dim": 8, "speller_hidden": 32, "attention_dim": 16}"#).unwrap();
    let opts = dir.path().join("options.json");
    std::fs::write(&opts, r#"{"epochs": 100, "learning_rate": 0.01, "batch_frames": 100000, "spec_augment": false, "validate_decode": 4, "log_every": 1}"#).unwrap();
    let out = dir.path().join("run");
    let root = dir.path().join("corpus");
    let (root_s, out_s) = (root.to_str().unwrap(), out.to_str().unwrap());
    let run = lasr(&[
        "train",
        "--train",
        root_s,
        "--valid",
        root_s,
        "--out",
        out_s,
        "--model-config",
        cfg.to_str().unwrap(),
        "--options",
        opts.to_str().unwrap(),
        "--json",
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let summary: serde_json::Value = serde_json::from_str(text(&run.stdout).trim()).unwrap();
    assert_eq!(summary["last_validation"]["epoch"], 100);
    assert_eq!(summary["last_validation"]["cer"], 0.0, "{summary}");
    for f in [
        "model.safetensors",
        "best.safetensors",
        "optimizer.safetensors",
        "log.jsonl",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let log: Vec<serde_json::Value> = std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(log.iter().filter(|v| v.get("valid").is_some()).count(), 100);
    let losses: Vec<f64> = log.iter().filter_map(|v| v["loss"].as_f64()).collect();
    assert!(
        losses.last().unwrap() < &(0.1 * losses[0]),
        "loss {} -> {}",
        losses[0],
        losses.last().unwrap()
    );
    // The log draws as an SVG with a training curve, a validation curve and CER.
    let svg_path = dir.path().join("curves.svg");
    let c = lasr(&[
        "curves",
        out.join("log.jsonl").to_str().unwrap(),
        "-o",
        svg_path.to_str().unwrap(),
    ]);
    assert!(c.status.success(), "{}", text(&c.stderr));
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.matches("<polyline").count() == 4,
        "train, validation, CER, WER"
    );
    // Resume for five more epochs: steps continue from 100.
    let run = lasr(&[
        "train",
        "--train",
        root_s,
        "--valid",
        root_s,
        "--out",
        out_s,
        "--model-config",
        cfg.to_str().unwrap(),
        "--options",
        opts.to_str().unwrap(),
        "--epochs",
        "105",
        "--resume",
        "--json",
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let log: Vec<serde_json::Value> = std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = log.last().unwrap();
    assert_eq!(last["epoch"], 105);
    assert_eq!(last["step"], 105);
    // The trained model transcribes. Greedy, as validation decoded: this barely
    // trained model still gives <eos> enough weight after "y" that an unnormalised
    // wide beam prefers the shorter "y".
    let t = lasr(&[
        "transcribe",
        "-m",
        out.join("model.safetensors").to_str().unwrap(),
        corpus.join("1-2-0001.wav").to_str().unwrap(),
        "--beam",
        "1",
    ]);
    assert!(t.status.success(), "{}", text(&t.stderr));
    assert!(
        text(&t.stdout).trim_end().ends_with("\tyo"),
        "{}",
        text(&t.stdout)
    );
}

#[test]
fn average_writes_the_mean_of_one_runs_checkpoints_and_refuses_others() {
    let tiny = repo().join("tests/fixtures").join("tiny.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("avg.safetensors");
    let tiny_s = tiny.to_str().unwrap();
    let run = lasr(&["average", tiny_s, tiny_s, "-o", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    // The mean of a model with itself transcribes as the model does.
    let high = repo().join("tests/fixtures").join("high.wav");
    let a = lasr(&["transcribe", "-m", tiny_s, high.to_str().unwrap()]);
    let b = lasr(&[
        "transcribe",
        "-m",
        out.to_str().unwrap(),
        high.to_str().unwrap(),
    ]);
    assert!(a.status.success() && b.status.success());
    assert_eq!(
        text(&a.stdout).split('\t').nth(1),
        text(&b.stdout).split('\t').nth(1)
    );
    // The built-in model's main model is another run: different sizes.
    let builtin = builtin_main_model(dir.path());
    let run = lasr(&[
        "average",
        tiny_s,
        builtin.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let err = refused(&run);
    assert!(err.contains("model config"), "{err}");
    let run = lasr(&["average", tiny_s, "-o", out.to_str().unwrap()]);
    assert!(
        !run.status.success(),
        "one model is refused by the argument parser"
    );
}

#[test]
fn ensemble_joins_models_that_read_alike() {
    let (tiny, _, high) = tiny_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ens.safetensors");
    let (tiny_s, out_s) = (tiny.to_str().unwrap(), out.to_str().unwrap());
    let run = lasr(&[
        "ensemble",
        tiny_s,
        tiny_s,
        "--weights",
        "0.7,0.3",
        "-o",
        out_s,
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    // A mixture of a model with itself is that model: the same CTC transcript (the
    // file and its loading, end to end; crates/model/tests/ensemble.rs checks that
    // two different models are mixed with their weights).
    let a = lasr(&[
        "transcribe",
        "-m",
        tiny_s,
        "--ctc-only",
        high.to_str().unwrap(),
    ]);
    let b = lasr(&[
        "transcribe",
        "-m",
        out_s,
        "--ctc-only",
        high.to_str().unwrap(),
    ]);
    assert!(
        a.status.success() && b.status.success(),
        "{}",
        text(&b.stderr)
    );
    assert_eq!(
        text(&a.stdout).split('\t').nth(1),
        text(&b.stdout).split('\t').nth(1)
    );
    let info = lasr(&["info", out_s]);
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["format"], 2);
    assert!((v["ensemble"]["main_weight"].as_f64().unwrap() - 0.7).abs() < 1e-6);
    assert!((v["ensemble"]["members"][0]["weight"].as_f64().unwrap() - 0.3).abs() < 1e-6);
    let single: serde_json::Value =
        serde_json::from_slice(&lasr(&["info", tiny_s]).stdout).unwrap();
    assert_eq!(single["format"], 1);
    assert!(single["ensemble"].is_null());
    // The built-in model reduces time 4x, the tiny one 2x: their frames would not line
    // up. (Its other CMVN statistics alone would be folded into its first layer.)
    let builtin = builtin_main_model(dir.path());
    let run = ensemble(&[&tiny, &builtin], &out);
    let err = refused(&run);
    assert!(
        err.contains("time reduction") && err.contains("builtin-main.safetensors"),
        "{err}"
    );
    // Nor is an ensemble (the built-in model is one) nested in another, though it
    // grows when it comes first: its members stay, with new weights.
    let full = repo().join("assets/model.safetensors");
    let run = ensemble(&[&tiny, &full], &out);
    let err = refused(&run);
    assert!(err.contains("model 2 is an ensemble already"), "{err}");
    let grown = dir.path().join("grown.safetensors");
    let run = ensemble(&[&full, &builtin], &grown);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let info = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&lasr(&["info", p.to_str().unwrap()]).stdout).unwrap()
    };
    let shipped = info(&full)["ensemble"]["members"].as_array().unwrap().len();
    let v = info(&grown);
    let members = v["ensemble"]["members"].as_array().unwrap();
    assert_eq!(members.len(), shipped + 1, "{v}");
    let equal = 1.0 / (shipped + 2) as f64;
    for w in
        std::iter::once(&v["ensemble"]["main_weight"]).chain(members.iter().map(|m| &m["weight"]))
    {
        assert!(
            (w.as_f64().unwrap() - equal).abs() < 1e-6,
            "equal by default: {v}"
        );
    }
    // Members leave by number: the grown file's first and its added last one.
    // `lasr ensemble GROWN ARGS... -o OUT`.
    let from_grown = |args: &[&str], out: &Path| ensemble_with(&[&grown], args, out);
    // Half to the main model, the rest equally among shipped + 1 others: the weights
    // of both the swap and the re-weighting below.
    let half_to_main = std::iter::once("0.5".to_string())
        .chain((0..=shipped).map(|_| format!("{}", 0.5 / (shipped + 1) as f64)))
        .collect::<Vec<_>>()
        .join(",");
    let smaller = dir.path().join("smaller.safetensors");
    let last = (shipped + 1).to_string();
    let run = from_grown(&["--drop", &format!("1,{last}")], &smaller);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let s = info(&smaller);
    let kept = s["ensemble"]["members"].as_array().unwrap();
    assert_eq!(kept.len(), shipped - 1, "{s}");
    // `info` numbers members as --drop does.
    assert_eq!(members[0]["member"], 1);
    for (k, m) in kept.iter().enumerate() {
        assert_eq!(m["member"], k + 1);
        assert_eq!(m["config"], members[k + 1]["config"], "member {}", k + 1);
        assert_eq!(m["info"], members[k + 1]["info"], "member {}", k + 1);
    }
    // Without --weights the kept models keep their proportions: here all equal.
    let share = 1.0 / shipped as f64;
    for w in std::iter::once(&s["ensemble"]["main_weight"]).chain(kept.iter().map(|m| &m["weight"]))
    {
        assert!((w.as_f64().unwrap() - share).abs() < 1e-5, "{s}");
    }
    // A member swapped for another model: the last member leaves, the built-in main
    // model joins in its place.
    let swapped = dir.path().join("swapped.safetensors");
    let run = from_grown(
        &[
            builtin.to_str().unwrap(),
            "--drop",
            &last,
            "--weights",
            &half_to_main,
        ],
        &swapped,
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let w = info(&swapped);
    let now = w["ensemble"]["members"].as_array().unwrap();
    assert_eq!(now.len(), shipped + 1, "{w}");
    for k in 0..shipped {
        assert_eq!(now[k]["config"], members[k]["config"], "member {}", k + 1);
        assert_eq!(now[k]["info"], members[k]["info"], "member {}", k + 1);
    }
    assert_eq!(now[shipped]["info"], info(&builtin)["info"], "{w}");
    assert!((w["ensemble"]["main_weight"].as_f64().unwrap() - 0.5).abs() < 1e-5);
    // Every member dropped leaves the main model alone.
    let all: Vec<String> = (1..=shipped + 1).map(|k| k.to_string()).collect();
    let alone = dir.path().join("alone.safetensors");
    let run = from_grown(&["--drop", &all.join(",")], &alone);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stdout).contains("the main model of"),
        "{}",
        text(&run.stdout)
    );
    assert!(info(&alone)["ensemble"].is_null());
    // A member that is not there, or one model with nothing to do, is refused, and
    // the output file is left as it was.
    let before = std::fs::read(&alone).unwrap();
    let run = from_grown(&["--drop", "9"], &alone);
    let err = refused(&run);
    assert!(
        err.contains("grown.safetensors: --drop") && err.contains("no member 9"),
        "{err}"
    );
    assert_eq!(std::fs::read(&alone).unwrap(), before);
    let run = from_grown(&[], &alone);
    let err = refused(&run);
    assert!(err.contains("needs a second model"), "{err}");
    assert_eq!(std::fs::read(&alone).unwrap(), before);
    // Alone with --weights, an ensemble is re-weighted.
    let reweighted = dir.path().join("reweighted.safetensors");
    let run = from_grown(&["--weights", &half_to_main], &reweighted);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let r = info(&reweighted);
    assert!(
        (r["ensemble"]["main_weight"].as_f64().unwrap() - 0.5).abs() < 1e-5,
        "{r}"
    );
    assert_eq!(
        r["ensemble"]["members"].as_array().unwrap().len(),
        shipped + 1
    );
}

/// The built-in model's main model alone (without ensemble members), written into
/// `dir`: a single model of another run than the tiny fixture.
fn builtin_main_model(dir: &Path) -> PathBuf {
    let mut m = lasr_model::ModelFile::load(&repo().join("assets/model.safetensors")).unwrap();
    m.members.clear();
    // The prior was the mixture's.
    m.drop_ctc_prior();
    let path = dir.join("builtin-main.safetensors");
    m.save(&path).unwrap();
    path
}

#[test]
fn ensemble_main_puts_a_later_phase_of_the_main_model_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let full = repo().join("assets/model.safetensors");
    let out = dir.path().join("new.safetensors");
    let with_main = |main: &Path, models: &[&Path]| {
        ensemble_with(models, &["--main", main.to_str().unwrap()], &out)
    };
    // The main model taken out in f32 and put back gives the file it came from, byte
    // for byte, but for the CTC prior and its scale in the decoding, which a new main
    // model would make stale: members, weights, the rest of the decoding and storage
    // all stay.
    let main = dir.path().join("main.safetensors");
    let mut m = lasr_model::ModelFile::load(&full).unwrap();
    m.members.clear();
    m.drop_ctc_prior();
    m.storage = lasr_nn::Storage::F32;
    m.save(&main).unwrap();
    let run = with_main(&main, &[&full]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stderr).contains("lasr prior"),
        "{}",
        text(&run.stderr)
    );
    let mut want = lasr_model::ModelFile::load(&full).unwrap();
    assert!(want.drop_ctc_prior());
    assert_eq!(std::fs::read(&out).unwrap(), want.to_bytes().unwrap());
    // Another main model must read the same features: the members were folded to the
    // ensemble's statistics.
    let mut other = lasr_model::ModelFile::load(&main).unwrap();
    if let Some(c) = other.front_end.cmvn.as_mut() {
        c.mean[0] += 1.0;
    }
    let shifted = dir.path().join("shifted.safetensors");
    other.save(&shifted).unwrap();
    std::fs::remove_file(&out).unwrap();
    let run = with_main(&shifted, &[&full]);
    let err = refused(&run);
    assert!(
        err.contains("shifted.safetensors") && err.contains("CMVN statistics"),
        "{err}"
    );
    assert!(!out.exists());
    // One ensemble, and an ensemble it must be.
    let run = with_main(&main, &[&full, &main]);
    let err = refused(&run);
    assert!(err.contains("one ensemble"), "{err}");
    let run = with_main(&main, &[&main]);
    let err = refused(&run);
    assert!(err.contains("not an ensemble"), "{err}");
}

#[test]
fn ensemble_take_writes_a_member_as_a_model_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let full = repo().join("assets/model.safetensors");
    let out = dir.path().join("member.safetensors");
    let take =
        |n: &str, models: &[&Path]| ensemble_with(models, &["--take", n, "--storage", "f32"], &out);
    let run = take("2", &[&full]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let ens = lasr_model::ModelFile::load(&full).unwrap();
    let member = lasr_model::ModelFile::load(&out).unwrap();
    assert!(member.members.is_empty());
    assert_eq!(member.storage, lasr_nn::Storage::F32);
    assert_eq!(member.las.config, ens.members[1].config);
    assert_eq!(member.las.listener, ens.members[1].listener);
    assert_eq!(member.las.ctc.as_ref(), Some(&ens.members[1].ctc));
    assert_eq!(member.front_end, ens.front_end);
    // Trained on, it would start from the member, not from the main model.
    assert_ne!(member.las.listener, ens.las.listener);

    let run = take("9", &[&full]);
    let err = refused(&run);
    assert!(
        err.contains("--take 9") && err.contains("no member 9"),
        "{err}"
    );
    let run = take("1", &[&full, &full]);
    let err = refused(&run);
    assert!(err.contains("one ensemble"), "{err}");
}

#[test]
fn rnnlm_trains_from_text_and_reranks_the_ctc_n_best() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _, high) = tiny_fixtures();
    let (train, valid) = hi_yo_text(dir.path());
    let lm = dir.path().join("lm.safetensors");
    let log = dir.path().join("log.jsonl");
    let out = tiny_rnnlm(&train, &valid, "30", &lm, &["--log", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let epochs: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(epochs.len(), 30);
    let ppl = |e: &serde_json::Value| e["valid_perplexity"].as_f64().unwrap();
    let best = epochs.iter().map(ppl).fold(f64::INFINITY, f64::min);
    assert!(best < ppl(&epochs[0]) / 2.0, "{epochs:?}");
    // An epoch is written when it is the best so far, and the summary names the best.
    let mut so_far = f64::INFINITY;
    for e in &epochs {
        assert_eq!(e["kept"], ppl(e) < so_far, "{e}");
        so_far = so_far.min(ppl(e));
    }
    assert!(
        text(&out.stdout).contains(&format!("{best:.3}")),
        "{}",
        text(&out.stdout)
    );

    let decode = |extra: &[&str]| ctc_nbest(&model, &high, extra);
    let plain = json_stdout(&decode(&[]));
    let plain = plain["nbest"].as_array().unwrap().clone();
    assert!(plain.len() > 1, "{plain:?}");
    // With no character LM, each alternative gains share x --lm-weight times the
    // LSTM's log-probability of its text.
    let rescored = json_stdout(&decode(&[
        "--rnnlm",
        lm.to_str().unwrap(),
        "--rnnlm-share",
        "1",
        "--lm-weight",
        "2",
    ]));
    let rescored = rescored["nbest"].as_array().unwrap().clone();
    assert_reranked(&plain, &rescored, "rnnlm_log_prob", 2.0);
    // "yo" scores better with the LSTM than the n-best's misspellings that add a
    // letter to it, which it never saw.
    let lp_of = |t: &str| {
        rescored
            .iter()
            .find(|a| a["text"] == t)
            .map(|a| a["rnnlm_log_prob"].as_f64().unwrap())
    };
    let longer: Vec<f64> = ["yyo", "yoo"].iter().filter_map(|t| lp_of(t)).collect();
    assert!(!longer.is_empty(), "{rescored:?}");
    assert!(
        longer.iter().all(|&lp| lp_of("yo").unwrap() > lp),
        "{rescored:?}"
    );
    assert!(plain.iter().all(|p| p.get("rnnlm_log_prob").is_none()));

    // With a character LM in the search, the LSTM takes W of its weight: each
    // alternative gains W x (LSTM log-prob - character LM log-prob).
    let char_lm = dir.path().join("chars.bin");
    let out = lasr(&[
        "lm",
        train.to_str().unwrap(),
        "--strip-ids",
        "--order",
        "3",
        "-o",
        char_lm.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let with_lm = |extra: &[&str]| {
        ctc_nbest_lm(
            &model,
            &high,
            &["--lm", char_lm.to_str().unwrap(), "--lm-weight", "0.5"],
            extra,
        )
    };
    let plain = json_stdout(&with_lm(&[]))["nbest"]
        .as_array()
        .unwrap()
        .clone();
    // Each hypothesis gains W x (LSTM - n-gram), W = share x --lm-weight 0.5; the
    // search, and so each n-gram log-prob, is the same as without the LSTM.
    let rescored_by_share = |share: &str, w: f64| {
        let rescored = json_stdout(&with_lm(&[
            "--rnnlm",
            lm.to_str().unwrap(),
            "--rnnlm-share",
            share,
        ]))["nbest"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(rescored.len(), plain.len());
        for alt in &rescored {
            let before = plain.iter().find(|p| p["text"] == alt["text"]).unwrap();
            let ngram = before["lm_log_prob"].as_f64().unwrap();
            assert_eq!(alt["lm_log_prob"].as_f64().unwrap(), ngram);
            assert!(ngram < 0.0, "{before}");
            let lstm = alt["rnnlm_log_prob"].as_f64().unwrap();
            let want = before["score"].as_f64().unwrap() + w * (lstm - ngram);
            assert!(
                (alt["score"].as_f64().unwrap() - want).abs() < 1e-9,
                "share {share}: {alt}"
            );
        }
    };
    rescored_by_share("0.5", 0.25);
    // Past 1 the share extrapolates: W above the LM weight.
    rescored_by_share("1.5", 0.75);
    let err = refused(&with_lm(&[
        "--rnnlm",
        lm.to_str().unwrap(),
        "--rnnlm-share",
        "2.5",
    ]));
    assert!(err.contains("rnnlm_share 2.5 must lie in [0, 2]"), "{err}");
    // A share of 0 turns it off: the search's own n-best, unscored by the LSTM.
    let off = json_stdout(&with_lm(&[
        "--rnnlm",
        lm.to_str().unwrap(),
        "--rnnlm-share",
        "0",
    ]));
    assert_eq!(off["nbest"].as_array().unwrap(), &plain);

    // Refusals name the problem.
    let err = refused(&decode(&[
        "--rnnlm",
        model.to_str().unwrap(),
        "--rnnlm-share",
        "1",
    ]));
    assert!(err.contains("tiny.safetensors"), "{err}");
    assert!(err.contains("not an LSTM language model"), "{err}");
    let err = refused(&decode(&["--rnnlm", lm.to_str().unwrap()]));
    assert!(err.contains("--rnnlm-share"), "{err}");
    let err = refused(&decode(&["--rnnlm-share", "1"]));
    assert!(
        err.contains("no LSTM language model") && err.contains("--rnnlm FILE"),
        "{err}"
    );
    let err = refused(&decode(&["--rnnlm-share", "1", "--no-rnnlm"]));
    assert!(err.contains("--no-rnnlm turned it off"), "{err}");
    let err = refused(&lasr(&[
        "transcribe",
        "-m",
        model.to_str().unwrap(),
        "--no-lm",
        "--attention",
        "--rnnlm",
        lm.to_str().unwrap(),
        "--rnnlm-share",
        "1",
        high.to_str().unwrap(),
    ]));
    assert!(err.contains("ctc_only"), "{err}");
}

#[test]
fn speller_trains_an_ensemble_speller_that_reranks_the_ctc_n_best() {
    let dir = tempfile::tempdir().unwrap();
    let (tiny, low, high) = tiny_fixtures();
    // The tiny model twice: a main model and one member.
    let ens = dir.path().join("ens.safetensors");
    let out = ensemble_with(&[&tiny, &tiny], &["--weights", "0.5,0.5"], &ens);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Labels the main speller has backwards, so that training has something to learn.
    let corpus = dir.path().join("swapped.tsv");
    std::fs::write(
        &corpus,
        format!("{}\tYO\n{}\tHI\n", low.display(), high.display()),
    )
    .unwrap();
    let out_model = dir.path().join("with-speller.safetensors");
    let log = dir.path().join("log.jsonl");
    let out = lasr(&[
        "speller",
        "-m",
        ens.to_str().unwrap(),
        "--train",
        corpus.to_str().unwrap(),
        "--valid",
        corpus.to_str().unwrap(),
        "--epochs",
        "60",
        "--learning-rate",
        "0.02",
        "--input-dropout",
        "0",
        "--dropout",
        "0",
        "--epoch-files",
        "--log",
        log.to_str().unwrap(),
        "-o",
        out_model.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    // 2 listeners of 2 x 16 states each.
    assert!(
        stderr.contains("2 listeners, 64 states per frame"),
        "{stderr}"
    );
    let epochs: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(epochs.len(), 60);
    let loss = |e: &serde_json::Value| e["valid_loss"].as_f64().unwrap();
    assert!(loss(&epochs[59]) < loss(&epochs[0]) / 4.0, "{epochs:?}");
    for k in [1, 60] {
        assert!(dir
            .path()
            .join(format!("with-speller-epoch-{k}.safetensors"))
            .exists());
    }
    let info = text(&lasr(&["info", out_model.to_str().unwrap()]).stdout);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["ensemble_speller"]["input_dim"], 64, "{info}");

    let decode = |model: &Path, extra: &[&str]| ctc_nbest(model, &low, extra);
    let plain = json_stdout(&decode(&out_model, &[]))["nbest"]
        .as_array()
        .unwrap()
        .clone();
    assert!(plain.len() > 1, "{plain:?}");
    assert!(plain
        .iter()
        .all(|a| a.get("ensemble_speller_log_prob").is_none()));
    let rescored = json_stdout(&decode(&out_model, &["--ensemble-speller", "0.5"]))["nbest"]
        .as_array()
        .unwrap()
        .clone();
    assert_reranked(&plain, &rescored, "ensemble_speller_log_prob", 0.5);
    // It learned the swap: it finds "hi" far less likely for the low tone than the
    // main speller, which it started as, does.
    let both = json_stdout(&decode(
        &out_model,
        &["--ensemble-speller", "0.5", "--rescore", "0.5"],
    ))["nbest"]
        .as_array()
        .unwrap()
        .clone();
    let hi = both
        .iter()
        .find(|a| a["text"] == "hi")
        .unwrap_or_else(|| panic!("\"hi\" in the 4 best: {both:?}"));
    let (main, learned) = (
        hi["attention_log_prob"].as_f64().unwrap(),
        hi["ensemble_speller_log_prob"].as_f64().unwrap(),
    );
    assert!(learned < main - 2.0, "{hi}");
    // Refusals: a file without one; a CTC-only main model to start from.
    let err = refused(&decode(&ens, &["--ensemble-speller", "0.5"]));
    assert!(err.contains("holds no ensemble speller"), "{err}");
    let ctc_only = dir.path().join("ctc-only.safetensors");
    let mut m = lasr_model::ModelFile::load(&tiny).unwrap();
    m.las.config.ctc_weight = 1.0;
    m.save(&ctc_only).unwrap();
    let err = refused(&lasr(&[
        "speller",
        "-m",
        ctc_only.to_str().unwrap(),
        "--train",
        corpus.to_str().unwrap(),
        "--valid",
        corpus.to_str().unwrap(),
        "-o",
        dir.path().join("x.safetensors").to_str().unwrap(),
    ]));
    assert!(err.contains("no speller to start from"), "{err}");
}

#[test]
fn a_backward_lstm_lm_reranks_beside_the_forward_one() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _, high) = tiny_fixtures();
    let (train, valid) = hi_yo_text(dir.path());
    let make = |out: &Path, extra: &[&str]| {
        let o = tiny_rnnlm(&train, &valid, "10", out, extra);
        assert!(o.status.success(), "{}", text(&o.stderr));
    };
    let (fwd, bwd) = (
        dir.path().join("fwd.safetensors"),
        dir.path().join("bwd.safetensors"),
    );
    make(&fwd, &[]);
    make(&bwd, &["--reverse"]);
    let decode = |extra: &[&str]| {
        let mut args = vec!["--lm-weight", "2", "--rnnlm-share", "1"];
        args.extend(extra);
        ctc_nbest(&model, &high, &args)
    };
    let plain = json_stdout(&ctc_nbest(&model, &high, &[]))["nbest"]
        .as_array()
        .unwrap()
        .clone();
    let both = json_stdout(&decode(&[
        "--rnnlm",
        fwd.to_str().unwrap(),
        "--rnnlm-backward",
        bwd.to_str().unwrap(),
    ]))["nbest"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(both.len(), plain.len());
    // Without a character LM each alternative gains share x --lm-weight times the mean
    // of the two directions' log-probabilities.
    for (i, alt) in both.iter().enumerate() {
        let f = alt["rnnlm_log_prob"].as_f64().unwrap();
        let b = alt["rnnlm_backward_log_prob"].as_f64().unwrap();
        assert!(f < 0.0 && b < 0.0, "{alt}");
        let before = plain.iter().find(|p| p["text"] == alt["text"]).unwrap();
        let want = before["score"].as_f64().unwrap() + 2.0 * 0.5 * (f + b);
        assert!(
            (alt["score"].as_f64().unwrap() - want).abs() < 1e-9,
            "{alt}"
        );
        if i > 0 {
            assert!(both[i - 1]["score"].as_f64() >= alt["score"].as_f64());
        }
    }
    // The two directions score differently (else the backward model were the forward).
    assert!(both.iter().any(|a| (a["rnnlm_log_prob"].as_f64().unwrap()
        - a["rnnlm_backward_log_prob"].as_f64().unwrap())
    .abs()
        > 1e-6));
    // The backward one alone: its log-probability, whole.
    let alone = json_stdout(&decode(&["--rnnlm-backward", bwd.to_str().unwrap()]))["nbest"]
        .as_array()
        .unwrap()
        .clone();
    assert_reranked(&plain, &alone, "rnnlm_backward_log_prob", 2.0);
    assert!(alone.iter().all(|a| a.get("rnnlm_log_prob").is_none()));
    // Each must come as what it is.
    let err = refused(&decode(&["--rnnlm-backward", fwd.to_str().unwrap()]));
    assert!(
        err.contains("a forward LSTM language model given as --rnnlm-backward"),
        "{err}"
    );
    let err = refused(&decode(&["--rnnlm", bwd.to_str().unwrap()]));
    assert!(
        err.contains("a backward LSTM language model given as --rnnlm"),
        "{err}"
    );
}

#[test]
fn prior_measures_a_corpus_and_decoding_divides_it_out() {
    let dir = tempfile::tempdir().unwrap();
    let (tiny, low, high) = tiny_fixtures();
    let bad = dir.path().join("bad.wav");
    std::fs::write(&bad, b"RIFF but not audio").unwrap();
    let manifest = dir.path().join("corpus.tsv");
    std::fs::write(
        &manifest,
        format!(
            "{}\thi\n{}\tyo\n{}\thi\n",
            low.display(),
            high.display(),
            bad.display()
        ),
    )
    .unwrap();
    let with = dir.path().join("prior.safetensors");
    let (tiny_s, with_s, manifest_s) = (
        tiny.to_str().unwrap(),
        with.to_str().unwrap(),
        manifest.to_str().unwrap(),
    );
    let v = json_stdout(&lasr(&[
        "prior", manifest_s, "-m", tiny_s, "-o", with_s, "--json",
    ]));
    // The corrupt file is reported and left out; the two others are measured.
    assert_eq!(v["utterances"], 2, "{v}");
    let skipped = v["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{v}");
    assert!(skipped[0]["id"].as_str().unwrap().contains("bad"), "{v}");
    let probs = v["prior"].as_object().unwrap();
    let sum: f64 = probs.values().map(|p| p.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-4, "{v}");
    // The letters the model spelled are corrected; blank, space and specials never.
    let shift = &v["letter_shift"];
    for s in ["<pad>", "<sos>", "<eos>", "<unk>", " "] {
        assert_eq!(shift[s], 0.0, "{s}: {v}");
    }
    for s in ["h", "i", "y", "o"] {
        assert!(shift[s].as_f64().unwrap().abs() > 1e-3, "{s}: {v}");
    }
    let info = json_stdout(&lasr(&["info", with_s]));
    assert_eq!(info["ctc_prior"]["frames"], v["frames"]);
    assert!(json_stdout(&lasr(&["info", tiny_s]))["ctc_prior"].is_null());

    // Decoding with it moves the CTC scores; without it, the file decodes as before.
    let nbest = |model: &Path, extra: &[&str]| {
        json_stdout(&ctc_nbest(model, &high, extra))["nbest"]
            .as_array()
            .unwrap()
            .clone()
    };
    let plain = nbest(&tiny, &[]);
    assert_eq!(nbest(&with, &[]), plain);
    let divided = nbest(&with, &["--ctc-prior-scale", "1"]);
    assert!(
        divided
            .iter()
            .zip(&plain)
            .any(|(a, b)| a["ctc_log_prob"] != b["ctc_log_prob"]),
        "{divided:?}"
    );
    // At beam 1 without an LM too (the prefix search then stands in for the best path).
    let greedy = |model: &Path, extra: &[&str]| {
        let mut args = vec!["transcribe", "-m", model.to_str().unwrap()];
        args.extend(["--ctc-only", "--beam", "1", "--no-lm", "--json"]);
        args.extend(extra);
        args.push(high.to_str().unwrap());
        json_stdout(&lasr(&args))["nbest"][0]["ctc_log_prob"].clone()
    };
    assert_ne!(
        greedy(&with, &["--ctc-prior-scale", "1"]),
        greedy(&with, &[])
    );
    // Another front end keeps the prior, and says it was measured with the old one.
    let reshaped = dir.path().join("reshaped.safetensors");
    let run = lasr(&[
        "pack",
        with_s,
        "--utterance-shape",
        "true",
        "-o",
        reshaped.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stderr).contains("old front end"),
        "{}",
        text(&run.stderr)
    );
    let info = json_stdout(&lasr(&["info", reshaped.to_str().unwrap()]));
    assert_eq!(info["ctc_prior"]["frames"], v["frames"]);
    // Recommended in the file, it is what decoding does by default.
    let decode = dir.path().join("decode.json");
    std::fs::write(&decode, r#"{"ctc_only": true, "ctc_prior_scale": 1.0}"#).unwrap();
    let packed = dir.path().join("packed.safetensors");
    let run = lasr(&[
        "pack",
        with_s,
        "--decode",
        decode.to_str().unwrap(),
        "-o",
        packed.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_eq!(nbest(&packed, &[]), divided);
    assert_eq!(nbest(&packed, &["--ctc-prior-scale", "0"]), plain);

    // Without a prior, the scale is refused, saying where a prior comes from.
    let err = refused(&ctc_nbest(&tiny, &high, &["--ctc-prior-scale", "0.5"]));
    assert!(
        err.contains("no CTC prior") && err.contains("lasr prior"),
        "{err}"
    );
    let err = refused(&lasr(&[
        "pack",
        tiny_s,
        "--decode",
        decode.to_str().unwrap(),
        "-o",
        packed.to_str().unwrap(),
    ]));
    assert!(err.contains("no CTC prior"), "{err}");

    // Another mixture leaves the prior (and the recommended scale) behind, and says so.
    let joined = dir.path().join("joined.safetensors");
    let run = ensemble(&[&packed, &tiny], &joined);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stderr).contains("lasr prior"),
        "{}",
        text(&run.stderr)
    );
    let info = json_stdout(&lasr(&["info", joined.to_str().unwrap()]));
    assert!(info["ctc_prior"].is_null(), "{info}");
    assert!(info["decode"].get("ctc_prior_scale").is_none(), "{info}");
}
