//! Checkpoint averaging.

use lasr_decode::Vocab;
use lasr_features::FrontEndConfig;
use lasr_model::{Las, ModelConfig, ModelFile};
use lasr_nn::Module;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn model(seed: u64, config: ModelConfig) -> ModelFile {
    ModelFile::new(
        Las::new(config, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap(),
        FrontEndConfig::default(),
        Vocab::librispeech(),
    )
}

fn small() -> ModelConfig {
    ModelConfig {
        listener_hidden: 4,
        pyramid_layers: 1,
        embedding_dim: 3,
        speller_hidden: 5,
        attention_dim: 4,
        ctc_weight: 0.3,
        ..ModelConfig::default()
    }
}

fn flat(m: &ModelFile) -> Vec<f32> {
    let mut v = Vec::new();
    m.las.visit("", &mut |_, t| v.extend(t.iter().copied()));
    v
}

#[test]
fn the_average_is_the_elementwise_mean_of_one_runs_checkpoints() {
    let (a, b, c) = (model(1, small()), model(2, small()), model(3, small()));
    let mean = ModelFile::average(&[a.clone(), b.clone(), c.clone()]).unwrap();
    let (fa, fb, fc, fm) = (flat(&a), flat(&b), flat(&c), flat(&mean));
    assert_eq!(fm.len(), fa.len());
    for i in 0..fa.len() {
        let want = (f64::from(fa[i]) + f64::from(fb[i]) + f64::from(fc[i])) / 3.0;
        assert!((f64::from(fm[i]) - want).abs() < 1e-6, "element {i}");
    }
    // The mean is a full-precision model, whatever the first input's storage.
    let mut half = a.clone();
    half.storage = lasr_nn::Storage::F16;
    let mixed = ModelFile::average(&[half, b.clone()]).unwrap();
    assert_eq!(mixed.storage, lasr_nn::Storage::F32);
    // One model averages to itself, exactly.
    assert_eq!(
        flat(&ModelFile::average(std::slice::from_ref(&a)).unwrap()),
        fa
    );
}

#[test]
fn models_of_different_runs_are_refused() {
    let a = model(1, small());
    let other = model(
        1,
        ModelConfig {
            speller_hidden: 6,
            ..small()
        },
    );
    let err = ModelFile::average(&[a.clone(), other])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model 2") && err.contains("model config"),
        "{err}"
    );
    let mut cmvn = a.clone();
    cmvn.front_end.cmvn = Some(lasr_features::Cmvn {
        frames: 1,
        mean: vec![0.5; 80],
        std: vec![1.0; 80],
    });
    let err = ModelFile::average(&[a, cmvn]).unwrap_err().to_string();
    assert!(err.contains("front end"), "{err}");
    assert!(ModelFile::average(&[]).is_err());
}
