//! `lasr speller`: trains an ensemble speller for a model file
//! (`lasr_model::ensemble_speller`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use rayon::prelude::*;

use crate::{batch_progress, load_corpus, load_model, progress, EpochLog};

#[derive(Args)]
#[command(after_help = "Example:\n  \
    lasr speller --train DATA/train-clean-5 --train DATA/train-clean-100 \\\n         \
    --valid runs/valid300.tsv --speed-perturb 0.9,1.0,1.1 -o with-speller.safetensors\n  \
    lasr bench ../shared/data/librispeech/test-clean-dev -m with-speller.safetensors \\\n         \
    --ensemble-speller 0.4 --rescore 0.2\n\n\
    The model's listeners (its main model's and every ensemble member's) run once over\n\
    every utterance, frozen; their states, side by side, are what the new speller\n\
    attends over, through a projection to the main model's width. It starts as the\n\
    main speller (the projection passes the main listener's states through) and learns\n\
    to use the members' too. After every epoch the model file with the speller is\n\
    written to --out (atomically) if its --valid loss is the best so far, in the\n\
    model's storage (the built-in model's: int8 recurrent matrices, f16 elsewhere). Decoding\n\
    uses it with --ensemble-speller W, which re-ranks the CTC search's n-best list.\n\n\
    Train it on speech the listeners did not learn from (held-out recordings, other\n\
    voices): on their own training data their states are near perfect, and a speller\n\
    trained there learns to trust all of them more than unseen speech bears out. On the\n\
    shipped model it has not yet beaten the main speller (BENCHMARKS.md).")]
pub struct SpellerArgs {
    /// The model file whose listeners the speller hears; default: the built-in model.
    #[arg(short, long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Training corpus: a LibriSpeech-layout directory, a Kaldi data directory or a
    /// TSV manifest (repeatable).
    #[arg(long, required = true, value_name = "PATH")]
    train: Vec<PathBuf>,
    /// Held-out corpus, same forms: its loss picks the epoch that is written.
    #[arg(long, value_name = "PATH")]
    valid: PathBuf,
    /// Raw log-mel features kept between runs, as `lasr train --feature-cache`.
    #[arg(long, value_name = "DIR")]
    feature_cache: Option<PathBuf>,
    /// Speed perturbation of the training set, as `lasr train --speed-perturb`.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    speed_perturb: Vec<f32>,
    /// Where to write the model file with its ensemble speller.
    #[arg(short, long, value_name = "FILE")]
    out: PathBuf,
    /// Also write every epoch's model to OUT's name with `-epoch-N` before the
    /// extension, to choose by decoding rather than by loss.
    #[arg(long)]
    epoch_files: bool,
    /// Weight format the listeners run in (`f32`, `bf16`, `int8`); default: the
    /// model's recommended decoding's, so the speller learns from the states that
    /// decoding will give it.
    #[arg(long, value_name = "FORMAT")]
    weights: Option<lasr_model::WeightFormat>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 6, value_name = "N")]
    epochs: usize,
    /// Adam's peak learning rate (linear warm-up, then cosine decay to 5%).
    #[arg(long, default_value_t = 3e-4, value_name = "LR")]
    learning_rate: f32,
    /// Drop probability on the speller's output-layer input.
    #[arg(long, default_value_t = 0.1, value_name = "P")]
    dropout: f32,
    /// Drop probability on the listener states the projection reads.
    #[arg(long, default_value_t = 0.1, value_name = "P")]
    input_dropout: f32,
    /// Label smoothing of the cross-entropy.
    #[arg(long, default_value_t = 0.0, value_name = "EPS")]
    label_smoothing: f32,
    /// Scheduled sampling: chance that a step is fed the speller's own previous guess.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    sampling_rate: f32,
    /// Train the projection alone, keeping the main speller's weights (and with them
    /// its sense of spelling and language) as they are.
    #[arg(long)]
    projection_only: bool,
    /// Most padded listener frames (25 per second for the shipped model) per batch.
    #[arg(long, default_value_t = 4000, value_name = "N")]
    batch_frames: usize,
    /// Seed of the batch order and the noise.
    #[arg(long, default_value_t = 1, value_name = "N")]
    seed: u64,
    /// Append one JSON line per epoch here.
    #[arg(long, value_name = "JSONL")]
    log: Option<PathBuf>,
}

/// `OUT` with `-epoch-N` before its extension.
fn epoch_path(out: &Path, epoch: usize) -> PathBuf {
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    let name = match out.extension() {
        Some(ext) => format!("{stem}-epoch-{epoch}.{}", ext.to_string_lossy()),
        None => format!("{stem}-epoch-{epoch}"),
    };
    out.with_file_name(name)
}

/// Every utterance of `data` through `model`'s listeners, in parallel; utterances too
/// short for the listeners are reported and left out.
fn encode_all(
    model: &lasr_model::ModelFile,
    weights: &lasr_model::InferenceWeights,
    data: lasr_data::Dataset,
    what: &str,
) -> Result<Vec<lasr_model::Encoded>> {
    let bar = progress(data.utterances.len(), &format!("{what}: listening"));
    let results: Vec<(String, lasr_model::Result<lasr_model::Encoded>)> = data
        .utterances
        .into_par_iter()
        .map(|u| {
            let encoded = model
                .listen_all(weights, u.feats.view())
                .map(|s| lasr_model::Encoded::new(s.view(), model.vocab.encode(&u.transcript)));
            bar.inc(1);
            (u.id, encoded)
        })
        .collect();
    bar.finish_and_clear();
    let mut out = Vec::with_capacity(results.len());
    for (id, r) in results {
        match r {
            Ok(e) => out.push(e),
            // Too short for the listeners; anything else is not the utterance's fault.
            Err(e @ lasr_model::Error::Batch(_)) => eprintln!("skipped {id}: {e}"),
            Err(e) => return Err(e).with_context(|| format!("{what}: {id}")),
        }
    }
    if out.is_empty() {
        bail!("{what}: no utterance could be heard");
    }
    Ok(out)
}

pub fn speller(args: SpellerArgs) -> Result<ExitCode> {
    let (model, _) = load_model(args.model.as_deref())?;
    let name = match &args.model {
        Some(p) => p.display().to_string(),
        None => "the built-in model".to_string(),
    };
    if !model.las.config.trains_speller() {
        bail!(
            "{name}: its main model was trained with CTC alone, so it has no speller to start from"
        );
    }
    if args.epochs == 0 {
        bail!("--epochs must be at least 1");
    }
    let format = args
        .weights
        .or_else(|| model.decode.as_ref().map(|d| d.weights))
        .unwrap_or(lasr_model::WeightFormat::F32);
    let mut load = lasr_data::LoadOptions {
        front: model.front_end.clone(),
        cache: args.feature_cache.clone(),
        speed_perturb: args.speed_perturb.clone(),
    };
    let train_set = load_corpus(&args.train, &load, "train")?;
    load.speed_perturb.clear();
    let valid_set = load_corpus(std::slice::from_ref(&args.valid), &load, "valid")?;
    let weights = model.inference_weights(format);
    let start = std::time::Instant::now();
    let train = encode_all(&model, &weights, train_set, "train")?;
    let valid = encode_all(&model, &weights, valid_set, "valid")?;
    let mut es = lasr_model::EnsembleSpeller::from_file(&model);
    eprintln!(
        "{name}: {} listeners, {} states per frame ({} weights); {} training and {} held-out utterances heard in {:.0} s; {} parameters to train",
        1 + model.members.len(),
        es.input_dim(),
        format.name(),
        train.len(),
        valid.len(),
        start.elapsed().as_secs_f64(),
        lasr_nn::Module::num_params(&es)
    );
    let options = lasr_model::EnsembleSpellerOptions {
        epochs: args.epochs,
        learning_rate: args.learning_rate,
        batch_frames: args.batch_frames,
        dropout: args.dropout,
        input_dropout: args.input_dropout,
        label_smoothing: args.label_smoothing,
        sampling_rate: args.sampling_rate,
        seed: args.seed,
        projection_only: args.projection_only,
        ..Default::default()
    };
    let (nll, n) = lasr_model::ensemble_speller::ensemble_speller_nll(&es, &valid, &options)?;
    let start_loss = nll / n.max(1) as f64;
    eprintln!("valid loss before training (the main speller's): {start_loss:.4} per character");
    let mut log = EpochLog::open(args.log.as_deref())?;
    let bar = batch_progress();
    let mut best = start_loss;
    let mut written = false;
    let mut out_model = model.clone();
    if let Some(d) = out_model
        .decode
        .as_mut()
        .filter(|d| d.ensemble_speller_weight > 0.0)
    {
        eprintln!(
            "the recommended ensemble speller weight {} was tuned for the file's old speller: it is left out; tune one for the new speller and pack it (lasr pack --decode)",
            d.ensemble_speller_weight
        );
        d.ensemble_speller_weight = 0.0;
    }
    let mut save = |es: &lasr_model::EnsembleSpeller, path: &Path| -> lasr_model::Result<()> {
        out_model.ensemble_speller = Some(es.clone());
        out_model.save(path)
    };
    lasr_model::train_ensemble_speller(
        &mut es,
        &train,
        &valid,
        &options,
        |p| {
            bar.set_length(p.total_steps);
            bar.set_position(p.step);
            bar.set_message(format!("epoch {} loss {:.3}", p.epoch, p.loss));
        },
        |es, e| {
            let kept = e.valid_loss < best;
            if kept {
                best = e.valid_loss;
                save(es, &args.out)?;
                written = true;
            }
            if args.epoch_files {
                save(es, &epoch_path(&args.out, e.epoch))?;
            }
            let line = serde_json::json!({"epoch": e.epoch, "train_loss": e.train_loss,
                "valid_loss": e.valid_loss, "kept": kept,
                "seconds": start.elapsed().as_secs_f64()});
            bar.suspend(|| {
                eprintln!(
                    "epoch {}: train loss {:.4}, valid {:.4}{} ({:.0} s)",
                    e.epoch,
                    e.train_loss,
                    e.valid_loss,
                    if kept { ", written" } else { "" },
                    start.elapsed().as_secs_f64()
                )
            });
            if let Some(log) = &mut log {
                log.append(&line)?;
            }
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    if !written {
        bail!(
            "no epoch beat the main speller's valid loss {start_loss:.4}: nothing written to {}",
            args.out.display()
        );
    }
    println!(
        "wrote {}: best valid loss {best:.4} per character (the main speller's {start_loss:.4})",
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
