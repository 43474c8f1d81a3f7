//! The recurrent core at the reference model's sizes (see ../shared/reference):
//! the LAS listener, BiLSTM 80 -> 2x256 then three pyramid BiLSTMs 1024 -> 2x256,
//! on a batch of 8 x 1000 frames.
//!
//!     cargo bench -p lasr-nn --bench nn
//!
//! Compare with `../shared/reference/run-pytorch-reference.sh 1` ("encoder forward")
//! in the same sitting.

use criterion::{criterion_group, criterion_main, Criterion};
use lasr_nn::{pyramid_reduce, pyramid_reduce_backward, BiLstm, BiLstmCache, Module};
use ndarray::Array3;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const BATCH: usize = 8;
const FRAMES: usize = 1000;

struct Listener {
    layers: Vec<BiLstm>,
}

impl Listener {
    fn new() -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut layers = vec![BiLstm::new(80, 256, 0, &mut rng)];
        for _ in 0..3 {
            layers.push(BiLstm::new(1024, 256, 0, &mut rng));
        }
        Listener { layers }
    }

    fn forward(&self, x: &Array3<f32>) -> (Array3<f32>, Vec<(usize, BiLstmCache)>) {
        let mut h = x.clone();
        let mut caches = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let steps = h.dim().0;
            if i > 0 {
                h = pyramid_reduce(h.view());
            }
            let (y, cache) = layer.forward(h.view(), None).unwrap();
            caches.push((steps, cache));
            h = y;
        }
        (h, caches)
    }

    fn backward(&self, caches: &[(usize, BiLstmCache)], dy: &Array3<f32>, grads: &mut [BiLstm]) {
        let mut d = dy.clone();
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let (steps, cache) = &caches[i];
            d = layer.backward(cache, d.view(), &mut grads[i]).unwrap();
            if i > 0 {
                d = pyramid_reduce_backward(d.view(), *steps);
            }
        }
    }
}

fn listener(c: &mut Criterion) {
    let model = Listener::new();
    let params: usize = model.layers.iter().map(|l| l.num_params()).sum();
    assert_eq!(
        params, 8_568_832,
        "the reference listener's parameter count"
    );
    let x = lasr_nn::init::uniform((FRAMES, BATCH, 80), 1.0, &mut ChaCha8Rng::seed_from_u64(1));
    let mut group = c.benchmark_group("listener_8x1000");
    group.sample_size(10);
    group.bench_function("forward", |b| b.iter(|| model.forward(&x).0));
    let (y, caches) = model.forward(&x);
    let dy = Array3::from_elem(y.dim(), 1e-3f32);
    let mut grads: Vec<BiLstm> = model.layers.iter().map(|l| l.zeros_like()).collect();
    group.bench_function("backward", |b| {
        b.iter(|| model.backward(&caches, &dy, &mut grads))
    });
    group.finish();
}

criterion_group!(benches, listener);
criterion_main!(benches);
