//! Optimisers, clipping and checkpoints, and a small model that actually learns.

use std::collections::HashMap;

use lasr_nn::checkpoint;
use lasr_nn::{
    clip_grad_norm, grad_norm, softmax_cross_entropy, Adam, BiLstm, Error, Linear, Module, Sgd,
};
use ndarray::{Array1, Array2, Array3};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

#[test]
fn adam_follows_pytorchs_update_rule() {
    let mut p = Linear::new(3, 2, true, &mut rng(1));
    let start = p.clone();
    let mut opt = Adam::new(&p, 0.01);
    opt.weight_decay = 0.1;
    let grads: Vec<Linear> = (0..5)
        .map(|i| {
            let mut g = p.zeros_like();
            g.weight = lasr_nn::init::uniform((2, 3), 1.0, &mut rng(10 + i));
            g.bias = Some(lasr_nn::init::uniform(2, 1.0, &mut rng(20 + i)));
            g
        })
        .collect();
    for g in &grads {
        opt.step(&mut p, g);
    }
    // Independent f64 replay of torch.optim.Adam for one weight.
    let (mut x, mut m, mut v) = (f64::from(start.weight[(1, 2)]), 0f64, 0f64);
    for (t, g) in grads.iter().enumerate() {
        let t = (t + 1) as i32;
        let g = f64::from(g.weight[(1, 2)]) + 0.1 * x;
        m = 0.9 * m + 0.1 * g;
        v = 0.999 * v + 0.001 * g * g;
        let mhat = m / (1.0 - 0.9f64.powi(t));
        let vhat = v / (1.0 - 0.999f64.powi(t));
        x -= 0.01 * mhat / (vhat.sqrt() + 1e-8);
    }
    assert!(
        (f64::from(p.weight[(1, 2)]) - x).abs() < 1e-6,
        "{} vs {x}",
        p.weight[(1, 2)]
    );
    assert_eq!(opt.t, 5);
}

#[test]
fn adams_first_step_moves_every_parameter_by_the_learning_rate() {
    let mut p = Linear::new(4, 3, true, &mut rng(2));
    let start = p.clone();
    let mut g = p.zeros_like();
    g.weight = lasr_nn::init::uniform((3, 4), 5.0, &mut rng(3));
    g.bias = Some(Array1::from_vec(vec![1e-3, -2.0, 40.0]));
    Adam::new(&p, 0.05).step(&mut p, &g);
    for (a, b) in p.weight.iter().zip(start.weight.iter()) {
        assert!(((a - b).abs() - 0.05).abs() < 1e-4, "moved {}", a - b);
    }
}

#[test]
fn adam_leaves_frozen_parameters_alone_even_under_weight_decay() {
    let start = Linear::new(4, 3, true, &mut rng(5));
    let mut g = start.zeros_like();
    g.weight = lasr_nn::init::uniform((3, 4), 1.0, &mut rng(6));
    g.bias = Some(Array1::from_vec(vec![0.5, -1.0, 2.0]));
    let run = |frozen: Vec<String>| {
        let mut p = start.clone();
        let mut opt = Adam::new(&p, 0.01);
        opt.weight_decay = 0.1;
        opt.frozen = frozen;
        for _ in 0..3 {
            opt.step(&mut p, &g);
        }
        (p, opt)
    };
    let (free, _) = run(Vec::new());
    assert_ne!(free.weight, start.weight);
    assert_ne!(free.bias, start.bias);
    // Frozen first and last: a skipped parameter leaves the others paired with their
    // own gradients and moments (the weight is visited before the bias).
    let (part, opt) = run(vec!["weight".into()]);
    assert_eq!(part.weight, start.weight, "a frozen parameter never moves");
    assert!(opt.m.weight.iter().all(|&m| m == 0.0));
    assert_eq!(part.bias, free.bias);
    let (part, _) = run(vec!["bias".into()]);
    assert_eq!(part.bias, start.bias);
    assert_eq!(part.weight, free.weight);
}

#[test]
fn sgd_with_momentum() {
    let mut p = Linear::new(2, 1, false, &mut rng(4));
    let w0 = p.weight[(0, 0)];
    let mut g = p.zeros_like();
    g.weight.fill(1.0);
    let mut opt = Sgd::new(&p, 0.1, 0.9);
    opt.step(&mut p, &g);
    opt.step(&mut p, &g);
    // Velocity 1 then 1.9: total step 0.1 * 2.9.
    assert!((p.weight[(0, 0)] - (w0 - 0.29)).abs() < 1e-6);
}

#[test]
fn clipping_scales_to_the_limit_and_refuses_nan() {
    let mut g = Linear::new(3, 2, true, &mut rng(5));
    g.weight.fill(3.0);
    g.bias = Some(Array1::from_elem(2, 4.0));
    let before = grad_norm(&g);
    assert!((before - (6.0 * 9.0 + 2.0 * 16.0f64).sqrt()).abs() < 1e-6);
    let reported = clip_grad_norm(&mut g, 1.0).unwrap();
    assert!((reported - before).abs() < 1e-9);
    assert!((grad_norm(&g) - 1.0).abs() < 1e-5);
    // Below the limit nothing changes.
    let snapshot = g.clone();
    clip_grad_norm(&mut g, 10.0).unwrap();
    assert_eq!(g, snapshot);
    g.bias.as_mut().unwrap()[1] = f32::NAN;
    match clip_grad_norm(&mut g, 1.0) {
        Err(Error::NonFinite { tensor }) => assert_eq!(tensor, "bias"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_bilstm_tagger_learns_to_count_ones_seen_so_far() {
    // Label at step t: parity of the number of ones in x[..=t] (needs memory).
    let mut g = rng(6);
    let (steps, batch) = (12, 16);
    let x = Array3::from_shape_fn((steps, batch, 1), |_| {
        (rand::Rng::next_u32(&mut g) & 1) as f32
    });
    let mut targets = Vec::new();
    for t in 0..steps {
        for b in 0..batch {
            let ones: f32 = (0..=t).map(|u| x[(u, b, 0)]).sum();
            targets.push(Some(ones as usize % 2));
        }
    }
    #[derive(Clone)]
    struct Tagger {
        rnn: BiLstm,
        out: Linear,
    }
    impl Module for Tagger {
        fn visit<'a>(&'a self, p: &str, f: &mut dyn FnMut(String, ndarray::ArrayViewD<'a, f32>)) {
            self.rnn.visit(&lasr_nn::module::join(p, "rnn"), f);
            self.out.visit(&lasr_nn::module::join(p, "out"), f);
        }
        fn visit_mut<'a>(
            &'a mut self,
            p: &str,
            f: &mut dyn FnMut(String, ndarray::ArrayViewMutD<'a, f32>),
        ) {
            self.rnn.visit_mut(&lasr_nn::module::join(p, "rnn"), f);
            self.out.visit_mut(&lasr_nn::module::join(p, "out"), f);
        }
        fn zeros_like(&self) -> Self {
            Tagger {
                rnn: self.rnn.zeros_like(),
                out: self.out.zeros_like(),
            }
        }
    }
    let mut model = Tagger {
        rnn: BiLstm::new(1, 16, 0, &mut g),
        out: Linear::new(32, 2, true, &mut g),
    };
    let mut opt = Adam::new(&model, 0.02);
    let mut losses = Vec::new();
    for _ in 0..150 {
        let (h, cache) = model.rnn.forward(x.view(), None).unwrap();
        let flat = h.view().into_shape_with_order((steps * batch, 32)).unwrap();
        let logits = model.out.forward(flat).unwrap();
        let ce = softmax_cross_entropy(logits.view(), &targets).unwrap();
        losses.push(ce.mean());
        let mut grads = model.zeros_like();
        let dflat = model
            .out
            .backward(flat, ce.grad.view(), &mut grads.out)
            .unwrap();
        let dh = dflat.into_shape_with_order((steps, batch, 32)).unwrap();
        model
            .rnn
            .backward(&cache, dh.view(), &mut grads.rnn)
            .unwrap();
        clip_grad_norm(&mut grads, 5.0).unwrap();
        opt.step(&mut model, &grads);
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(
        (first - 2f64.ln()).abs() < 0.1,
        "starts near chance: {first}"
    );
    assert!(last < 0.1 * first, "loss went from {first} to {last}");
}

fn metadata() -> HashMap<String, String> {
    HashMap::from([
        ("lasr.format".to_string(), "1".to_string()),
        ("config".to_string(), "{\"hidden\": 4}".to_string()),
    ])
}

#[test]
fn checkpoints_round_trip_and_are_plain_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let model = BiLstm::new(3, 4, 0, &mut rng(7));
    checkpoint::save(&path, &model, &metadata()).unwrap();
    // Nothing but the checkpoint is left in the directory.
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
    let mut other = BiLstm::new(3, 4, 0, &mut rng(8));
    assert_ne!(other, model);
    let meta = checkpoint::load(&path, &mut other).unwrap();
    assert_eq!(other, model);
    assert_eq!(meta, metadata());
    // Readable by the reference safetensors implementation, with PyTorch's names.
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("weight_hh_l0_reverse").unwrap();
    assert_eq!(t.shape(), &[16, 4]);
    let first = f32::from_le_bytes(t.data()[..4].try_into().unwrap());
    assert_eq!(first, model.backward.weight_hh[(0, 0)]);
}

#[test]
fn the_same_model_and_metadata_give_the_same_bytes() {
    let model = BiLstm::new(3, 4, 0, &mut rng(7));
    // Each map gets its own hash seed, so they iterate in different orders; a file
    // written in a map's order would differ between them (1 chance in 12! of not).
    let meta = || -> HashMap<String, String> {
        (0..12)
            .map(|k| (format!("key.{k}"), format!("value {k}")))
            .collect()
    };
    let (a, b) = (meta(), meta());
    let first = checkpoint::to_bytes(&model, "", &a).unwrap();
    assert_eq!(first, checkpoint::to_bytes(&model, "", &b).unwrap());
    // Still a safetensors file, its data 8-byte aligned, holding everything.
    let header = u64::from_le_bytes(first[..8].try_into().unwrap());
    assert_eq!(header % 8, 0);
    assert_eq!(checkpoint::metadata(&first).unwrap(), a);
    let st = safetensors::SafeTensors::deserialize(&first).unwrap();
    let mut names = Vec::new();
    model.visit("", &mut |name, _| names.push(name));
    assert_eq!(st.len(), names.len());
    let mut back = BiLstm::new(3, 4, 0, &mut rng(8));
    checkpoint::from_bytes(&first, "", &mut back).unwrap();
    assert_eq!(back, model);
}

#[test]
fn bad_checkpoints_are_refused_naming_the_file_and_tensor_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ck.safetensors");
    let model = Linear::new(3, 2, true, &mut rng(9));
    checkpoint::save(&path, &model, &HashMap::new()).unwrap();
    let mut target = Linear::new(3, 2, true, &mut rng(10));
    let before = target.clone();
    let err_of = |target: &mut Linear, p: &std::path::Path| {
        checkpoint::load(p, target).unwrap_err().to_string()
    };

    let mut wrong_shape = Linear::new(4, 2, true, &mut rng(11));
    let e = checkpoint::load(&path, &mut wrong_shape)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ck.safetensors") && e.contains("weight") && e.contains("[2, 3]"),
        "{e}"
    );

    let mut no_bias = Linear::new(3, 2, false, &mut rng(12));
    let e = checkpoint::load(&path, &mut no_bias)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bias") && e.contains("does not have"), "{e}");

    // Every problem at once: a mis-shaped weight and a tensor the model lacks.
    let mut narrow_no_bias = Linear::new(4, 2, false, &mut rng(14));
    let e = checkpoint::load(&path, &mut narrow_no_bias)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("weight has shape [2, 3]") && e.contains("does not have: bias"),
        "{e}"
    );

    let bias_only = dir.path().join("partial.safetensors");
    checkpoint::save(
        &bias_only,
        &Linear::new(3, 2, false, &mut rng(13)),
        &HashMap::new(),
    )
    .unwrap();
    let e = err_of(&mut target, &bias_only);
    assert!(
        e.contains("partial.safetensors") && e.contains("bias is missing"),
        "{e}"
    );
    assert_eq!(target, before, "a failed load leaves the model as it was");

    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
    let e = err_of(&mut target, &cut);
    assert!(
        e.contains("cut.safetensors") && e.contains("not a safetensors file"),
        "{e}"
    );
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    assert!(err_of(&mut target, &junk).contains("junk.safetensors"));
    let e = err_of(&mut target, &dir.path().join("missing.safetensors"));
    assert!(e.contains("missing.safetensors"), "{e}");
    assert_eq!(target, before);
}

#[test]
fn half_storage_rounds_to_the_nearest_f16_and_keeps_what_f16_cannot_hold() {
    let mut model = Linear::new(3, 2, true, &mut rng(15));
    model.weight[(0, 0)] = 1.0 / 3.0;
    model.weight[(1, 2)] = -1e-3;
    model.weight[(1, 0)] = 1e-6; // an f16 subnormal
    model.weight[(1, 1)] = -1e-9; // below f16's smallest subnormal: 0
    model.bias = Some(Array1::from_vec(vec![70000.0, 0.25])); // beyond f16's 65504
    let bytes = checkpoint::to_bytes_parts_as(
        &[("", &model as &dyn Module)],
        lasr_nn::Storage::F16,
        &HashMap::new(),
    )
    .unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.tensor("weight").unwrap().dtype(),
        safetensors::Dtype::F16
    );
    assert_eq!(st.tensor("bias").unwrap().dtype(), safetensors::Dtype::F32);
    assert_eq!(
        checkpoint::stored_as(&bytes).unwrap(),
        lasr_nn::Storage::F16
    );

    let mut back = Linear::new(3, 2, true, &mut rng(16));
    checkpoint::from_bytes(&bytes, "", &mut back).unwrap();
    assert_eq!(back.bias, model.bias, "the F32 tensor comes back exactly");
    for (&b, &m) in back.weight.iter().zip(&model.weight) {
        // Round to nearest: within half a unit in the last place of f16's 10-bit
        // mantissa (2^-11 relative) for normal values, of its smallest subnormal
        // (2^-25 absolute) below 2^-14.
        let bound = (m.abs() * 2f32.powi(-11)).max(2f32.powi(-25));
        assert!((b - m).abs() <= bound, "{b} vs {m}");
    }
    assert_eq!(back.weight[(1, 1)], 0.0);
    assert!((back.weight[(1, 0)] - 1e-6).abs() < 3e-8 && back.weight[(1, 0)] != 1e-6);
    assert_ne!(back.weight[(0, 0)], 1.0 / 3.0, "1/3 is not an f16");

    // F32 storage is unchanged, and what a file holds is recognised.
    let full = checkpoint::to_bytes(&model, "", &HashMap::new()).unwrap();
    assert_eq!(checkpoint::stored_as(&full).unwrap(), lasr_nn::Storage::F32);

    // BF16, as other tools write it, reads too.
    let w: Vec<u8> = model
        .weight
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    let b: Vec<u8> = [0.5f32, -2.0]
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    let views = vec![
        (
            "weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![2, 3], &w).unwrap(),
        ),
        (
            "bias",
            safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![2], &b).unwrap(),
        ),
    ];
    let bf = safetensors::serialize(views, None).unwrap();
    checkpoint::from_bytes(&bf, "", &mut back).unwrap();
    assert_eq!(back.bias.as_ref().unwrap().to_vec(), vec![0.5, -2.0]);
    assert_eq!(
        back.weight[(0, 0)],
        half::bf16::from_f32(1.0 / 3.0).to_f32()
    );
    assert_eq!(checkpoint::stored_as(&bf).unwrap(), lasr_nn::Storage::F16);
}

#[test]
fn int8_storage_keeps_the_integers_int8_decoding_makes_and_refuses_broken_scales() {
    use lasr_nn::{Storage, WeightFormat};
    use safetensors::{tensor::TensorView, Dtype, SafeTensors};
    let mut layer = BiLstm::new(5, 4, 0, &mut rng(17));
    layer.forward.weight_hh.row_mut(3).fill(0.0); // a zero row: scale 0
    layer.backward.weight_ih[(2, 1)] = 40.0; // one large value sets its row's scale
    let bytes = checkpoint::to_bytes_parts_as(
        &[("", &layer as &dyn Module)],
        Storage::Int8,
        &HashMap::new(),
    )
    .unwrap();
    assert_eq!(checkpoint::stored_as(&bytes).unwrap(), Storage::Int8);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let q = st.tensor("weight_ih_l0_reverse").unwrap();
    assert_eq!((q.dtype(), q.shape()), (Dtype::I8, &[16usize, 5][..]));
    let s = st.tensor("weight_ih_l0_reverse_scale").unwrap();
    assert_eq!((s.dtype(), s.shape()), (Dtype::F32, &[16usize][..]));
    assert_eq!(st.tensor("bias_ih_l0").unwrap().dtype(), Dtype::F16);
    assert_eq!(st.len(), 8 + 4, "eight tensors and four matrices' scales");

    let mut back = BiLstm::new(5, 4, 0, &mut rng(18));
    checkpoint::from_bytes(&bytes, "", &mut back).unwrap();
    let mut originals = Vec::new();
    layer.visit("", &mut |name, t| originals.push((name, t.to_owned())));
    let mut k = 0;
    back.visit("", &mut |name, t| {
        let (oname, orig) = &originals[k];
        k += 1;
        assert_eq!(&name, oname);
        if name.starts_with("weight_") {
            let (orig, t) = (
                orig.view().into_dimensionality().unwrap(),
                t.into_dimensionality().unwrap(),
            );
            // Exactly the weights int8 decoding computes with...
            assert_eq!(WeightFormat::Int8.stored(orig), t, "{name}");
            for (o, b) in orig.rows().into_iter().zip(t.rows()) {
                let scale = o.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                for (&o, &b) in o.iter().zip(&b) {
                    assert!(
                        (o - b).abs() <= scale * 0.5 * (1.0 + 1e-6),
                        "{name}: {o} vs {b}"
                    );
                }
            }
            // ...and quantizing them again gives them back (to an ulp of the scale).
            for (again, &b) in WeightFormat::Int8.stored(t).iter().zip(&t) {
                assert!((again - b).abs() <= 2.0 * f32::EPSILON * b.abs(), "{name}");
            }
        } else {
            let halved = orig.mapv(|v| half::f16::from_f32(v).to_f32());
            assert_eq!(halved, t, "{name} is stored as f16");
        }
    });
    assert_eq!(back.forward.weight_hh.row(3).to_vec(), vec![0.0; 4]);
    assert_eq!(
        back.backward.weight_ih[(2, 1)],
        40.0,
        "the largest value is exact"
    );

    // A file with an int8 matrix's scales missing, mis-shaped or negative is refused,
    // naming them, and leaves the model as it was.
    // A tensor's new shape and bytes, or None to leave it out.
    type Change<'a> = &'a dyn Fn(&str, Vec<u8>) -> Option<(Vec<usize>, Vec<u8>)>;
    let rebuild = |change: Change<'_>| {
        let mut owned = Vec::new();
        for (name, t) in st.tensors() {
            if let Some((shape, data)) = change(&name, t.data().to_vec()) {
                owned.push((name, t.dtype(), shape, data));
            }
        }
        let views: Vec<_> = owned
            .iter()
            .map(|(n, d, shape, data)| {
                (n.clone(), TensorView::new(*d, shape.clone(), data).unwrap())
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    };
    let shape_of = |name: &str| st.tensor(name).unwrap().shape().to_vec();
    let before = back.clone();
    let scale = "weight_hh_l0_scale";
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "holds -128",
            rebuild(&|n, mut d| {
                if n == "weight_hh_l0" {
                    d[5] = 0x80;
                }
                Some((shape_of(n), d))
            }),
        ),
        (
            "are missing",
            rebuild(&|n, d| (n != scale).then(|| (shape_of(n), d))),
        ),
        (
            "expected F32 [16]",
            rebuild(&|n, d| {
                Some(if n == scale {
                    (vec![8], d[..32].to_vec())
                } else {
                    (shape_of(n), d)
                })
            }),
        ),
        (
            "finite and >= 0",
            rebuild(&|n, mut d| {
                if n == scale {
                    d[..4].copy_from_slice(&(-1f32).to_le_bytes());
                }
                Some((shape_of(n), d))
            }),
        ),
    ];
    for (why, file) in cases {
        let e = checkpoint::from_bytes(&file, "", &mut back)
            .unwrap_err()
            .to_string();
        assert!(e.contains("weight_hh_l0") && e.contains(why), "{e}");
        assert!(!e.contains("does not have"), "said once: {e}");
        assert_eq!(back, before);
    }
}

#[test]
fn optimiser_state_checkpoints_like_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Linear::new(3, 2, true, &mut rng(14));
    let mut opt = Adam::new(&model, 0.01);
    let mut g = model.zeros_like();
    g.weight = Array2::from_elem((2, 3), 0.5);
    opt.step(&mut model, &g);
    let p = dir.path().join("adam_m.safetensors");
    checkpoint::save(&p, &opt.m, &HashMap::new()).unwrap();
    let mut m = model.zeros_like();
    checkpoint::load(&p, &mut m).unwrap();
    assert_eq!(m, opt.m);
}
