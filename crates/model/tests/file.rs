//! The model file: everything needed to run a model, in one safetensors file.

use lasr_decode::Vocab;
use lasr_features::FrontEndConfig;
use lasr_model::{Las, ModelConfig, ModelFile};
use lasr_nn::Module;
use rand::SeedableRng;

fn small() -> ModelFile {
    let config = ModelConfig {
        input_dim: 80,
        listener_hidden: 4,
        pyramid_layers: 2,
        embedding_dim: 5,
        speller_hidden: 6,
        attention_dim: 3,
        ..ModelConfig::default()
    };
    ModelFile {
        info: serde_json::json!({"trained_on": "nothing", "steps": 0}),
        ..ModelFile::new(
            Las::new(config, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1)).unwrap(),
            FrontEndConfig::default(),
            Vocab::librispeech(),
        )
    }
}

#[test]
fn round_trips_with_config_front_end_vocabulary_and_info() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.lasr.safetensors");
    let file = small();
    file.save(&path).unwrap();
    let back = ModelFile::load(&path).unwrap();
    assert_eq!(back.las, file.las);
    assert_eq!(back.front_end, file.front_end);
    assert_eq!(back.vocab, file.vocab);
    assert_eq!(back.info, file.info);
    // Plain safetensors: the config is readable without lasr.
    let bytes = std::fs::read(&path).unwrap();
    let meta = lasr_nn::checkpoint::metadata(&bytes).unwrap();
    assert_eq!(meta["lasr.format"], "1");
    let config: serde_json::Value = serde_json::from_str(&meta["lasr.model_config"]).unwrap();
    assert_eq!(config["speller_hidden"], 6);
    assert_eq!(back.las.num_params(), file.las.num_params());
}

#[test]
fn mismatched_or_foreign_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = small();
    file.front_end.features.num_mel_bins = 40;
    assert!(file
        .save(&dir.path().join("x"))
        .unwrap_err()
        .to_string()
        .contains("40 features"));
    let mut file = small();
    file.las.config.vocab_size = 31;
    assert!(file
        .validate()
        .unwrap_err()
        .to_string()
        .contains("32 symbols"));
    // A plain checkpoint without lasr metadata.
    let plain = dir.path().join("plain.safetensors");
    lasr_nn::checkpoint::save(&plain, &small().las, &Default::default()).unwrap();
    let e = ModelFile::load(&plain).unwrap_err().to_string();
    assert!(
        e.contains("plain.safetensors") && e.contains("lasr.format"),
        "{e}"
    );
    // Not a model at all, and a missing file.
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"hello").unwrap();
    assert!(ModelFile::load(&junk)
        .unwrap_err()
        .to_string()
        .contains("junk.bin"));
    assert!(ModelFile::load(&dir.path().join("none"))
        .unwrap_err()
        .to_string()
        .contains("cannot read"));
}

#[test]
fn gru_and_rnn_models_round_trip_with_their_cell() {
    let dir = tempfile::tempdir().unwrap();
    for cell in [lasr_model::CellType::Gru, lasr_model::CellType::Rnn] {
        let mut file = small();
        let config = ModelConfig {
            cell,
            ..file.las.config.clone()
        };
        file.las = Las::new(config, &mut rand_chacha::ChaCha8Rng::seed_from_u64(2)).unwrap();
        let path = dir.path().join(format!("{}.safetensors", cell.name()));
        file.save(&path).unwrap();
        let back = ModelFile::load(&path).unwrap();
        assert_eq!(back.las, file.las, "{cell:?}");
        assert_eq!(back.las.config.cell, cell);
    }
}

#[test]
fn half_precision_files_are_format_3_half_the_size_and_read_back_rounded() {
    let dir = tempfile::tempdir().unwrap();
    let full = small();
    let mut half = small();
    half.storage = lasr_nn::Storage::F16;
    let (full_bytes, half_bytes) = (full.to_bytes().unwrap(), half.to_bytes().unwrap());
    let meta = lasr_nn::checkpoint::metadata(&half_bytes).unwrap();
    assert_eq!(meta["lasr.format"], "3");
    let header = |b: &[u8]| 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    assert_eq!(
        (half_bytes.len() - header(&half_bytes)) * 2,
        full_bytes.len() - header(&full_bytes),
        "every tensor in 16 bits"
    );
    let path = dir.path().join("half.safetensors");
    half.save(&path).unwrap();
    let back = ModelFile::load(&path).unwrap();
    assert_eq!(
        back.storage,
        lasr_nn::Storage::F16,
        "kept when written again"
    );
    let mut want = Vec::new();
    full.las.visit("", &mut |_, t| {
        want.extend(t.iter().map(|&v| half::f16::from_f32(v).to_f32()))
    });
    let mut got = Vec::new();
    back.las
        .visit("", &mut |_, t| got.extend(t.iter().copied()));
    assert_eq!(got, want, "each weight is its nearest f16");
    assert_ne!(back.las, full.las);

    // 16-bit tensors under a format that predates them are refused.
    let st = safetensors::SafeTensors::deserialize(&half_bytes).unwrap();
    let mut old_meta = meta.clone();
    old_meta.insert("lasr.format".into(), "2".into());
    let relabelled = safetensors::serialize(st.tensors(), Some(old_meta)).unwrap();
    let e = ModelFile::from_bytes(&relabelled).unwrap_err().to_string();
    assert!(
        e.contains("16-bit in a format 2 file")
            && e.contains("tensor listener.l0.bias_hh_l0 (and "),
        "{e}"
    );
}

#[test]
fn int8_files_are_format_4_and_decode_in_int8_as_the_16_bit_file_does() {
    use lasr_nn::{Storage, WeightFormat};
    let mut f32_file = small();
    f32_file.las = Las::new(
        ModelConfig {
            ctc_weight: 0.5,
            ..f32_file.las.config.clone()
        },
        &mut rand_chacha::ChaCha8Rng::seed_from_u64(3),
    )
    .unwrap();
    let mut half = f32_file.clone();
    half.storage = Storage::F16;
    let half = ModelFile::from_bytes(&half.to_bytes().unwrap()).unwrap();
    let mut int8 = half.clone();
    int8.storage = Storage::Int8;
    let bytes = int8.to_bytes().unwrap();
    let meta = lasr_nn::checkpoint::metadata(&bytes).unwrap();
    assert_eq!(meta["lasr.format"], "4");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut matrices = 0;
    for (name, t) in st.tensors() {
        let recurrent = name.contains(".weight_ih") || name.contains(".weight_hh");
        let want = if name.ends_with("_scale") {
            safetensors::Dtype::F32
        } else if recurrent {
            matrices += 1;
            safetensors::Dtype::I8
        } else {
            safetensors::Dtype::F16
        };
        assert_eq!(t.dtype(), want, "{name}");
    }
    // Listener: two directions of three layers, two matrices each; speller: two cells.
    assert_eq!(matrices, 3 * 2 * 2 + 2 * 2);
    let back = ModelFile::from_bytes(&bytes).unwrap();
    assert_eq!(back.storage, Storage::Int8, "kept when written again");

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let feats = lasr_nn::init::uniform((37, 80), 1.0, &mut rng);
    let lp = |m: &ModelFile| {
        m.ctc_log_probs(&m.inference_weights(WeightFormat::Int8), feats.view())
            .unwrap()
    };
    let (want, got) = (lp(&half), lp(&back));
    for (w, g) in want.iter().zip(&got) {
        assert!((w - g).abs() < 1e-5, "{w} vs {g}");
    }
    // In f32 the rounded weights differ from the 16-bit ones.
    let f32_lp = |m: &ModelFile| {
        m.ctc_log_probs(&m.inference_weights(WeightFormat::F32), feats.view())
            .unwrap()
    };
    assert!(f32_lp(&half) != f32_lp(&back));

    // int8 tensors under a format that predates them are refused.
    let mut old_meta = meta.clone();
    old_meta.insert("lasr.format".into(), "3".into());
    let relabelled = safetensors::serialize(st.tensors(), Some(old_meta)).unwrap();
    let e = ModelFile::from_bytes(&relabelled).unwrap_err().to_string();
    assert!(e.contains("is int8 in a format 3 file"), "{e}");
}

#[test]
fn the_parameter_lower_bounds_never_exceed_a_real_models_count() {
    use lasr_model::CellType;
    for cell in [CellType::Lstm, CellType::Gru, CellType::Rnn] {
        // With a stacking first layer and top layers too (the other shapes).
        for (pyramid_layers, frame_stack, top_layers) in
            [(0, 1, 0), (1, 1, 0), (2, 1, 0), (0, 4, 3), (1, 3, 1)]
        {
            for (ctc_weight, location_channels) in [(0.0, 0), (0.5, 0), (0.3, 2)] {
                let config = ModelConfig {
                    input_dim: 7,
                    listener_hidden: 3,
                    pyramid_layers,
                    frame_stack,
                    top_layers,
                    cell,
                    embedding_dim: 2,
                    speller_hidden: 4,
                    attention_dim: 5,
                    ctc_weight,
                    location_channels,
                    location_width: 3,
                    ..ModelConfig::default()
                };
                let las = Las::new(
                    config.clone(),
                    &mut rand_chacha::ChaCha8Rng::seed_from_u64(1),
                )
                .unwrap();
                let all = las.num_params() as f64;
                let member = (las.listener.num_params()
                    + las.ctc.as_ref().map_or(0, |c| c.num_params()))
                    as f64;
                assert!(config.min_params() <= all, "{config:?}");
                assert!(config.min_member_params() <= member, "{config:?}");
                // A bound, but not a loose one: at least a quarter of the count (LSTMs
                // have four gates where the bound counts one).
                assert!(config.min_params() * 4.0 >= all * 0.9, "{config:?}");
            }
        }
    }
}

#[test]
fn a_config_larger_than_the_files_tensors_is_refused_before_anything_is_built() {
    let bytes = small().to_bytes().unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut meta = lasr_nn::checkpoint::metadata(&bytes).unwrap();
    // Location-aware attention with absurdly wide filters (2^36 taps).
    let mut config: serde_json::Value = serde_json::from_str(&meta["lasr.model_config"]).unwrap();
    config["location_channels"] = serde_json::json!(1);
    config["location_width"] = serde_json::json!((1u64 << 36) + 1);
    let mut wide = meta.clone();
    wide.insert("lasr.model_config".into(), config.to_string());
    let crafted = safetensors::serialize(st.tensors(), Some(wide)).unwrap();
    let e = ModelFile::from_bytes(&crafted).unwrap_err().to_string();
    assert!(e.contains("describe at least"), "{e}");
    let mut config: serde_json::Value = serde_json::from_str(&meta["lasr.model_config"]).unwrap();
    // 2^26 hidden units: building this listener would ask for petabytes, which
    // aborts the process rather than returning an error.
    config["listener_hidden"] = serde_json::json!(1u64 << 26);
    meta.insert("lasr.model_config".into(), config.to_string());
    let crafted = safetensors::serialize(st.tensors(), Some(meta.clone())).unwrap();
    let e = ModelFile::from_bytes(&crafted).unwrap_err().to_string();
    assert!(
        e.contains("describe at least") && e.contains("parameters"),
        "{e}"
    );
    // The same for an ensemble member's config.
    let mut config: serde_json::Value = serde_json::from_str(&meta["lasr.model_config"]).unwrap();
    config["listener_hidden"] = serde_json::json!(4);
    config["ctc_weight"] = serde_json::json!(0.5);
    let mut member = config.clone();
    member["listener_hidden"] = serde_json::json!(1u64 << 26);
    meta.insert("lasr.model_config".into(), config.to_string());
    meta.insert("lasr.format".into(), "2".into());
    meta.insert(
        "lasr.members".into(),
        serde_json::json!([{"model_config": member, "weight": 0.5}]).to_string(),
    );
    let crafted = safetensors::serialize(st.tensors(), Some(meta)).unwrap();
    let e = ModelFile::from_bytes(&crafted).unwrap_err().to_string();
    assert!(e.contains("describe at least"), "{e}");
}
