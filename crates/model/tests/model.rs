//! The whole LAS model: structure, gradients, padding, and that it learns.

use lasr_model::{Batch, CellType, Las, ModelConfig, WeightFormat};
use lasr_nn::gradcheck::{check_input, check_params};
use lasr_nn::{clip_grad_norm, Adam, Module};
use ndarray::{s, Array3, ArrayD, Ix3};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn tiny() -> ModelConfig {
    ModelConfig {
        input_dim: 3,
        listener_hidden: 3,
        pyramid_layers: 2,
        embedding_dim: 4,
        speller_hidden: 5,
        attention_dim: 4,
        vocab_size: 7,
        sos: 1,
        eos: 2,
        ..ModelConfig::default()
    }
}

fn tiny_batch(seed: u64) -> Batch {
    Batch {
        feats: lasr_nn::init::uniform((13, 2, 3), 1.0, &mut rng(seed)),
        lengths: vec![13, 9],
        targets: vec![vec![3, 4, 5], vec![6]],
        seeds: None,
    }
}

/// Every parameter of `las`, by name, in visiting order.
fn params(las: &Las) -> Vec<(String, ArrayD<f32>)> {
    let mut v = Vec::new();
    las.visit("", &mut |n, t| v.push((n, t.to_owned())));
    v
}

#[test]
fn presets_build_the_models_they_describe() {
    let reference = ModelConfig::preset("reference").unwrap();
    assert_eq!(reference, ModelConfig::default());
    let small = ModelConfig::preset("small").unwrap();
    let las = Las::new(small.clone(), &mut rng(0)).unwrap();
    assert_eq!(las.num_params(), 3_651_392);
    assert!(small.has_ctc() && small.reduction() == 4);
    // `small` is the shipped model's recipe, as committed next to it.
    let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    let read = |f: &str| std::fs::read_to_string(assets.join(f)).unwrap();
    assert_eq!(
        small,
        serde_json::from_str::<ModelConfig>(&read("model.json")).unwrap()
    );
    assert_eq!(
        lasr_model::TrainOptions::preset("small").unwrap(),
        serde_json::from_str(&read("train-options.json")).unwrap()
    );
    assert!(ModelConfig::preset("huge").is_none());
    for name in ModelConfig::PRESETS {
        assert!(ModelConfig::preset(name).is_some());
        assert!(lasr_model::TrainOptions::preset(name).is_some());
    }
}

#[test]
fn default_model_has_the_reference_size_and_names() {
    let las = Las::new(ModelConfig::default(), &mut rng(0)).unwrap();
    assert_eq!(las.num_params(), 13_599_264);
    assert_eq!(las.listener.num_params(), 8_568_832);
    assert_eq!(las.speller.num_params(), 5_030_432);
    let mut names = Vec::new();
    las.visit("", &mut |n, t| names.push((n, t.shape().to_vec())));
    let has = |n: &str, shape: &[usize]| names.iter().any(|(m, s)| m == n && s == shape);
    // As in the reference's state_dict().
    assert!(has("listener.l0.weight_ih_l0", &[1024, 80]));
    assert!(has("listener.l0.weight_hh_l0_reverse", &[1024, 256]));
    assert!(has("listener.pyr.2.weight_ih_l0", &[1024, 1024]));
    assert!(has("speller.emb.weight", &[32, 256]));
    assert!(has("speller.cell0.weight_ih", &[2048, 768]));
    assert!(has("speller.cell1.bias_hh", &[2048]));
    assert!(has("speller.att_h.weight", &[256, 512]));
    assert!(has("speller.att_h.bias", &[256]));
    assert!(has("speller.att_s.weight", &[256, 512]));
    assert!(has("speller.att_v.weight", &[1, 256]));
    assert!(has("speller.out.weight", &[32, 1024]));
    // 4 BiLSTMs x 8; embedding 1, two cells x 4, attention 4, output 2.
    assert_eq!(names.len(), 4 * 8 + 1 + 8 + 4 + 2);
}

/// Finite differences of the training objective against `backward`, for every
/// parameter tensor and for the input features; returns the tensors checked.
fn check_whole_model(las: &Las, batch: &Batch) -> Vec<String> {
    let (_, cache) = las.forward(batch).unwrap();
    let mut grads = las.zeros_like();
    let dx = las.backward(&cache, &mut grads).unwrap();
    let loss = |m: &Las| m.forward(batch).unwrap().0.objective();
    let reports = check_params(las, &grads, &loss, 2e-2, 12, 1e-3);
    for r in &reports {
        eprintln!(
            "{}: rel err {:.2e} (analytic {:.5}, numeric {:.5})",
            r.tensor, r.error, r.analytic, r.numeric
        );
        assert!(r.error < 1e-2, "{r:?}");
    }
    let loss_x = |x: &ArrayD<f32>| {
        let mut b = batch.clone();
        b.feats = x.clone().into_dimensionality::<Ix3>().unwrap();
        las.forward(&b).unwrap().0.objective()
    };
    let r = check_input(
        &batch.feats.clone().into_dyn(),
        &dx.clone().into_dyn(),
        &loss_x,
        1e-2,
        40,
        1e-3,
    );
    assert!(r.error < 1e-2, "{r:?}");
    // Frames beyond an utterance's length do not influence anything.
    for (b, &len) in batch.lengths.iter().enumerate() {
        assert!(dx.slice(s![len.., b, ..]).iter().all(|&v| v == 0.0));
    }
    reports.into_iter().map(|r| r.tensor).collect()
}

#[test]
fn whole_model_gradients_match_finite_differences() {
    let las = Las::new(tiny(), &mut rng(1)).unwrap();
    let batch = tiny_batch(2);
    let (stats, _) = las.forward(&batch).unwrap();
    assert_eq!(stats.tokens, 3 + 1 + 1 + 1);
    assert_eq!(stats.objective(), stats.mean(), "no CTC head, no CTC term");
    let checked = check_whole_model(&las, &batch);
    assert_eq!(checked.len(), 3 * 8 + 1 + 8 + 4 + 2, "every tensor checked");
}

#[test]
fn joint_ctc_location_aware_gradients_match_finite_differences() {
    let cfg = ModelConfig {
        ctc_weight: 0.4,
        location_channels: 2,
        location_width: 3,
        ..tiny()
    };
    let las = Las::new(cfg, &mut rng(5)).unwrap();
    let batch = tiny_batch(6);
    let (stats, _) = las.forward(&batch).unwrap();
    assert_eq!((stats.ctc_labels, stats.ctc_infeasible), (4, 0));
    assert!(stats.ctc_sum > 0.0);
    let expected = 0.6 * stats.mean() + 0.4 * stats.ctc_mean();
    assert!((stats.objective() - expected).abs() < 1e-6);
    let checked = check_whole_model(&las, &batch);
    assert_eq!(
        checked.len(),
        3 * 8 + 1 + 8 + 4 + 2 + 2 + 2,
        "CTC head and location filters checked too"
    );
    for name in [
        "ctc.weight",
        "speller.att_conv.weight",
        "speller.att_loc.weight",
    ] {
        assert!(checked.iter().any(|t| t == name), "{name}");
    }
}

#[test]
fn a_ctc_only_objective_skips_the_speller_and_checks_by_finite_differences() {
    let cfg = ModelConfig {
        ctc_weight: 1.0,
        ..tiny()
    };
    assert!(!cfg.trains_speller());
    let las = Las::new(cfg, &mut rng(5)).unwrap();
    let batch = tiny_batch(6);
    let (stats, cache) = las.forward(&batch).unwrap();
    assert_eq!(stats.tokens, 0, "no attention term");
    assert!(cache.attention().is_none(), "the speller did not run");
    assert!((stats.objective() - stats.ctc_mean()).abs() < 1e-12);
    // The finite differences see the whole objective, so a listener gradient that
    // missed the CTC term (or kept a speller term) would fail here.
    let checked = check_whole_model(&las, &batch);
    assert!(checked.iter().any(|t| t == "ctc.weight"));
    let mut grads = las.zeros_like();
    las.train_step_parallel(&batch, &mut grads, 2).unwrap();
    grads.speller.visit("", &mut |n, g| {
        assert!(g.iter().all(|&v| v == 0.0), "speller gradient {n}")
    });
    let mut listener = 0f32;
    grads.listener.visit("", &mut |_, g| {
        listener += g.iter().map(|v| v.abs()).sum::<f32>()
    });
    assert!(listener > 0.0);
}

#[test]
fn a_batch_split_over_threads_gives_the_same_loss_and_gradients() {
    // Joint training, and CTC alone (whose parts return no speller logits).
    for ctc_weight in [0.3, 1.0] {
        let cfg = ModelConfig {
            ctc_weight,
            ..tiny()
        };
        let las = Las::new(cfg, &mut rng(9)).unwrap();
        let batch = Batch {
            feats: lasr_nn::init::uniform((16, 3, 3), 1.0, &mut rng(10)),
            lengths: vec![16, 9, 12],
            targets: vec![vec![], vec![6], vec![5, 5]],
            seeds: None,
        };
        let mut whole = las.zeros_like();
        let a = las.train_step(&batch, &mut whole).unwrap();
        assert!(a.objective() > 0.0, "ctc_weight {ctc_weight}");
        for parts in [2, 3] {
            let mut split = las.zeros_like();
            let b = las.train_step_parallel(&batch, &mut split, parts).unwrap();
            assert_eq!((a.tokens, a.ctc_labels), (b.tokens, b.ctc_labels));
            assert!((a.objective() - b.objective()).abs() < 1e-6);
            let ga = params(&whole);
            let mut k = 0;
            split.visit("", &mut |n, t| {
                let (name, expected) = &ga[k];
                assert_eq!(&n, name);
                let diff = (&t - expected).iter().fold(0f32, |m, d| m.max(d.abs()));
                let size = expected.iter().fold(0f32, |m, d| m.max(d.abs()));
                assert!(
                    diff <= 1e-5 * size.max(1e-3),
                    "ctc_weight {ctc_weight}, {n}: {diff} of {size}"
                );
                k += 1;
            });
        }
    }
}

/// On AVX-512 CPUs a batch's parts run their spellers as a team when each has a core
/// (`lasr_nn::team`); the team must give the bits the parts give one after the other.
#[test]
fn the_spellers_team_gives_the_bits_of_the_parts_one_by_one() {
    // Cells 96 wide: 384 gate outputs, three panels for two members. The parts have
    // 5 and 3 decoder steps, so one member leaves the team early; noise on.
    let cfg = ModelConfig {
        speller_hidden: 96,
        ctc_weight: 0.3,
        dropout: 0.1,
        sampling_rate: 0.2,
        ..tiny()
    };
    let las = Las::new(cfg, &mut rng(21)).unwrap();
    let batch = Batch {
        feats: lasr_nn::init::uniform((16, 4, 3), 1.0, &mut rng(22)),
        lengths: vec![16, 12, 9, 16],
        targets: vec![vec![3, 4, 5, 6], vec![5], vec![6, 3], vec![]],
        seeds: Some(vec![1, 2, 3, 4]),
    };
    let step = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut grads = las.zeros_like();
            let stats = las.train_step_parallel(&batch, &mut grads, 2).unwrap();
            (stats, grads)
        })
    };
    // One thread: the parts one after the other. Two: as a team.
    let (alone, team) = (step(1), step(2));
    assert!(alone.0.objective() > 0.0);
    assert_eq!(alone, team);
}

#[test]
fn a_padded_batch_scores_each_utterance_as_if_alone() {
    let las = Las::new(tiny(), &mut rng(3)).unwrap();
    let batch = tiny_batch(4);
    let (both, _) = las.forward(&batch).unwrap();
    let mut sum = 0.0;
    for b in 0..2 {
        let len = batch.lengths[b];
        let alone = Batch {
            feats: batch.feats.slice(s![..len, b..b + 1, ..]).to_owned(),
            lengths: vec![len],
            targets: vec![batch.targets[b].clone()],
            seeds: None,
        };
        sum += las.forward(&alone).unwrap().0.loss_sum;
    }
    assert!(
        (both.loss_sum - sum).abs() < 1e-5,
        "{} vs {sum}",
        both.loss_sum
    );
}

#[test]
fn bad_batches_are_refused_with_the_reason() {
    let las = Las::new(tiny(), &mut rng(5)).unwrap();
    let mut b = tiny_batch(6);
    b.lengths = vec![13, 3];
    assert!(las
        .forward(&b)
        .unwrap_err()
        .to_string()
        .contains("3 frames"));
    let mut b = tiny_batch(6);
    b.targets[1] = vec![7];
    assert!(las.forward(&b).unwrap_err().to_string().contains("token 7"));
    let mut b = tiny_batch(6);
    b.feats = Array3::zeros((13, 2, 4));
    assert!(las.forward(&b).unwrap_err().to_string().contains("4 wide"));
    let mut b = tiny_batch(6);
    b.lengths.pop();
    assert!(las.forward(&b).is_err());
    assert!(Las::new(ModelConfig { sos: 2, ..tiny() }, &mut rng(7)).is_err());
}

/// Two "words" whose feature patterns differ; the model must learn to spell the right
/// one. Returns the trained model, the batch, and the loss before and after.
fn train_toy() -> (Las, Batch, f64, f64) {
    let cfg = ModelConfig {
        input_dim: 4,
        listener_hidden: 8,
        pyramid_layers: 1,
        embedding_dim: 8,
        speller_hidden: 16,
        attention_dim: 8,
        vocab_size: 8,
        sos: 1,
        eos: 2,
        ..ModelConfig::default()
    };
    let mut las = Las::new(cfg, &mut rng(8)).unwrap();
    let mut feats = Array3::<f32>::zeros((10, 4, 4));
    let mut targets = Vec::new();
    for b in 0..4 {
        let word = b % 2;
        for t in 0..10 {
            feats[(t, b, (t + word) % 4)] = 1.0;
        }
        targets.push(if word == 0 { vec![3, 4, 5] } else { vec![6, 7] });
    }
    let batch = Batch {
        feats,
        lengths: vec![10, 10, 8, 10],
        targets,
        seeds: None,
    };
    let mut opt = Adam::new(&las, 0.02);
    let first = las.forward(&batch).unwrap().0.mean();
    let mut last = first;
    for _ in 0..120 {
        let mut grads = las.zeros_like();
        last = las.train_step(&batch, &mut grads).unwrap().mean();
        clip_grad_norm(&mut grads, 5.0).unwrap();
        opt.step(&mut las, &grads);
    }
    (las, batch, first, last)
}

#[test]
fn the_model_learns_a_toy_task() {
    let (las, batch, first, last) = train_toy();
    assert!(last < 0.05 * first, "loss {first} -> {last}");
    // Attention rows are distributions over live listener frames.
    let (_, cache) = las.forward(&batch).unwrap();
    let att = cache.attention().expect("the speller ran");
    assert_eq!(att.dim(), (4, 4, 5));
    for row in att.slice(s![.., 2, ..]).rows() {
        assert!((row.sum() - 1.0).abs() < 1e-5);
        assert_eq!(row[4], 0.0, "utterance 2 has 8 frames = 4 listener frames");
    }
}

#[test]
fn greedy_and_beam_search_spell_what_the_model_learned() {
    let (las, batch, _, _) = train_toy();
    let options = lasr_decode::SearchOptions::default();
    let weights = las.inference_weights(WeightFormat::F32);
    let bf16 = las.inference_weights(WeightFormat::Bf16);
    let int8 = las.inference_weights(WeightFormat::Int8);
    for b in 0..4 {
        let len = batch.lengths[b];
        let dec = las
            .encode(&weights, batch.feats.slice(s![..len, b, ..]))
            .unwrap();
        // Weights rounded to bfloat16 spell the same.
        let dec16 = las
            .encode(&bf16, batch.feats.slice(s![..len, b, ..]))
            .unwrap();
        let greedy16 = lasr_decode::greedy(&dec16, &options).unwrap();
        assert_eq!(greedy16.tokens, batch.targets[b], "utterance {b}, bf16");
        let dec8 = las
            .encode(&int8, batch.feats.slice(s![..len, b, ..]))
            .unwrap();
        let greedy8 = lasr_decode::greedy(&dec8, &options).unwrap();
        assert_eq!(greedy8.tokens, batch.targets[b], "utterance {b}, int8");
        assert_eq!(lasr_decode::Decoder::encoder_len(&dec), len / 2);
        let greedy = lasr_decode::greedy(&dec, &options).unwrap();
        assert_eq!(greedy.tokens, batch.targets[b], "utterance {b}");
        assert!(greedy.finished);
        let peaks = greedy.attention_peaks.as_ref().unwrap();
        assert_eq!(peaks.len(), greedy.tokens.len());
        assert!(peaks.iter().all(|&p| p < len / 2));
        let beam = lasr_decode::beam_search(
            &dec,
            &lasr_decode::SearchOptions {
                beam_size: 4,
                ..options.clone()
            },
        )
        .unwrap();
        assert_eq!(beam[0].tokens, batch.targets[b]);
        assert!((beam[0].log_prob - greedy.log_prob).abs() < 1e-4);
        assert!(beam.windows(2).all(|w| w[0].score >= w[1].score));
        // The decoder's log-probability of the transcript is the training loss's view of it.
        let alone = Batch {
            feats: batch.feats.slice(s![..len, b..b + 1, ..]).to_owned(),
            lengths: vec![len],
            targets: vec![batch.targets[b].clone()],
            seeds: None,
        };
        let nll = las.forward(&alone).unwrap().0.loss_sum;
        assert!(
            (nll + greedy.log_prob).abs() < 1e-3,
            "teacher-forced {nll} vs search {}",
            -greedy.log_prob
        );
    }
    assert!(las
        .encode(&weights, batch.feats.slice(s![..1, 0, ..]))
        .is_err());
    // Weights laid out for another model are refused.
    let other = Las::new(
        ModelConfig {
            speller_hidden: 9,
            ..las.config.clone()
        },
        &mut rng(3),
    )
    .unwrap()
    .inference_weights(WeightFormat::F32);
    let err = las
        .encode(&other, batch.feats.slice(s![..batch.lengths[0], 0, ..]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("another model"), "{err}");
}

#[test]
fn long_features_are_cut_at_their_quietest_frames() {
    use lasr_model::chunk_bounds;
    // Loud everywhere except quiet dips at frames 130 and 260.
    let mut feats = ndarray::Array2::<f32>::from_elem((400, 3), 5.0);
    for dip in [130usize, 260] {
        feats.slice_mut(s![dip - 3..dip + 3, ..]).fill(-5.0);
    }
    let bounds = chunk_bounds(feats.view(), 150, 8);
    assert_eq!(bounds.len(), 4, "{bounds:?}");
    assert_eq!((bounds[0], bounds[3]), (0, 400));
    // Each cut falls inside a dip.
    assert!(
        bounds[1].abs_diff(130) <= 3 && bounds[2].abs_diff(260) <= 3,
        "{bounds:?}"
    );
    assert!(bounds.windows(2).all(|w| w[1] - w[0] <= 150));
    // Short input: one chunk; no dips: cuts still respect the limit.
    assert_eq!(chunk_bounds(feats.view(), 400, 8), vec![0, 400]);
    let flat = ndarray::Array2::<f32>::zeros((1000, 2));
    let b = chunk_bounds(flat.view(), 100, 8);
    assert_eq!((b[0], *b.last().unwrap()), (0, 1000));
    assert!(b.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] <= 100));
    assert_eq!(chunk_bounds(flat.slice(s![..0, ..]), 100, 8), vec![0, 0]);
    // Just over the limit, quietest at the very end: the last chunk is not a sliver.
    let mut fading = ndarray::Array2::<f32>::zeros((101, 2));
    for (i, mut row) in fading.rows_mut().into_iter().enumerate() {
        row.fill(-(i as f32));
    }
    let b = chunk_bounds(fading.view(), 100, 8);
    assert_eq!(b.len(), 3, "{b:?}");
    assert!(b[2] - b[1] >= 25 && b[1] <= 100, "{b:?}");
    // A model's reduction wider than a quarter chunk sets the least tail.
    let b = chunk_bounds(fading.view(), 100, 32);
    assert!(b[2] - b[1] >= 32, "{b:?}");
}

#[test]
fn step_by_step_decoding_scores_a_transcript_as_training_does() {
    // The decoder's incremental path (single-row matvecs, prepared cells for several
    // rows, broadcast keys, carried attention weights) must agree with the
    // teacher-forced training forward, for every cell type.
    use lasr_decode::Decoder;
    for cell in [CellType::Lstm, CellType::Gru, CellType::Rnn] {
        for location_channels in [0, 3] {
            let cfg = ModelConfig {
                cell,
                location_channels,
                location_width: 5,
                ..tiny()
            };
            let las = Las::new(cfg, &mut rng(21)).unwrap();
            let feats = lasr_nn::init::uniform((13, 3), 1.0, &mut rng(22));
            let target = vec![3, 5, 4, 6];
            let batch = Batch {
                feats: feats.clone().insert_axis(ndarray::Axis(1)),
                lengths: vec![13],
                targets: vec![target.clone()],
                seeds: None,
            };
            let nll = las.forward(&batch).unwrap().0.loss_sum;
            let mut by_format = Vec::new();
            for format in WeightFormat::ALL {
                let weights = las.inference_weights(format);
                let dec = las.encode(&weights, feats.view()).unwrap();
                let mut state = dec.initial().unwrap();
                let mut prev = dec.sos();
                let mut log_prob = 0f64;
                let v = dec.vocab_size();
                for &tok in target.iter().chain([&dec.eos()]) {
                    // The same hypothesis twice: the beams' gemm path on prepared weights.
                    let twice = dec.select(state.clone(), &[0, 0]).unwrap();
                    let pair = dec.step(&[prev, prev], twice).unwrap();
                    let step = dec.step(&[prev], state).unwrap();
                    for row in 0..2 {
                        let diff = pair.log_probs[row * v..(row + 1) * v]
                            .iter()
                            .zip(&step.log_probs)
                            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                        assert!(
                            diff < 1e-5,
                            "{cell:?} {format}: beam row {row} differs by {diff}"
                        );
                    }
                    log_prob += f64::from(step.log_probs[tok]);
                    state = step.state;
                    prev = tok;
                }
                by_format.push(log_prob);
            }
            let [f32, bf16, int8] = by_format[..] else {
                unreachable!()
            };
            assert!(
                (f32 + nll).abs() < 1e-4,
                "{cell:?}, location {location_channels}: decoder {f32} vs training {}",
                -nll
            );
            // bfloat16 weights move the score, but little (the path really is another).
            let moved = (bf16 - f32).abs();
            assert!(
                moved > 0.0 && moved < 0.02 * (1.0 + nll),
                "{cell:?}, location {location_channels}: bf16 {bf16} vs f32 {f32}"
            );
            // So do int8 weights with a scale per row.
            let moved = (int8 - f32).abs();
            assert!(
                moved > 0.0 && moved < 0.02 * (1.0 + nll),
                "{cell:?}, location {location_channels}: int8 {int8} vs f32 {f32}"
            );
        }
    }
}

#[test]
fn gru_and_rnn_models_keep_the_names_and_check_by_finite_differences() {
    let names = |las: &Las| {
        let mut v = Vec::new();
        las.visit("", &mut |n, t| v.push((n, t.shape().to_vec())));
        v
    };
    let lstm = names(&Las::new(tiny(), &mut rng(1)).unwrap());
    // Plain GRU.
    let gru = Las::new(
        ModelConfig {
            cell: CellType::Gru,
            ..tiny()
        },
        &mut rng(1),
    )
    .unwrap();
    let batch = tiny_batch(2);
    let checked = check_whole_model(&gru, &batch);
    assert_eq!(checked.len(), 3 * 8 + 1 + 8 + 4 + 2, "every tensor checked");
    // RNN with joint CTC and location-aware attention.
    let rnn_cfg = ModelConfig {
        cell: CellType::Rnn,
        ctc_weight: 0.4,
        location_channels: 2,
        location_width: 3,
        ..tiny()
    };
    let rnn = Las::new(rnn_cfg, &mut rng(5)).unwrap();
    let batch = tiny_batch(6);
    let (stats, _) = rnn.forward(&batch).unwrap();
    assert!(stats.ctc_sum > 0.0 && stats.ctc_labels == 4);
    let checked = check_whole_model(&rnn, &batch);
    assert_eq!(checked.len(), 3 * 8 + 1 + 8 + 4 + 2 + 2 + 2);
    // PyTorch's names for every cell type; the gate count sets the recurrent shapes.
    for (las, gates) in [(&gru, 3), (&rnn, 1)] {
        let got: Vec<_> = names(las)
            .into_iter()
            .filter(|(n, _)| {
                !n.starts_with("ctc.") && !n.contains("att_conv") && !n.contains("att_loc")
            })
            .collect();
        assert_eq!(got.len(), lstm.len());
        for ((n, shape), (m, lstm_shape)) in got.iter().zip(&lstm) {
            assert_eq!(n, m);
            let recurrent = n.starts_with("listener.") || n.contains(".cell");
            let mut expected = lstm_shape.clone();
            if recurrent {
                expected[0] = expected[0] / 4 * gates;
            }
            assert_eq!(shape, &expected, "{n}");
        }
    }
}

#[test]
fn a_stacked_input_and_top_layers_check_by_finite_differences() {
    // Frames joined 2 at a time before the first layer, one pyramid layer, then a top
    // layer at the pyramid's rate: the same 4x as tiny()'s two pyramid layers.
    let cfg = ModelConfig {
        cell: CellType::Gru,
        frame_stack: 2,
        pyramid_layers: 1,
        top_layers: 1,
        ctc_weight: 0.4,
        // 4 wide, so that the first layer's input (2 x 3 features) differs from the
        // top layer's (2 x 4).
        listener_hidden: 4,
        ..tiny()
    };
    assert_eq!(cfg.reduction(), tiny().reduction());
    let las = Las::new(cfg.clone(), &mut rng(7)).unwrap();
    let mut shapes = std::collections::HashMap::new();
    las.visit("", &mut |n, t| {
        shapes.insert(n, t.shape().to_vec());
    });
    assert_eq!(shapes["listener.l0.weight_ih_l0"], [12, 2 * 3]);
    assert_eq!(shapes["listener.pyr.0.weight_ih_l0_reverse"], [12, 4 * 4]);
    assert_eq!(shapes["listener.top.0.weight_ih_l0"], [12, 2 * 4]);
    assert!(!shapes.contains_key("listener.pyr.1.weight_ih_l0"));
    let batch = tiny_batch(8);
    let (stats, _) = las.forward(&batch).unwrap();
    assert_eq!((stats.ctc_labels, stats.ctc_infeasible), (4, 0));
    let checked = check_whole_model(&las, &batch);
    assert_eq!(
        checked.len(),
        3 * 8 + 1 + 8 + 4 + 2 + 2,
        "three listener layers, the CTC head"
    );
    assert!(checked
        .iter()
        .any(|t| t == "listener.top.0.weight_hh_l0_reverse"));
    // The stacking drops each utterance's trailing odd frame (13 -> 6 pairs, 9 -> 4),
    // which then gets no gradient though it lies inside the utterance.
    let (_, cache) = las.forward(&batch).unwrap();
    let dx = las.backward(&cache, &mut las.zeros_like()).unwrap();
    assert!(dx.slice(s![..12, 0, ..]).iter().any(|&v| v != 0.0));
    for (t, b) in [(12, 0), (8, 1)] {
        assert!(
            dx.slice(s![t, b, ..]).iter().all(|&v| v == 0.0),
            "frame {t}"
        );
    }
    // With dropout every layer's mask, the top layer's included, is differentiated
    // in the right place (the last pyramid layer's and the top layer's outputs have
    // the same shape, so a mask applied to the wrong one would only show here).
    let noisy_las = Las::new(
        ModelConfig {
            dropout: 0.3,
            ..cfg.clone()
        },
        &mut rng(7),
    )
    .unwrap();
    let mut noisy = batch.clone();
    noisy.seeds = Some(vec![11, 12]);
    let quiet = noisy_las.forward(&batch).unwrap().0.objective();
    assert!((noisy_las.forward(&noisy).unwrap().0.objective() - quiet).abs() > 1e-4);
    check_whole_model(&noisy_las, &noisy);
    // Inference over one utterance agrees with the batched forward pass.
    let (h, lengths, _) = las
        .listener
        .forward(batch.feats.view(), &batch.lengths, None)
        .unwrap();
    assert_eq!(lengths, [13 / 4, 9 / 4]);
    let one = las
        .listener
        .infer(batch.feats.slice(s![..9, 1, ..]))
        .unwrap();
    assert_eq!(one.dim(), (2, 8));
    let worst = one
        .iter()
        .zip(h.slice(s![..2, 1, ..]))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "{worst}");
    // A stack of 0 and shrinking past 256x are refused.
    for bad in [
        ModelConfig {
            frame_stack: 0,
            ..cfg.clone()
        },
        ModelConfig {
            frame_stack: 64,
            pyramid_layers: 3,
            ..cfg
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

#[test]
fn the_cell_type_changes_the_reference_size_by_the_gate_count() {
    let lstm = Las::new(ModelConfig::default(), &mut rng(0)).unwrap();
    let recurrent = |las: &Las| {
        let mut n = 0;
        las.visit("", &mut |name, t| {
            if name.starts_with("listener.") || name.contains(".cell") {
                n += t.len();
            }
        });
        n
    };
    let r = recurrent(&lstm);
    assert_eq!(r, 13_295_616);
    for (cell, gates, total) in [
        (CellType::Gru, 3, 10_275_360),
        (CellType::Rnn, 1, 3_627_552),
    ] {
        let las = Las::new(
            ModelConfig {
                cell,
                ..ModelConfig::default()
            },
            &mut rng(0),
        )
        .unwrap();
        assert_eq!(recurrent(&las), r / 4 * gates, "{cell:?}");
        assert_eq!(las.num_params(), 13_599_264 - r + r / 4 * gates);
        assert_eq!(las.num_params(), total, "{cell:?}");
    }
}

#[test]
fn configs_name_their_cell_and_default_to_lstm() {
    let parse = |json: &str| serde_json::from_str::<ModelConfig>(json);
    // Configs written before the field existed are LSTM models.
    assert_eq!(parse("{}").unwrap().cell, CellType::Lstm);
    assert_eq!(ModelConfig::default().cell, CellType::Lstm);
    let gru = parse(r#"{"cell":"gru"}"#).unwrap();
    assert_eq!(
        gru,
        ModelConfig {
            cell: CellType::Gru,
            ..ModelConfig::default()
        }
    );
    assert_eq!(parse(r#"{"cell":"rnn"}"#).unwrap().cell, CellType::Rnn);
    assert_eq!(parse(r#"{"cell":"lstm"}"#).unwrap().cell, CellType::Lstm);
    // Written in lowercase, and read back.
    let json = serde_json::to_string(&gru).unwrap();
    assert!(json.contains(r#""cell":"gru""#), "{json}");
    assert_eq!(parse(&json).unwrap(), gru);
    for (cell, name) in [
        (CellType::Lstm, "lstm"),
        (CellType::Gru, "gru"),
        (CellType::Rnn, "rnn"),
    ] {
        assert_eq!(cell.name(), name);
    }
    // An unknown cell says which names exist.
    let err = parse(r#"{"cell":"transformer"}"#).unwrap_err().to_string();
    assert!(
        err.contains("unknown variant `transformer`") && err.contains("`lstm`, `gru`, `rnn`"),
        "{err}"
    );
    assert!(parse(r#"{"cell":"GRU"}"#).is_err());
    // The listener's shape fields are written only when they differ from the
    // reference's, so such files read in builds before them; otherwise they round-trip.
    let plain = serde_json::to_string(&ModelConfig::default()).unwrap();
    assert!(
        !plain.contains("frame_stack") && !plain.contains("top_layers"),
        "{plain}"
    );
    let stacked = ModelConfig {
        frame_stack: 4,
        pyramid_layers: 0,
        top_layers: 3,
        ..ModelConfig::default()
    };
    let json = serde_json::to_string(&stacked).unwrap();
    assert!(json.contains(r#""frame_stack":4"#) && json.contains(r#""top_layers":3"#));
    assert_eq!(parse(&json).unwrap(), stacked);
}

#[test]
fn dropout_and_scheduled_sampling_are_differentiated_and_split_safely() {
    let cfg = ModelConfig {
        ctc_weight: 0.3,
        dropout: 0.3,
        sampling_rate: 0.5,
        ..tiny()
    };
    let las = Las::new(cfg, &mut rng(31)).unwrap();
    let plain = tiny_batch(32);
    let mut noisy = plain.clone();
    noisy.seeds = Some(vec![11, 12]);
    let quiet = las.forward(&plain).unwrap().0.objective();
    let loud = las.forward(&noisy).unwrap().0.objective();
    assert!(
        (quiet - loud).abs() > 1e-4,
        "noise changed nothing: {quiet}"
    );
    // Without seeds the rates do nothing: the same as a model trained without them.
    let mut calm = las.clone();
    calm.config.dropout = 0.0;
    calm.config.sampling_rate = 0.0;
    assert_eq!(calm.forward(&plain).unwrap().0.objective(), quiet);
    // Sampling on its own changes the loss too: some steps are fed the model's guesses.
    let mut short = noisy.clone();
    short.seeds = Some(vec![11]);
    let err = las.forward(&short).unwrap_err().to_string();
    assert!(err.contains("noise seeds"), "{err}");
    let mut drop_only = las.clone();
    drop_only.config.sampling_rate = 0.0;
    assert!((drop_only.forward(&noisy).unwrap().0.objective() - loud).abs() > 1e-4);
    // The masks and draws are a function of the seeds: gradients check by finite
    // differences through them.
    check_whole_model(&las, &noisy);
    // Each utterance draws from its own seed, so threads splitting the batch agree.
    let batch = Batch {
        feats: lasr_nn::init::uniform((16, 3, 3), 1.0, &mut rng(33)),
        lengths: vec![16, 9, 12],
        targets: vec![vec![3, 4], vec![6], vec![5, 5, 3]],
        seeds: Some(vec![1, 2, 3]),
    };
    let mut whole = las.zeros_like();
    let a = las.train_step(&batch, &mut whole).unwrap();
    let mut split = las.zeros_like();
    let b = las.train_step_parallel(&batch, &mut split, 3).unwrap();
    assert!((a.objective() - b.objective()).abs() < 1e-6);
    let (mut ga, mut gb) = (Vec::new(), Vec::new());
    whole.visit("", &mut |_, t| ga.extend(t.iter().copied()));
    split.visit("", &mut |_, t| gb.extend(t.iter().copied()));
    let diff = ga
        .iter()
        .zip(&gb)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff < 1e-5, "split gradients differ by {diff}");
}

#[test]
fn a_speller_grows_onto_a_listener_trained_with_ctc_alone() {
    let ctc_only = ModelConfig {
        ctc_weight: 1.0,
        frame_stack: 2,
        top_layers: 1,
        pyramid_layers: 1,
        ..tiny()
    };
    let trained = Las::new(ctc_only.clone(), &mut rng(1)).unwrap();
    let joint = ModelConfig {
        ctc_weight: 0.5,
        speller_hidden: 6,
        ..ctc_only.clone()
    };
    let grown = Las::grown_from(joint.clone(), &trained, &mut rng(2)).unwrap();
    let fresh = Las::new(joint.clone(), &mut rng(2)).unwrap();
    assert_eq!(grown.las.config, joint);
    let (old, new, init) = (params(&trained), params(&grown.las), params(&fresh));
    assert_eq!(new.len(), init.len());
    let from_trained: std::collections::HashMap<_, _> = old.into_iter().collect();
    for ((name, t), (_, f)) in new.iter().zip(&init) {
        if name.starts_with("speller.") {
            // A CTC-only model never trained its speller: nothing of it is taken.
            assert_eq!(t, f, "{name} should start fresh");
            assert!(grown.fresh.contains(name), "{name}");
        } else {
            assert_eq!(t, &from_trained[name], "{name} should be the trained one");
            assert!(grown.copied.contains(name), "{name}");
        }
    }
    assert!(grown.fresh.iter().all(|n| n.starts_with("speller.")));
    assert_eq!(grown.copied.len() + grown.fresh.len(), new.len());
    assert!(grown.dropped.is_empty(), "{:?}", grown.dropped);

    // A joint model grown into its own config is itself, tensor for tensor.
    let again = Las::grown_from(joint.clone(), &grown.las, &mut rng(3)).unwrap();
    assert!(again.fresh.is_empty());
    assert_eq!(params(&again.las), new);

    // A CTC-only config grown from the joint model keeps the listener and head; the
    // trained speller's cells, of another width, are listed as left out.
    let shrunk = Las::grown_from(ctc_only.clone(), &grown.las, &mut rng(4)).unwrap();
    for (name, t) in params(&shrunk.las) {
        if !name.starts_with("speller.") {
            assert_eq!(t, from_trained[&name], "{name}");
        }
    }
    assert!(!shrunk.dropped.is_empty());
    assert!(
        shrunk.dropped.iter().all(|n| n.starts_with("speller.")),
        "{:?}",
        shrunk.dropped
    );

    // The listener must come whole (not wider, not shallower: a listener with fewer
    // layers has tensors of the same names and shapes), and the vocabulary must agree.
    let refused = |c: ModelConfig| {
        Las::grown_from(c, &trained, &mut rng(2))
            .unwrap_err()
            .to_string()
    };
    let err = refused(ModelConfig {
        listener_hidden: 4,
        ..joint.clone()
    });
    assert!(
        err.contains("listener_hidden 4 (the initial model's 3)"),
        "{err}"
    );
    let err = refused(ModelConfig {
        top_layers: 0,
        ..joint.clone()
    });
    assert!(
        err.contains("top_layers 0 (the initial model's 1)") && !err.contains("hidden"),
        "{err}"
    );
    let err = refused(ModelConfig {
        frame_stack: 1,
        input_dim: 6,
        ..joint.clone()
    });
    assert!(
        err.contains("input_dim 6") && err.contains("frame_stack 1"),
        "{err}"
    );
    let err = refused(ModelConfig {
        vocab_size: 8,
        ..joint
    });
    assert!(
        err.contains("vocab_size 8 (the initial model's 7)"),
        "{err}"
    );
}
