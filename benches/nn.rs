//! The recurrent core at the reference model's sizes (see ../shared/reference):
//! the LAS listener, BiLSTM 80 -> 2x256 then three pyramid BiLSTMs 1024 -> 2x256,
//! on a batch of 8 x 1000 frames; and the same stack of BiGRUs (`listener_gru_8x1000`),
//! the cell a model config may choose instead (3 gates to the LSTM's 4). Each also as
//! two halves of 4 on the pool (`forward_2_halves`, `backward_2_halves`), the way the
//! training step runs its listeners.
//!
//!     cargo bench -p lasr-nn --bench nn
//!
//! Compare with `../shared/reference/run-pytorch-reference.sh 1` ("encoder forward")
//! in the same sitting.

use criterion::{criterion_group, Criterion};
use lasr_nn::{
    pyramid_reduce, pyramid_reduce_backward, Bidirectional, BidirectionalCache, Gru, Lstm, Module,
    Recurrent,
};
use ndarray::Array3;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const BATCH: usize = 8;
const FRAMES: usize = 1000;

struct Listener<R: Recurrent> {
    layers: Vec<Bidirectional<R>>,
}

type Caches<R> = Vec<(usize, BidirectionalCache<R>)>;

impl<R: Recurrent> Listener<R> {
    fn new() -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut layers = vec![Bidirectional::new(80, 256, 0, &mut rng)];
        for _ in 0..3 {
            layers.push(Bidirectional::new(1024, 256, 0, &mut rng));
        }
        Listener { layers }
    }

    fn forward(&self, x: &Array3<f32>) -> (Array3<f32>, Caches<R>) {
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

    fn backward(&self, caches: &Caches<R>, dy: &Array3<f32>, grads: &mut [Bidirectional<R>]) {
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

/// Forward, and backward from a fixed output gradient, of `model` under `name`.
fn run<R: Recurrent>(c: &mut Criterion, name: &str, model: &Listener<R>) {
    let x = lasr_nn::init::uniform((FRAMES, BATCH, 80), 1.0, &mut ChaCha8Rng::seed_from_u64(1));
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    group.bench_function("forward", |b| b.iter(|| model.forward(&x).0));
    // The same batch as two halves of 4 on the pool's threads, as lasr's training
    // step runs its listeners: on 2 threads, mostly one half per thread (a thread
    // done early may steal the other half's second direction).
    let halves: Vec<Array3<f32>> = (0..2)
        .map(|i| {
            x.slice(ndarray::s![.., i * BATCH / 2..(i + 1) * BATCH / 2, ..])
                .to_owned()
        })
        .collect();
    group.bench_function("forward_2_halves", |b| {
        b.iter(|| {
            use rayon::prelude::*;
            halves
                .par_iter()
                .map(|h| model.forward(h).0)
                .collect::<Vec<_>>()
        })
    });
    let (y, caches) = model.forward(&x);
    let dy = Array3::from_elem(y.dim(), 1e-3f32);
    let mut grads: Vec<_> = model.layers.iter().map(|l| l.zeros_like()).collect();
    group.bench_function("backward", |b| {
        b.iter(|| model.backward(&caches, &dy, &mut grads))
    });
    let mut parts: Vec<_> = halves
        .iter()
        .map(|h| {
            let (y, caches) = model.forward(h);
            let dy = Array3::from_elem(y.dim(), 1e-3f32);
            let grads: Vec<_> = model.layers.iter().map(|l| l.zeros_like()).collect();
            (caches, dy, grads)
        })
        .collect();
    group.bench_function("backward_2_halves", |b| {
        b.iter(|| {
            use rayon::prelude::*;
            parts
                .par_iter_mut()
                .for_each(|(caches, dy, grads)| model.backward(caches, dy, grads))
        })
    });
    group.finish();
}

fn listener(c: &mut Criterion) {
    let model = Listener::<Lstm>::new();
    let params: usize = model.layers.iter().map(|l| l.num_params()).sum();
    assert_eq!(
        params, 8_568_832,
        "the reference listener's parameter count"
    );
    run(c, "listener_8x1000", &model);
    let gru = Listener::<Gru>::new();
    let params: usize = gru.layers.iter().map(|l| l.num_params()).sum();
    // Three gates' weights and both bias vectors where the LSTM has four.
    assert_eq!(
        params,
        8_568_832 / 4 * 3,
        "the GRU listener's parameter count"
    );
    run(c, "listener_gru_8x1000", &gru);
}

criterion_group!(benches, listener);
// criterion_main!, with the heap policy the `lasr` binary sets (lasr_nn::heap).
fn main() {
    lasr_nn::heap::keep_freed_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
