//! End-to-end tests of the data options of the `lasr` binary: Kaldi data directories
//! for `train` and `bench`, `--feature-cache` and `--speed-perturb`.

use std::path::Path;
use std::process::Output;

mod common;
use common::{json_stdout, lasr, refused, text, write_tone};

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

/// `lasr train` on `data` (training and validation) into `out`, with `extra` flags.
fn train_on(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--train",
        data.to_str().unwrap(),
        "--valid",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    lasr(&args)
}

fn train(data: &Path, out: &Path, cfg: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--model-config",
        cfg.to_str().unwrap(),
        "--epochs",
        "1",
        "--json",
    ];
    args.extend_from_slice(extra);
    train_on(data, out, &args)
}

#[test]
fn train_reads_a_kaldi_directory_caches_features_and_perturbs_only_the_training_set() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = tiny_inputs(dir.path());
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
    let err = refused(&run);
    assert!(err.contains("speed perturbation factor 0"), "{err}");
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
    let v = json_stdout(&out);
    assert_eq!(v["utterances"], 1, "{v}");
    // 0.3 s cut out of the recording, not the whole of it.
    let hours = v["audio_hours"].as_f64().unwrap();
    assert!((hours * 3600.0 - 0.3).abs() < 0.01, "{v}");
}

/// Every tensor of a model file, by name.
fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    use lasr_nn::Module;
    let m = lasr_model::ModelFile::load(path).unwrap();
    let mut out = Vec::new();
    m.las.visit("", &mut |name, t| {
        out.push((name, t.iter().copied().collect()))
    });
    out
}

/// [`kaldi_dir`] under `root` and a tiny model config beside it (`root/model.json`).
fn tiny_inputs(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    tiny_inputs_with(root, "")
}

/// [`tiny_inputs`] with `extra` JSON fields (`, "name": value` ...) in the config.
fn tiny_inputs_with(root: &Path, extra: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = kaldi_dir(root);
    let cfg = root.join("model.json");
    let sizes = r#""listener_hidden": 8, "pyramid_layers": 1, "embedding_dim": 4, "speller_hidden": 8, "attention_dim": 8"#;
    std::fs::write(&cfg, format!("{{{sizes}{extra}}}")).unwrap();
    (data, cfg)
}

/// `lasr train --init from` for one epoch at learning rate 0.01 into `out`, with
/// `extra` flags: a later phase.
fn phase_from(data: &Path, out: &Path, from: &Path, extra: &[&str]) -> Output {
    let init = [
        "--init",
        from.to_str().unwrap(),
        "--epochs",
        "1",
        "--lr",
        "0.01",
    ];
    train_on(data, out, &[&init[..], extra].concat())
}

/// A tiny model trained one epoch on [`kaldi_dir`] under `root`: the data directory,
/// the model config and the model file.
fn first_model(root: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (data, cfg) = tiny_inputs(root);
    let run1 = root.join("run1");
    let out = train(&data, &run1, &cfg, &["--seed", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    (data, cfg, run1.join("model.safetensors"))
}

#[test]
fn train_init_starts_from_a_model_and_keeps_its_normalisation() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg, first) = first_model(dir.path());

    // With a learning rate of 0 the weights stay the initial model's, not a fresh
    // draw; the speed-perturbed data has other statistics, which must not replace the
    // model's own.
    let run2 = dir.path().join("run2");
    let from_first = |out: &Path, extra: &[&str]| {
        let init = [
            "--init",
            first.to_str().unwrap(),
            "--speed-perturb",
            "0.8,1.0",
        ];
        let once = ["--epochs", "1", "--seed", "4"];
        train_on(&data, out, &[&init[..], &once[..], extra].concat())
    };
    let out = from_first(&run2, &["--lr", "0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let second = run2.join("model.safetensors");
    assert_eq!(tensors(&first), tensors(&second));
    let (a, b) = (
        lasr_model::ModelFile::load(&first).unwrap(),
        lasr_model::ModelFile::load(&second).unwrap(),
    );
    assert_eq!(
        serde_json::to_value(&a.front_end).unwrap(),
        serde_json::to_value(&b.front_end).unwrap()
    );

    // A learning rate above 0 trains on from there.
    let run3 = dir.path().join("run3");
    let out = from_first(&run3, &["--lr", "0.01"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_ne!(tensors(&first), tensors(&run3.join("model.safetensors")));

    // Resuming an --init run (without --init) keeps the initial model's statistics,
    // not this data's.
    let resumed = train_on(
        &data,
        &run3,
        &[
            "--speed-perturb",
            "0.8,1.0",
            "--epochs",
            "2",
            "--lr",
            "0.01",
            "--resume",
        ],
    );
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let c = lasr_model::ModelFile::load(&run3.join("model.safetensors")).unwrap();
    assert_eq!(
        serde_json::to_value(&a.front_end).unwrap(),
        serde_json::to_value(&c.front_end).unwrap()
    );

    // The model's own config as --model-config grows the model itself: every tensor
    // taken, none fresh.
    let run4 = dir.path().join("run4");
    let out = from_first(
        &run4,
        &["--lr", "0", "--model-config", cfg.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(" 0 fresh"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(tensors(&first), tensors(&run4.join("model.safetensors")));
}

#[test]
fn train_init_from_an_ensemble_trains_its_main_model_alone() {
    let dir = tempfile::tempdir().unwrap();
    // Ensemble members need a CTC head.
    let (data, cfg) = tiny_inputs_with(dir.path(), r#", "ctc_weight": 0.5"#);
    let out = train(&data, &dir.path().join("run1"), &cfg, &["--seed", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = dir.path().join("run1/model.safetensors");
    let (first_s, ens) = (first.to_str().unwrap(), dir.path().join("ens.safetensors"));
    let out = lasr(&[
        "ensemble",
        first_s,
        first_s,
        "--weights",
        "0.6,0.4",
        "--storage",
        "f16",
        "-o",
        ens.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A CTC prior describes the initial weights' output: the trained model leaves it.
    let mut with_prior = lasr_model::ModelFile::load(&ens).unwrap();
    let mut probs = vec![0.0f32; with_prior.vocab.len()];
    probs[0] = 1.0;
    with_prior.ctc_prior = Some(lasr_model::CtcPrior { probs, frames: 1 });
    with_prior.save(&ens).unwrap();
    let run = dir.path().join("run2");
    let init = [
        "--init",
        ens.to_str().unwrap(),
        "--epochs",
        "1",
        "--lr",
        "0",
    ];
    let out = train_on(&data, &run, &init);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("ens.safetensors: a CTC ensemble of 2 models"),
        "{}",
        text(&out.stderr)
    );
    // With a learning rate of 0 the result is the ensemble's main model (as rounded
    // to half precision there), with no members, stored in f32.
    let trained = lasr_model::ModelFile::load(&run.join("model.safetensors")).unwrap();
    assert!(trained.members.is_empty());
    assert!(trained.ctc_prior.is_none());
    assert_eq!(trained.storage, lasr_nn::Storage::F32);
    assert_eq!(tensors(&ens), tensors(&run.join("model.safetensors")));
}

#[test]
fn pad_frames_travels_in_the_model_and_a_resume_must_keep_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _, first) = first_model(dir.path());
    let a = lasr_model::ModelFile::load(&first).unwrap();
    assert_eq!(a.front_end.pad_frames, 0);

    let run2 = dir.path().join("run2");
    let padded = |extra: &[&str]| {
        let init = [
            "--init",
            first.to_str().unwrap(),
            "--seed",
            "4",
            "--lr",
            "0.01",
        ];
        train_on(&data, &run2, &[&init[..], extra].concat())
    };
    let out = padded(&["--epochs", "1", "--pad-frames", "5"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let b = lasr_model::ModelFile::load(&run2.join("model.safetensors")).unwrap();
    assert_eq!(b.front_end.pad_frames, 5);
    // The initial model's statistics stay, padding or not.
    assert_eq!(a.front_end.cmvn, b.front_end.cmvn);

    let resume = |pad: &str| {
        train_on(
            &data,
            &run2,
            &["--epochs", "2", "--resume", "--pad-frames", pad],
        )
    };
    let out = resume("3");
    let err = refused(&out);
    assert!(err.contains("--pad-frames 5"), "{err}");
    let out = resume("5");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn training_settings_are_set_by_flags_changed_by_init_and_kept_by_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = tiny_inputs_with(dir.path(), r#", "ctc_weight": 0.5"#);
    let config = |run: &str| {
        lasr_model::ModelFile::load(&dir.path().join(run).join("model.safetensors"))
            .unwrap()
            .las
            .config
    };
    // Flags override the config file.
    let out = train(
        &data,
        &dir.path().join("run1"),
        &cfg,
        &[
            "--seed",
            "3",
            "--dropout",
            "0.2",
            "--label-smoothing",
            "0.1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = config("run1");
    assert_eq!((first.dropout, first.label_smoothing), (0.2, 0.1));
    assert_eq!(first.ctc_weight, 0.5);
    let first_path = dir.path().join("run1/model.safetensors");
    let phase =
        |run: &str, extra: &[&str]| phase_from(&data, &dir.path().join(run), &first_path, extra);
    // A later phase keeps them unless told otherwise...
    let out = phase("run2", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kept = config("run2");
    assert_eq!(
        (kept.ctc_weight, kept.dropout, kept.label_smoothing),
        (0.5, 0.2, 0.1)
    );
    // ...and takes new values when told.
    let flags = [
        "--ctc-weight",
        "0.2",
        "--dropout",
        "0",
        "--label-smoothing",
        "0.05",
        "--sampling-rate",
        "0.1",
    ];
    let out = phase("run3", &flags);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let changed = config("run3");
    assert_eq!(
        (
            changed.ctc_weight,
            changed.dropout,
            changed.label_smoothing,
            changed.sampling_rate
        ),
        (0.2, 0.0, 0.05, 0.1)
    );
    // A phase cannot add or remove a head, nor take a value out of range.
    for (weight, what) in [("1", "--ctc-weight 1"), ("0", "--ctc-weight 0")] {
        let err = refused(&phase("run4", &["--ctc-weight", weight]));
        assert!(
            err.contains("keeps the model's heads") && err.contains(what),
            "{err}"
        );
    }
    let err = refused(&phase("run4", &["--dropout", "1.5"]));
    assert!(err.contains("dropout = 1.5 must lie in [0, 1)"), "{err}");
    // A resume goes on with the run's settings.
    let err = refused(&train_on(
        &data,
        &dir.path().join("run3"),
        &["--epochs", "2", "--resume", "--dropout", "0.3"],
    ));
    assert!(err.contains("trained with --dropout 0"), "{err}");
    let out = train_on(
        &data,
        &dir.path().join("run3"),
        &["--epochs", "2", "--resume", "--ctc-weight", "0.2"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(config("run3").ctc_weight, 0.2);
}

#[test]
fn utterance_shape_is_set_by_init_kept_by_later_phases_and_a_resume_must_match() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _, first) = first_model(dir.path());
    let a = lasr_model::ModelFile::load(&first).unwrap();
    assert!(!a.front_end.utterance_shape);
    let phase = |run: &str, from: &Path, extra: &[&str]| {
        let out = phase_from(&data, &dir.path().join(run), from, extra);
        assert!(out.status.success(), "{}", text(&out.stderr));
        lasr_model::ModelFile::load(&dir.path().join(run).join("model.safetensors")).unwrap()
    };
    let shaped = phase(
        "run2",
        &first,
        &["--utterance-shape", "true", "--utterance-spread", "0.25"],
    );
    assert!(shaped.front_end.utterance_shape);
    assert_eq!(shaped.front_end.utterance_spread, 0.25);
    // The statistics are the initial model's: the shape comes off after them.
    assert_eq!(a.front_end.cmvn, shaped.front_end.cmvn);
    let run2 = dir.path().join("run2/model.safetensors");
    let later = phase("run3", &run2, &[]);
    assert!(later.front_end.utterance_shape);
    assert_eq!(later.front_end.utterance_spread, 0.25);
    assert!(
        !phase("run4", &run2, &["--utterance-shape", "false"])
            .front_end
            .utterance_shape
    );
    let out = train_on(
        &data,
        &dir.path().join("run4"),
        &["--epochs", "2", "--resume", "--utterance-shape", "true"],
    );
    let err = refused(&out);
    assert!(
        err.contains("trained with --utterance-shape false"),
        "{err}"
    );
}

#[test]
fn spec_augment_masks_come_from_a_file_travel_in_the_model_and_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = tiny_inputs(dir.path());
    let masks = |name: &str, json: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, json).unwrap();
        path
    };
    let none = masks("none.json", r#"{"freq_masks": 0, "time_masks": 0}"#);
    let some = masks(
        "some.json",
        r#"{"freq_masks": 1, "max_freq_width": 20, "time_masks": 1, "max_time_width": 30, "max_time_fraction": 1.0}"#,
    );
    // Every run reads the same options, which say no SpecAugment.
    let off_options = masks("options.json", r#"{"spec_augment": false}"#);
    let run = |name: &str, extra: &[&str]| {
        let out_dir = dir.path().join(name);
        let out = train(
            &data,
            &out_dir,
            &cfg,
            &[
                &["--seed", "5", "--options", off_options.to_str().unwrap()][..],
                extra,
            ]
            .concat(),
        );
        (out, out_dir.join("model.safetensors"))
    };

    let (out, off) = run("off", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Masks that cover nothing train exactly as no SpecAugment at all ...
    let (out, empty) = run("empty", &["--spec-augment", none.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(tensors(&off), tensors(&empty));
    // ... and real ones change what the model learns, and stay in its file; the flag
    // turns SpecAugment on even where the options turn it off.
    let (out, masked) = run("masked", &["--spec-augment", some.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_ne!(tensors(&off), tensors(&masked));
    let m = lasr_model::ModelFile::load(&masked).unwrap();
    let sa = &m.front_end.features.spec_augment;
    assert_eq!(
        (
            sa.freq_masks,
            sa.max_freq_width,
            sa.time_masks,
            sa.max_time_width
        ),
        (1, 20, 1, 30)
    );

    // A resumed run goes on with SpecAugment and its masks, though the options file
    // says off: it ends where two epochs in one go do.
    let masked_dir = dir.path().join("masked");
    let (off_s, some_s) = (off_options.to_str().unwrap(), some.to_str().unwrap());
    let two = ["--seed", "5", "--options", off_s];
    let straight = dir.path().join("straight");
    let cfg_s = cfg.to_str().unwrap();
    let out = train_on(
        &data,
        &straight,
        &[
            &two[..],
            &[
                "--model-config",
                cfg_s,
                "--epochs",
                "2",
                "--spec-augment",
                some_s,
            ],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = train_on(
        &data,
        &masked_dir,
        &[&two[..], &["--epochs", "2", "--resume"]].concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("trained with SpecAugment on; going on with it"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        tensors(&straight.join("model.safetensors")),
        tensors(&masked)
    );
    // Its masks are the run's own.
    let out = train_on(
        &data,
        &masked_dir,
        &[
            &two[..],
            &[
                "--epochs",
                "3",
                "--resume",
                "--spec-augment",
                none.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    let err = refused(&out);
    assert!(err.contains("other SpecAugment masks"), "{err}");
    // --no-spec-augment turns it off for the rest of the run, without a word.
    let out = train_on(
        &data,
        &masked_dir,
        &[
            &two[..],
            &["--epochs", "3", "--resume", "--no-spec-augment"],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("going on"),
        "{}",
        text(&out.stderr)
    );
    let m = lasr_model::ModelFile::load(&masked).unwrap();
    assert_eq!(m.info["train_options"]["spec_augment"], false);

    let bad = masks("bad.json", r#"{"max_time_fraction": 2.0}"#);
    let (out, _) = run("bad", &["--spec-augment", bad.to_str().unwrap()]);
    let err = refused(&out);
    assert!(
        err.contains("bad.json") && err.contains("max_time_fraction"),
        "{err}"
    );
    let (out, _) = run(
        "both",
        &[
            "--spec-augment",
            some.to_str().unwrap(),
            "--no-spec-augment",
        ],
    );
    let err = refused(&out);
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn a_run_that_decodes_nothing_says_so_instead_of_printing_nan() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = tiny_inputs(dir.path());
    let options = dir.path().join("options.json");
    std::fs::write(&options, r#"{"epochs": 1, "validate_decode": 0}"#).unwrap();
    let out = train_on(
        &data,
        &dir.path().join("run"),
        &[
            "--model-config",
            cfg.to_str().unwrap(),
            "--options",
            options.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stderr.contains("epoch 1: valid loss") && stderr.contains("nothing decoded"),
        "{stderr}"
    );
    assert!(
        stdout.contains("done: 1 epochs; last validation loss")
            && stdout.contains("(nothing decoded)"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("NaN") && !stderr.contains("NaN"),
        "{stdout}{stderr}"
    );
}

#[test]
fn train_init_with_a_model_config_grows_a_speller_onto_a_ctc_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = tiny_inputs_with(dir.path(), r#", "ctc_weight": 1"#);
    let run1 = dir.path().join("run1");
    let out = train(&data, &run1, &cfg, &["--seed", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = run1.join("model.safetensors");

    let joint = dir.path().join("joint.json");
    std::fs::write(
        &joint,
        r#"{"listener_hidden": 8, "pyramid_layers": 1, "embedding_dim": 6, "speller_hidden": 10, "attention_dim": 8, "ctc_weight": 0.5}"#,
    )
    .unwrap();
    let run2 = dir.path().join("run2");
    let out = train_on(
        &data,
        &run2,
        &[
            "--init",
            first.to_str().unwrap(),
            "--model-config",
            joint.to_str().unwrap(),
            "--epochs",
            "1",
            "--lr",
            "0",
            "--speed-perturb",
            "0.8,1.0",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("grown:"),
        "{}",
        text(&out.stderr)
    );
    let grown = lasr_model::ModelFile::load(&run2.join("model.safetensors")).unwrap();
    assert_eq!(grown.las.config.speller_hidden, 10);
    assert!(grown.las.config.trains_speller());
    // At learning rate 0 the listener and CTC head are still the initial model's.
    let before: std::collections::HashMap<_, _> = tensors(&first).into_iter().collect();
    let after = tensors(&run2.join("model.safetensors"));
    let mut kept = 0;
    for (name, t) in &after {
        if !name.starts_with("speller.") {
            assert_eq!(t, &before[name], "{name}");
            kept += 1;
        }
    }
    assert!(kept > 0 && after.len() > kept);
    let a = lasr_model::ModelFile::load(&first).unwrap();
    assert_eq!(
        serde_json::to_value(&a.front_end).unwrap(),
        serde_json::to_value(&grown.front_end).unwrap()
    );

    // A listener of another width cannot grow from it.
    let wider = dir.path().join("wider.json");
    std::fs::write(
        &wider,
        r#"{"listener_hidden": 9, "pyramid_layers": 1, "embedding_dim": 6, "speller_hidden": 10, "attention_dim": 8, "ctc_weight": 0.5}"#,
    )
    .unwrap();
    let out = phase_from(
        &data,
        &dir.path().join("run3"),
        &first,
        &["--model-config", wider.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot grow") && err.contains("listener_hidden 9 (the initial model's 8)"),
        "{err}"
    );
}
