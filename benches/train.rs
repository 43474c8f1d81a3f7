//! One LAS training step at the reference sizes (13.6 M parameters) on the reference
//! benchmark batch: 8 utterances x 1000 frames x 80 features, 150 characters each.
//! Compare with `../shared/reference/run-pytorch-reference.sh 1` ("train step").
//!
//!     RAYON_NUM_THREADS=1 cargo bench -p lasr-model --bench train

use criterion::{criterion_group, Criterion};
use lasr_model::{Batch, Las, ModelConfig};
use lasr_nn::Module;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn train_step(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let las = Las::new(ModelConfig::default(), &mut rng).unwrap();
    let batch = Batch {
        feats: lasr_nn::init::uniform((1000, 8, 80), 1.0, &mut rng),
        lengths: vec![1000; 8],
        // 149 characters plus <eos>: 150 scored steps, as in the reference.
        targets: (0..8)
            .map(|_| {
                (0..149)
                    .map(|_| 3 + (rng.next_u32() % 29) as usize)
                    .collect()
            })
            .collect(),
        seeds: None,
    };
    let mut grads = las.zeros_like();
    let mut group = c.benchmark_group("las_train_step_8x1000x150");
    group.sample_size(10);
    group.bench_function("forward_backward", |b| {
        b.iter(|| {
            grads.zero();
            las.train_step(&batch, &mut grads).unwrap()
        })
    });
    // What `lasr train` runs: the batch cut into two utterance groups, one per core.
    group.bench_function("forward_backward_2_parts", |b| {
        b.iter(|| {
            grads.zero();
            las.train_step_parallel(&batch, &mut grads, 2).unwrap()
        })
    });
    // The same with the Adam update, as the PyTorch reference's "train step" times it
    // (no clipping there either); the model trains on the one batch as it goes.
    let mut trained = las.clone();
    let mut adam = lasr_nn::Adam::new(&trained, 1e-3);
    group.bench_function("forward_backward_adam_2_parts", |b| {
        b.iter(|| {
            grads.zero();
            let stats = trained.train_step_parallel(&batch, &mut grads, 2).unwrap();
            adam.step(&mut trained, &grads);
            stats
        })
    });
    group.finish();
}

/// The shipped model's shape (joint CTC, 4x reduction), content-only attention
/// against location-aware attention (10 filters of 31 frames), and against CTC alone
/// (`ctc_weight` 1, which skips the speller), same batch.
fn location_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("small_ctc_train_step_8x1000x150");
    group.sample_size(10);
    for (name, channels, ctc_weight) in [
        ("content", 0, 0.5),
        ("location", 10, 0.5),
        ("ctc_only", 0, 1.0),
    ] {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let config = ModelConfig {
            listener_hidden: 160,
            pyramid_layers: 2,
            embedding_dim: 64,
            speller_hidden: 256,
            attention_dim: 128,
            ctc_weight,
            location_channels: channels,
            location_width: 31,
            ..ModelConfig::default()
        };
        let las = Las::new(config, &mut rng).unwrap();
        let batch = Batch {
            feats: lasr_nn::init::uniform((1000, 8, 80), 1.0, &mut rng),
            lengths: vec![1000; 8],
            targets: (0..8)
                .map(|_| {
                    (0..149)
                        .map(|_| 4 + (rng.next_u32() % 28) as usize)
                        .collect()
                })
                .collect(),
            seeds: None,
        };
        let mut grads = las.zeros_like();
        group.bench_function(name, |b| {
            b.iter(|| {
                grads.zero();
                las.train_step(&batch, &mut grads).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, train_step, location_cost);
// criterion_main!, with the heap policy the `lasr` binary sets (lasr_nn::heap).
fn main() {
    lasr_nn::heap::keep_freed_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
