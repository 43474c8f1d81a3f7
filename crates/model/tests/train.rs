//! The training loop: stopping mid-epoch and resuming gives exactly the parameters of
//! an uninterrupted run, and the files are where the docs say.

use lasr_data::{Dataset, Utterance};
use lasr_decode::Vocab;
use lasr_features::FrontEndConfig;
use lasr_model::{train, Finish, Las, ModelConfig, ModelFile, Observer, Quiet, TrainOptions};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn dataset() -> Dataset {
    let texts = ["hi", "yo", "a b", "ok", "no", "go on"];
    let utterances = texts
        .iter()
        .enumerate()
        .map(|(i, t)| Utterance {
            id: format!("u{i}"),
            transcript: t.to_string(),
            feats: lasr_nn::init::uniform(
                (40 + 4 * i, 80),
                1.0,
                &mut ChaCha8Rng::seed_from_u64(i as u64),
            ),
        })
        .collect();
    Dataset { utterances }
}

fn model() -> ModelFile {
    let config = ModelConfig {
        listener_hidden: 6,
        pyramid_layers: 2,
        embedding_dim: 4,
        speller_hidden: 8,
        attention_dim: 5,
        ctc_weight: 0.3,
        dropout: 0.2,
        sampling_rate: 0.2,
        label_smoothing: 0.1,
        ..ModelConfig::default()
    };
    ModelFile::new(
        Las::new(config, &mut ChaCha8Rng::seed_from_u64(1)).unwrap(),
        FrontEndConfig::default(),
        Vocab::librispeech(),
    )
}

fn options() -> TrainOptions {
    TrainOptions {
        epochs: 3,
        learning_rate: 0.01,
        batch_frames: 1000,
        batch_utterances: 2,
        spec_augment: true,
        validate_decode: 2,
        checkpoint_every: 2,
        log_every: 1,
        warmup_steps: 2,
        final_lr_fraction: Some(0.1),
        weight_decay: 1e-4,
        ..TrainOptions::default()
    }
}

/// Asks to stop once `after` steps have run.
struct StopAt {
    after: u64,
}

impl Observer for StopAt {
    fn stop_requested(&mut self) -> bool {
        self.after = self.after.saturating_sub(1);
        self.after == 0
    }
}

#[test]
fn stop_and_resume_mid_epoch_equals_an_uninterrupted_run() {
    let data = dataset();
    let whole = tempfile::tempdir().unwrap();
    let finish = train(
        model(),
        &data,
        &data,
        &options(),
        whole.path(),
        false,
        &mut Quiet,
    )
    .unwrap();
    assert!(matches!(finish, Finish::Done(Some(v)) if v.epoch == 3));
    for f in [
        "model.safetensors",
        "best.safetensors",
        "optimizer.safetensors",
        "log.jsonl",
    ] {
        assert!(whole.path().join(f).is_file(), "{f}");
    }

    // The schedule: warm-up over 2 steps, then cosine down to a tenth at step 9.
    let log = std::fs::read_to_string(whole.path().join("log.jsonl")).unwrap();
    let rates: Vec<f64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"].as_f64())
        .collect();
    assert_eq!(rates.len(), 9, "{log}");
    assert!((rates[0] - 0.005).abs() < 1e-7 && (rates[1] - 0.01).abs() < 1e-7);
    assert!((rates[8] - 0.001).abs() < 1e-7, "{rates:?}");
    assert!(rates[1..].windows(2).all(|w| w[1] <= w[0]));

    // 3 batches per epoch: stop after 4 steps, inside the second epoch.
    let split = tempfile::tempdir().unwrap();
    let finish = train(
        model(),
        &data,
        &data,
        &options(),
        split.path(),
        false,
        &mut StopAt { after: 4 },
    )
    .unwrap();
    let Finish::Stopped(p) = finish else {
        panic!("did not stop: {finish:?}")
    };
    assert_eq!((p.epoch, p.batch, p.step), (1, 1, 4));
    let stopped = ModelFile::load(&split.path().join("model.safetensors")).unwrap();
    let finish = train(
        model(),
        &data,
        &data,
        &options(),
        split.path(),
        true,
        &mut Quiet,
    )
    .unwrap();
    assert!(matches!(finish, Finish::Done(Some(v)) if v.epoch == 3));

    let a = ModelFile::load(&whole.path().join("model.safetensors")).unwrap();
    let b = ModelFile::load(&split.path().join("model.safetensors")).unwrap();
    assert_ne!(
        stopped.las, a.las,
        "the stop really happened before the end"
    );
    assert_eq!(
        a.las, b.las,
        "resumed run differs from the uninterrupted one"
    );
    // Each epoch's training loss covers the whole epoch, the stopped one included.
    let train_losses = |out: &std::path::Path| -> Vec<f64> {
        std::fs::read_to_string(out.join("log.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter_map(|v| v.get("train_loss").and_then(|t| t.as_f64()))
            .collect()
    };
    let (whole, split) = (train_losses(whole.path()), train_losses(split.path()));
    assert_eq!(whole.len(), 3);
    assert_eq!(whole.len(), split.len());
    for (a, b) in whole.iter().zip(&split) {
        assert!((a - b).abs() <= 1e-12 * a.abs(), "{whole:?} vs {split:?}");
    }
}

/// The run's log, and the step of each validation it records.
fn validation_steps(out: &std::path::Path) -> (String, Vec<u64>) {
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let steps = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("valid").is_some())
        .map(|v| v["valid"]["step"].as_u64().unwrap())
        .collect();
    (log, steps)
}

#[test]
fn validation_runs_every_n_steps_inside_epochs_as_well() {
    let data = dataset();
    let out = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        epochs: 2,
        validate_every: 2,
        ..options()
    };
    train(model(), &data, &data, &opts, out.path(), false, &mut Quiet).unwrap();
    let (log, steps) = validation_steps(out.path());
    // 3 batches per epoch: mid-epoch at step 2 and 4, epoch ends at 3 and 6 (step 6
    // is an epoch end, validated once).
    assert_eq!(steps, vec![2, 3, 4, 6], "{log}");
    assert!(out.path().join("best.safetensors").is_file());
}

#[derive(Default)]
struct Validations(Vec<lasr_model::Validation>);

impl Observer for Validations {
    fn validated(&mut self, v: &lasr_model::Validation) {
        self.0.push(*v);
    }
}

#[test]
fn a_ctc_only_model_validates_its_ctc_decoding_and_leaves_the_speller_alone() {
    let data = dataset();
    let out = tempfile::tempdir().unwrap();
    let mut start = model();
    start.las.config.ctc_weight = 1.0;
    // options() has weight decay, which alone would move an unfrozen speller.
    let opts = TrainOptions {
        epochs: 2,
        ..options()
    };
    assert!(opts.weight_decay > 0.0);
    let mut seen = Validations::default();
    train(
        start.clone(),
        &data,
        &data,
        &opts,
        out.path(),
        false,
        &mut seen,
    )
    .unwrap();
    assert!(!seen.0.is_empty());
    for v in &seen.0 {
        assert_eq!(Some(v.cer), v.ctc_cer, "{v:?}");
        assert_eq!(Some(v.loss), v.ctc_loss, "{v:?}");
    }
    // The log's losses are the CTC ones, not a zero attention term.
    let log = std::fs::read_to_string(out.path().join("log.jsonl")).unwrap();
    let mut steps = 0;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(loss) = v["loss"].as_f64() {
            assert_eq!(Some(loss), v["ctc"].as_f64(), "{v}");
            assert!(loss > 0.0, "{v}");
            steps += 1;
        }
    }
    assert!(steps > 0);
    let trained = ModelFile::load(&out.path().join("model.safetensors")).unwrap();
    assert_eq!(trained.las.speller, start.las.speller);
    assert_ne!(trained.las.listener, start.las.listener);
}

#[test]
fn the_last_epochs_models_are_kept_for_averaging() {
    let data = dataset();
    let out = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        epochs: 3,
        keep_epochs: 2,
        ..options()
    };
    // Left by an earlier run that kept more: pruned too. Other names are not touched.
    std::fs::write(out.path().join("epoch-0.safetensors"), b"old").unwrap();
    std::fs::write(out.path().join("epoch-x.safetensors"), b"mine").unwrap();
    train(model(), &data, &data, &opts, out.path(), false, &mut Quiet).unwrap();
    assert!(!out.path().join("epoch-0.safetensors").exists());
    assert!(out.path().join("epoch-x.safetensors").exists());
    let kept: Vec<bool> = (1..=3)
        .map(|e| out.path().join(format!("epoch-{e}.safetensors")).is_file())
        .collect();
    assert_eq!(kept, [false, true, true]);
    let last = ModelFile::load(&out.path().join("epoch-3.safetensors")).unwrap();
    let latest = ModelFile::load(&out.path().join("model.safetensors")).unwrap();
    assert_eq!(last.las, latest.las);
}

#[test]
fn a_stop_right_after_a_validation_step_still_validates_there() {
    let data = dataset();
    let out = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        epochs: 2,
        validate_every: 2,
        ..options()
    };
    let stopped = train(
        model(),
        &data,
        &data,
        &opts,
        out.path(),
        false,
        &mut StopAt { after: 4 },
    )
    .unwrap();
    assert!(matches!(stopped, Finish::Stopped(p) if p.step == 4));
    train(model(), &data, &data, &opts, out.path(), true, &mut Quiet).unwrap();
    let (log, steps) = validation_steps(out.path());
    assert_eq!(steps, vec![2, 3, 4, 6], "as without the stop: {log}");
}

#[test]
fn a_model_started_or_resumed_from_half_precision_checkpoints_in_f32() {
    let mut start = model();
    start.storage = lasr_nn::Storage::F16;
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (dataset(), dir.path());
    let options = TrainOptions {
        epochs: 1,
        keep_epochs: 2,
        ..options()
    };
    let all_f32 = |files: &[&str]| {
        for f in files {
            let bytes = std::fs::read(out.join(f)).unwrap();
            assert_eq!(
                lasr_nn::checkpoint::stored_as(&bytes).unwrap(),
                lasr_nn::Storage::F32,
                "{f}"
            );
            assert_eq!(
                lasr_nn::checkpoint::metadata(&bytes).unwrap()["lasr.format"],
                "1"
            );
        }
    };
    train(start, &data, &data, &options, out, false, &mut Quiet).unwrap();
    all_f32(&[
        "model.safetensors",
        "best.safetensors",
        "epoch-1.safetensors",
    ]);
    // The latest checkpoint shrunk in place, then the run resumed for another epoch.
    let mut shrunk = ModelFile::load(&out.join("model.safetensors")).unwrap();
    shrunk.storage = lasr_nn::Storage::F16;
    shrunk.save(&out.join("model.safetensors")).unwrap();
    let options = TrainOptions {
        epochs: 2,
        ..options
    };
    train(model(), &data, &data, &options, out, true, &mut Quiet).unwrap();
    all_f32(&["model.safetensors", "epoch-2.safetensors"]);
}
