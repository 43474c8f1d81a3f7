//! lasr against a PyTorch debug state (weights, input, logits, loss, gradients) made
//! by tests/golden/make_golden.py from the reference model's definition. Loading the
//! PyTorch state_dict with lasr's strict loader also proves the parameter names match.

use std::path::PathBuf;

use lasr_model::{Batch, Las, ModelConfig};
use lasr_nn::{checkpoint, Module};
use ndarray::{Array2, Array3};
use rand::SeedableRng;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn tensor3(st: &safetensors::SafeTensors, name: &str) -> Array3<f32> {
    let t = st.tensor(name).unwrap();
    let v: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let s = t.shape();
    Array3::from_shape_vec((s[0], s[1], s[2]), v).unwrap()
}

#[test]
fn matches_pytorch_logits_loss_and_every_gradient() {
    let bytes = std::fs::read(golden("weights.safetensors")).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let config: ModelConfig =
        serde_json::from_str(&header.metadata().as_ref().unwrap()["config"]).unwrap();
    let mut las = Las::new(config, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0)).unwrap();
    checkpoint::load(&golden("weights.safetensors"), &mut las).unwrap();

    let io_bytes = std::fs::read(golden("io.safetensors")).unwrap();
    let io = safetensors::SafeTensors::deserialize(&io_bytes).unwrap();
    // PyTorch is batch-first; lasr is time-major.
    let x = tensor3(&io, "x")
        .permuted_axes([1, 0, 2])
        .as_standard_layout()
        .into_owned();
    let y_t = io.tensor("y").unwrap();
    let (b, l) = (y_t.shape()[0], y_t.shape()[1]);
    let y: Vec<f32> = y_t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let y = Array2::from_shape_vec((b, l), y).unwrap();
    // The reference scores y, whose last token is <eos>; lasr appends <eos> itself.
    let targets: Vec<Vec<usize>> = y
        .rows()
        .into_iter()
        .map(|r| r.iter().take(l - 1).map(|&v| v as usize).collect())
        .collect();
    let batch = Batch {
        lengths: vec![x.dim().0; b],
        feats: x,
        targets,
        seeds: None,
    };
    let want_logits = tensor3(&io, "logits").permuted_axes([1, 0, 2]).to_owned();
    let want_loss = f64::from(f32::from_le_bytes(
        io.tensor("loss").unwrap().data()[..4].try_into().unwrap(),
    ));

    let logits = las.logits(&batch).unwrap();
    let worst = (&logits - &want_logits)
        .mapv(f32::abs)
        .fold(0f32, |m, v| m.max(*v));
    eprintln!("logits: max |diff| {worst:.2e}");
    assert!(worst < 1e-5, "logits differ by {worst}");

    let (stats, cache) = las.forward(&batch).unwrap();
    eprintln!("loss: lasr {:.7} PyTorch {want_loss:.7}", stats.mean());
    assert!((stats.mean() - want_loss).abs() < 1e-5 * want_loss);

    let mut grads = las.zeros_like();
    las.backward(&cache, &mut grads).unwrap();
    let mut want = las.zeros_like();
    checkpoint::load(&golden("grads.safetensors"), &mut want).unwrap();
    let mut mine: Vec<(String, Vec<f32>)> = Vec::new();
    grads.visit("", &mut |n, t| mine.push((n, t.iter().copied().collect())));
    let mut k = 0;
    want.visit("", &mut |name, t| {
        let (n2, g) = &mine[k];
        assert_eq!(&name, n2);
        let scale = t.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let diff = g
            .iter()
            .zip(t.iter())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("{name}: max |diff| {diff:.2e} (largest gradient {scale:.2e})");
        assert!(
            diff <= 1e-5 * scale + 1e-9,
            "{name}: gradients differ by {diff}, largest is {scale}"
        );
        k += 1;
    });
    assert_eq!(k, mine.len());
}
