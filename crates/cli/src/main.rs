//! `lasr`: the command-line face of the lasr speech recogniser. Each command parses its
//! arguments and calls the libraries; nothing numerical happens here.

mod plot;
mod speller;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lasr_features::{collect_audio_files, load, FrontEnd, FrontEndConfig};

use rayon::prelude::*;

/// The default model, embedded from assets/ (see build.rs and assets/README.md).
#[cfg(lasr_builtin_model)]
const BUILTIN_MODEL: Option<&[u8]> = Some(include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../assets/model.safetensors"
)));
#[cfg(not(lasr_builtin_model))]
const BUILTIN_MODEL: Option<&[u8]> = None;

/// The default model's character language model.
#[cfg(lasr_builtin_lm)]
const BUILTIN_LM: Option<&[u8]> = Some(include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../assets/lm.bin"
)));
#[cfg(not(lasr_builtin_lm))]
const BUILTIN_LM: Option<&[u8]> = None;

/// The default model's word language model.
#[cfg(lasr_builtin_word_lm)]
const BUILTIN_WORD_LM: Option<&[u8]> = Some(include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../assets/words.bin"
)));
#[cfg(not(lasr_builtin_word_lm))]
const BUILTIN_WORD_LM: Option<&[u8]> = None;

/// The default model's LSTM language model, which re-ranks the CTC search's n-best.
#[cfg(lasr_builtin_rnnlm)]
const BUILTIN_RNNLM: Option<&[u8]> = Some(include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../assets/rnnlm.safetensors"
)));
#[cfg(not(lasr_builtin_rnnlm))]
const BUILTIN_RNNLM: Option<&[u8]> = None;

/// The default model's backward LSTM language model, beside the forward one.
#[cfg(lasr_builtin_rnnlm_backward)]
const BUILTIN_RNNLM_BACKWARD: Option<&[u8]> = Some(include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../assets/rnnlm-backward.safetensors"
)));
#[cfg(not(lasr_builtin_rnnlm_backward))]
const BUILTIN_RNNLM_BACKWARD: Option<&[u8]> = None;

/// The model at `path`, or the built-in one; the flag says which.
fn load_model(path: Option<&Path>) -> Result<(lasr_model::ModelFile, bool)> {
    match (path, BUILTIN_MODEL) {
        (Some(p), _) => Ok((lasr_model::ModelFile::load(p)?, false)),
        (None, Some(bytes)) => Ok((
            lasr_model::ModelFile::from_bytes(bytes).context("the built-in model")?,
            true,
        )),
        (None, None) => bail!(
            "this lasr was built without a default model (no assets/model.safetensors): pass --model FILE"
        ),
    }
}

fn builtin_lm(vocab: &lasr_decode::Vocab) -> Result<Option<lasr_model::SharedLm>> {
    BUILTIN_LM
        .map(|bytes| {
            lasr_decode::CharLm::from_bytes(bytes, vocab)
                .context("the built-in language model")
                .map(|lm| lasr_model::SharedLm(std::sync::Arc::new(lm)))
        })
        .transpose()
}

fn builtin_word_lm(vocab: &lasr_decode::Vocab) -> Result<Option<lasr_model::SharedWordLm>> {
    BUILTIN_WORD_LM
        .map(|bytes| {
            lasr_decode::WordLm::from_bytes(bytes, vocab)
                .context("the built-in word language model")
                .map(|lm| lasr_model::SharedWordLm(std::sync::Arc::new(lm)))
        })
        .transpose()
}

/// One of the built-in LSTM language models (`bytes`, `what` it is) as a scorer.
fn builtin_rnnlm(
    bytes: Option<&[u8]>,
    what: &str,
    vocab: &lasr_decode::Vocab,
    format: lasr_model::WeightFormat,
) -> Result<Option<lasr_model::SharedRnnLm>> {
    bytes
        .map(|bytes| {
            let (lm, v) = lasr_model::RnnLm::from_bytes(bytes)
                .with_context(|| format!("the built-in {what}"))?;
            if &v != vocab {
                bail!("the built-in {what} was trained on another vocabulary than the model's");
            }
            Ok(lasr_model::SharedRnnLm(std::sync::Arc::new(
                lm.scorer(&v, format)?,
            )))
        })
        .transpose()
}

#[derive(Parser)]
#[command(
    name = "lasr",
    version,
    about = "Listen, Attend and Spell speech recognition on a plain CPU",
    long_about = "Listen, Attend and Spell speech recognition on a plain CPU.\n\n\
        Audio may be WAV (8/16/24/32-bit integer or 32-bit float, any channel count) or \
        FLAC, at any sample rate: it is downmixed to mono and resampled to 16 kHz.",
    after_help = "Examples:\n  \
        lasr transcribe assets/sample.wav              # the built-in model\n  \
        lasr bench LibriSpeech/test-clean --limit 200  # WER, CER, real-time factor\n  \
        lasr features assets/sample.wav --out sample.npy --plot sample.png\n  \
        lasr cmvn /data/LibriSpeech/train-clean-100 --out frontend.json\n  \
        lasr features utt.flac --config frontend.json --json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compute log-mel filterbank features of audio files, to inspect or to save as .npy.
    Features(FeaturesArgs),
    /// Accumulate global mean/variance statistics over a corpus and write a front-end
    /// config that normalises with them.
    Cmvn(CmvnArgs),
    /// Print the default front-end configuration as JSON, to edit and pass with --config.
    Config,
    /// Turn speech into text with a model file.
    Transcribe(TranscribeArgs),
    /// Train a model on a corpus, validating and checkpointing after every epoch.
    Train(TrainArgs),
    /// Measure WER, CER and speed of a model on a transcribed corpus.
    Bench(BenchArgs),
    /// Build a character n-gram language model from text, for `--lm`.
    Lm(LmArgs),
    /// Train a character LSTM language model from text, for re-ranking the n-best
    /// list of a CTC search (`--rnnlm`).
    Rnnlm(RnnlmArgs),
    /// Train a speller that attends over every listener of an ensemble, for
    /// re-ranking the n-best list of a CTC search (`--ensemble-speller`).
    Speller(speller::SpellerArgs),
    /// Measure a model's CTC label prior on a corpus (the mean over its frames of each
    /// symbol's CTC probability, of an ensemble's mixture) and write a copy of the
    /// model holding it, for --ctc-prior-scale.
    Prior(PriorArgs),
    /// Show what a model file holds: sizes, parameters, features, recommended
    /// decoding and how it was trained.
    Info {
        /// Model file; default: the built-in model.
        #[arg(value_name = "MODEL")]
        model: Option<PathBuf>,
    },
    /// Average the parameters of checkpoints of one run (e.g. its last epochs), which
    /// often decodes better than any one of them.
    Average {
        /// Two or more model files from the same run.
        #[arg(required = true, num_args = 2.., value_name = "MODEL")]
        models: Vec<PathBuf>,
        /// Where to write the averaged model.
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Join independently trained models into one file whose CTC distributions are
    /// mixed frame by frame (p = w1 p1 + w2 p2 + ...) before the search: a CTC
    /// ensemble. The first model's speller, front end and decoding stay; the others
    /// contribute their listener and CTC head. Checkpoints of one run gain little
    /// this way (average them instead); separate runs gain more. The first model may
    /// be an ensemble already: its members stay (but those --drop names), and
    /// --weights then lists the first's main model, its kept members, then the other
    /// models. One ensemble alone with --drop makes a smaller ensemble (keeping the
    /// kept models' proportions unless --weights says otherwise), or with every member
    /// dropped its main model alone; alone with --weights it is re-weighted.
    #[command(
        after_help = "Examples:\n  lasr ensemble run-a.safetensors run-b.safetensors --weights 0.6,0.4 -o ens.safetensors\n  \
        lasr pack ens.safetensors --decode decode.json -o ens-packed.safetensors   # retune the decoding\n  \
        lasr ensemble ens.safetensors run-c.safetensors --drop 1 --weights 0.5,0.5 -o swapped.safetensors   # run-c replaces run-b\n  \
        lasr ensemble ens.safetensors --main phase2.safetensors -o new-main.safetensors   # a later phase of the main model\n  \
        lasr ensemble ens.safetensors --take 2 --storage f32 -o member2.safetensors   # a member alone, to train further"
    )]
    Ensemble {
        /// The main model (or an ensemble to grow), then the members: all with a CTC
        /// head, the same feature settings, vocabulary and time reduction (CMVN
        /// statistics may differ: a member's are folded into its first layer).
        #[arg(required = true, num_args = 1.., value_name = "MODEL")]
        models: Vec<PathBuf>,
        /// Mixture weights, one per model in the same order (a first ensemble counts
        /// as its main model and each member it keeps), summing to 1; default: equal
        /// (or, for one ensemble alone, its kept weights scaled to sum to 1).
        #[arg(long, value_delimiter = ',', value_name = "W,W,...")]
        weights: Option<Vec<f32>>,
        /// Members of the first model to leave out, by the number `lasr info` gives
        /// them ("member" in its "ensemble" list, from 1).
        #[arg(long = "drop", value_delimiter = ',', value_name = "N,N,...")]
        leave_out: Vec<usize>,
        /// Where to write the ensemble.
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
        /// How to store the weights (default: as the first model is stored).
        #[arg(long, value_enum)]
        storage: Option<StorageArg>,
        /// Put this model in place of the ensemble's main model (its listener, speller
        /// and CTC head), keeping the members, their weights and the recommended
        /// decoding: for a later phase of the main model (`lasr train --init`), which
        /// reads the same features and statistics. Takes one MODEL, the ensemble.
        #[arg(long, value_name = "MODEL", conflicts_with_all = ["weights", "leave_out"])]
        main: Option<PathBuf>,
        /// Write member N of the ensemble (numbered as `lasr info` numbers them) as a
        /// model of its own, to train further (`lasr train --init`) and join again; it
        /// reads the ensemble's features and carries no recommended decoding. Members
        /// trained with CTC alone only. Takes one MODEL, the ensemble.
        #[arg(long, value_name = "N", conflicts_with_all = ["weights", "leave_out", "main"])]
        take: Option<usize>,
    },
    /// Write a copy of a model file that recommends a way of decoding (a JSON of
    /// decoding options: what `transcribe` and `bench` then use by default), that
    /// stores its weights in 16 or 8 bits, or that takes each utterance's spectral
    /// shape off its features (or not).
    #[command(
        after_help = "Examples:\n  lasr pack run/model.safetensors --decode decode.json -o packed.safetensors\n  \
        lasr pack packed.safetensors --storage f16 -o small.safetensors   # half the size, for running only\n  \
        lasr pack packed.safetensors --storage int8 -o tiny.safetensors   # about a quarter, for int8 decoding\n  \
        lasr pack packed.safetensors --utterance-shape true -o shaped.safetensors   # a microphone's colouring off"
    )]
    Pack {
        /// The trained model.
        #[arg(value_name = "MODEL")]
        model: PathBuf,
        /// Decoding options as JSON, e.g. {"ctc_only": true, "lm_weight": 0.6}
        /// (default: keep the model's).
        #[arg(long, value_name = "JSON", required_unless_present_any = ["storage", "utterance_shape", "utterance_spread"])]
        decode: Option<PathBuf>,
        /// Set the front end's utterance shape (`true`: each utterance's mean spectral
        /// shape comes off after CMVN wherever the model is used; default: keep the
        /// model's).
        #[arg(long, value_name = "BOOL")]
        utterance_shape: Option<bool>,
        /// Set the front end's utterance spread power P (0 to 1: each band's deviations
        /// from its utterance mean scaled by its utterance deviation to the -P, after
        /// the shape, wherever the model is used; 0 = off; default: keep the model's).
        #[arg(long, value_name = "P")]
        utterance_spread: Option<f32>,
        /// Where to write the packed model.
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
        /// How to store the weights (default: as the model is stored).
        #[arg(long, value_enum)]
        storage: Option<StorageArg>,
    },
    /// Draw a training log (OUT/log.jsonl of `lasr train`) as an SVG of loss and error
    /// rates.
    Curves {
        /// The log.jsonl to read.
        #[arg(value_name = "LOG")]
        log: PathBuf,
        /// SVG to write.
        #[arg(short, long, value_name = "SVG")]
        out: PathBuf,
    },
}

/// Weight storage of a model file.
#[derive(Clone, Copy, clap::ValueEnum)]
enum StorageArg {
    /// 32-bit floats, as training writes them.
    F32,
    /// 16-bit IEEE half floats: half the file, each weight rounded to the nearest
    /// f16 (within 2^-11 of itself above 6e-5); for models that are only run (model
    /// file format 3, which older builds refuse by version).
    F16,
    /// The recurrent weight matrices (nearly all of a model) as 8-bit integers with a
    /// scale per row, the rest as f16: a quarter of f32 for those matrices. They are
    /// the integers `--weights int8` decoding makes anyway, so decoding in int8 reads
    /// it as it reads the f16 file; other decodings compute with the rounded weights
    /// (format 4, which older builds refuse by version). Recommend int8 decoding
    /// with it (`"weights": "int8"` in the --decode JSON).
    Int8,
}

impl From<StorageArg> for lasr_model::Storage {
    fn from(s: StorageArg) -> Self {
        match s {
            StorageArg::F32 => lasr_model::Storage::F32,
            StorageArg::F16 => lasr_model::Storage::F16,
            StorageArg::Int8 => lasr_model::Storage::Int8,
        }
    }
}

#[derive(Args)]
#[command(
    after_help = "Example (LibriSpeech layout, Kaldi data directories, or .tsv manifests of\n\
    AUDIO<TAB>TRANSCRIPT):\n  \
    lasr train --train data/train-clean-5 --train data/train-clean-100 \\\n             \
    --valid ../shared/data/librispeech/test-clean-dev --out runs/las-small --preset small \\\n             \
    --feature-cache ~/.cache/lasr-features --speed-perturb 0.9,1.0,1.1\n\n\
    A later phase from a model (--init), or a speller grown onto a CTC-only model's listener\n\
    (--init with a --model-config of the same listener fields and a ctc_weight below 1):\n  \
    lasr train ... --out runs/joint --init runs/ctc/model.safetensors --model-config joint.json\n\n\
    Writes OUT/model.safetensors (latest), OUT/best.safetensors (lowest validation CER),\n\
    OUT/optimizer.safetensors (to --resume), OUT/log.jsonl and, with keep_epochs,\n\
    OUT/epoch-N.safetensors (for lasr average). Checkpoints are written\n\
    atomically: a crash or Ctrl-C leaves the last good one. NaN gradients stop the run."
)]
struct TrainArgs {
    /// Training corpus: a LibriSpeech-layout directory, a Kaldi data directory
    /// (wav.scp + text [+ segments]) or a TSV manifest (repeatable).
    #[arg(long, required = true, value_name = "PATH")]
    train: Vec<PathBuf>,
    /// Validation corpus, same forms.
    #[arg(long, value_name = "PATH")]
    valid: PathBuf,
    /// Keep raw log-mel features here between runs (one file per utterance, keyed by
    /// the feature settings and each audio file's path, size and time); default: none,
    /// features are computed at every start.
    #[arg(long, value_name = "DIR")]
    feature_cache: Option<PathBuf>,
    /// Speed perturbation of the training set: each factor other than 1 adds a copy of
    /// every training utterance played that much faster (Kaldi's 0.9,1.0,1.1 triples
    /// it). Validation is never perturbed.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    speed_perturb: Vec<f32>,
    /// Subtract each utterance's own mean from its features (per-utterance CMN, before
    /// the training set's global CMVN), here and wherever the model is used: removes a
    /// recording's fixed gain and microphone colouring.
    #[arg(long)]
    utterance_mean: bool,
    /// Take each utterance's mean spectral shape off after the global CMVN (`true`: its
    /// mean over frames less that mean's average over the bands), here and wherever
    /// the model is used: removes a microphone's colouring but keeps the level.
    /// Allowed with --init, either way (a model trained without it learns to read with
    /// it); default: the initial model's setting (the built-in model's is true), else
    /// false.
    #[arg(long, value_name = "BOOL")]
    utterance_shape: Option<bool>,
    /// Scale each band's deviations from its utterance mean by the band's deviation
    /// over the utterance to the power -P (0 to 1, after CMVN and the shape; 0 = off),
    /// here and wherever the model is used. Allowed with --init; default: the initial
    /// model's setting, else 0.
    #[arg(long, value_name = "P")]
    utterance_spread: Option<f32>,
    /// Frames (10 ms) of each band's floor added at both ends of every utterance, here
    /// and wherever the model is used: gives the CTC head room to spell words in audio
    /// cut tight around them (spoken digits, commands). Allowed with --init; default:
    /// the initial model's setting, else 0.
    #[arg(long, value_name = "N")]
    pad_frames: Option<usize>,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// A named model and its training options: `small` (3.65 M parameters, joint
    /// CTC-attention, ~2 h on 2 cores for 7.8 h of speech; the shipped model's recipe)
    /// or `reference` (the LAS paper's 13.6 M). --model-config and
    /// --options replace its halves; flags below override either.
    #[arg(long, value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(lasr_model::ModelConfig::PRESETS))]
    preset: Option<String>,
    /// Model sizes as JSON (fields of lasr_model::ModelConfig; missing ones default to
    /// the LAS paper's: 13.6 M parameters).
    #[arg(long, value_name = "JSON")]
    model_config: Option<PathBuf>,
    /// Training options as JSON (fields of lasr_model::TrainOptions); flags below override.
    #[arg(long, value_name = "JSON")]
    options: Option<PathBuf>,
    /// Also validate (and keep the best model) every N steps, not only after each epoch.
    #[arg(long, value_name = "N")]
    validate_every: Option<usize>,
    #[arg(long, value_name = "N")]
    epochs: Option<usize>,
    /// Adam learning rate.
    #[arg(long, value_name = "LR")]
    lr: Option<f32>,
    /// Most padded frames per batch.
    #[arg(long, value_name = "N")]
    batch_frames: Option<usize>,
    /// Turn SpecAugment off.
    #[arg(long)]
    no_spec_augment: bool,
    /// SpecAugment's masks as JSON (fields of lasr_features::SpecAugmentConfig:
    /// freq_masks, max_freq_width, time_masks, max_time_width, max_time_fraction,
    /// mask_value; missing ones default to LibriSpeech's policy: 2 masks up to 27 bins,
    /// 2 up to 100 frames and a fifth of the utterance). Turns SpecAugment on; milder
    /// masks suit small models and corpora. Kept in the model file: a resumed run goes
    /// on with the same masks (and SpecAugment on or off as it trained), and an --init
    /// run takes the initial model's masks unless this is given.
    #[arg(long, value_name = "JSON", conflicts_with = "no_spec_augment")]
    spec_augment: Option<PathBuf>,
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Weight of the CTC loss in `(1 - W) * attention + W * CTC` (the model's
    /// `ctc_weight`; 0 builds no CTC head, 1 trains no speller). Overrides the preset
    /// or --model-config; with --init alone it sets a later phase's weight, which must
    /// keep the initial model's heads (stay inside (0, 1) for a joint model). A resume
    /// keeps the run's.
    #[arg(long, value_name = "W")]
    ctc_weight: Option<f32>,
    /// Label smoothing of the speller's cross-entropy (the model's `label_smoothing`,
    /// at least 0 and below 1). Overrides the preset or --model-config, or the initial
    /// model's with --init; a resume keeps the run's.
    #[arg(long, value_name = "S")]
    label_smoothing: Option<f32>,
    /// Dropout on the listener layers' outputs and the speller's output-layer input
    /// (the model's `dropout`, at least 0 and below 1). Overrides as --label-smoothing
    /// does.
    #[arg(long, value_name = "P")]
    dropout: Option<f32>,
    /// Scheduled sampling: the chance that the speller is fed its own previous guess
    /// instead of the true character (the model's `sampling_rate`, 0 to 1). Overrides
    /// as --label-smoothing does.
    #[arg(long, value_name = "R")]
    sampling_rate: Option<f32>,
    /// Start from this trained model instead of random weights (fine-tuning, or a
    /// second phase with a new schedule or data): its sizes, feature settings and
    /// normalisation statistics are kept (its training settings too, unless
    /// --ctc-weight, --label-smoothing, --dropout or --sampling-rate say otherwise);
    /// the optimiser, the learning-rate schedule and the step count start afresh. Of
    /// an ensemble (the built-in model is one, assets/model.safetensors) only the main
    /// model is trained and written: one model, without the members or the file's
    /// recommended decoding. With --model-config, a model of that config (every field
    /// from the JSON, missing ones at the reference's defaults, training settings
    /// included) grows from it: the listener (whose fields must be the initial
    /// model's), the CTC head and a trained speller start from its tensors where the
    /// names and shapes agree, the rest fresh (a speller grown onto a listener trained
    /// with CTC alone); what was left out of it is listed.
    #[arg(long, value_name = "MODEL", conflicts_with_all = ["resume", "utterance_mean"])]
    init: Option<PathBuf>,
    /// Print the final validation as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(after_help = "Example:\n  \
    lasr prior -m ens.safetensors data/train-clean-5 data/train-clean-100 -o ens-prior.safetensors\n  \
    lasr bench dev.tsv -m ens-prior.safetensors --ctc-prior-scale 0.6   # then tune the scale\n\n\
    The corpora's transcripts are not read: any speech the model should hear will do, but\n\
    its training data is what the prior describes (the letters' frequencies it learned).\n\
    Changing the ensemble afterwards (members, weights, main model) drops the prior; a\n\
    scale the file already recommends stays.")]
struct PriorArgs {
    /// Corpora: LibriSpeech-layout directories, Kaldi data directories or TSV manifests.
    #[arg(required = true, value_name = "CORPUS")]
    corpora: Vec<PathBuf>,
    /// Model file; default: the built-in model.
    #[arg(short, long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Measure only the first N utterances (by id) of all the corpora together.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// How the recurrent weights are held while measuring (default: what the model
    /// file recommends for decoding, else f32).
    #[arg(long, value_name = "FORMAT")]
    weights: Option<lasr_model::WeightFormat>,
    /// Where to write the model with its prior.
    #[arg(short, long, value_name = "FILE")]
    out: PathBuf,
    /// Print the measurement as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    lasr transcribe speech.flac                    # the built-in model and LM\n  \
    lasr transcribe --model model.safetensors speech.flac\n  \
    lasr transcribe --model model.safetensors corpus/ --json --nbest 5\n  \
    sox speech.mp3 -t wav - | lasr transcribe --model model.safetensors -\n\n\
    Prints FILE<TAB>TEXT per input. With --json each line holds the text, word times\n\
    (from attention peaks, or CTC spikes with --ctc-only), the n-best list with scores,\n\
    the duration and the real-time factor. Audio longer than --max-chunk seconds is cut\n\
    at its quietest points and the pieces' texts joined.")]
struct TranscribeArgs {
    /// Audio files, directories searched recursively for .wav and .flac files, or `-`
    /// for WAV/FLAC bytes on standard input.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// Model file (safetensors with lasr metadata, as `lasr train` writes); default:
    /// the model built into this binary.
    #[arg(short, long, value_name = "FILE")]
    model: Option<PathBuf>,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Alternatives to report per file (at most the beam width).
    #[arg(long, default_value_t = 1, value_name = "K")]
    nbest: usize,
    /// Print one JSON object per input instead of `file<TAB>text` lines.
    #[arg(long)]
    json: bool,
    /// Draw each file's attention alignment (listener frames across, output characters
    /// up) as DIR/<name>.attention.png.
    #[arg(long, value_name = "DIR")]
    plot_attention: Option<PathBuf>,
}

#[derive(Args, Clone)]
#[command(next_help_heading = "Decoding (defaults: what the model file recommends)")]
struct DecodeArgs {
    /// Beam width; 1 is greedy decoding. Without it: the model file's recommendation,
    /// but the attention search's default (8) for attention searches when the file
    /// recommends a CTC search (`bench`'s attention settings, --attention, --joint).
    #[arg(long, value_name = "N")]
    beam: Option<usize>,
    /// Length normalisation exponent: score = log_prob / length^ALPHA (0 = none).
    #[arg(long, value_name = "ALPHA")]
    length_norm: Option<f32>,
    /// Attention beam: end a hypothesis only where <eos> is within this many nats of
    /// the best other token (keeps early endings out of wide beams).
    #[arg(long, value_name = "NATS")]
    eos_threshold: Option<f32>,
    /// Rank the beam's hypotheses by (1 - W) * attention + W * CTC log-probability
    /// (models trained with a CTC head; 0 = attention only).
    #[arg(long, value_name = "W")]
    ctc_weight: Option<f32>,
    /// Apply --ctc-weight at every step of the attention beam (one-pass joint
    /// CTC/attention decoding: hypotheses that run past the audio or skip some of it
    /// drop out at once) instead of re-ranking the finished hypotheses.
    #[arg(long)]
    joint: bool,
    /// Decode with the CTC head alone, no attention: its best path with --beam 1, no
    /// --lm, --lexicon or --word-lm, else a CTC prefix beam search with them.
    #[arg(long)]
    ctc_only: bool,
    /// Decode with the attention decoder even if the model recommends CTC alone.
    #[arg(long, conflicts_with = "ctc_only")]
    attention: bool,
    /// CTC beam search: score bonus per emitted character (balances --lm).
    #[arg(long, value_name = "B")]
    ctc_bonus: Option<f32>,
    /// Longest piece of audio decoded at once, seconds.
    #[arg(long, value_name = "SECONDS")]
    max_chunk: Option<f32>,
    /// Character language model (from `lasr lm`) fused into the beam search. The
    /// built-in model comes with the built-in LM unless --no-lm.
    #[arg(long, value_name = "FILE")]
    lm: Option<PathBuf>,
    /// Decode without a language model.
    #[arg(long, conflicts_with = "lm")]
    no_lm: bool,
    /// Weight of the language model's log-probabilities.
    #[arg(long, value_name = "W")]
    lm_weight: Option<f32>,
    /// Known words for the CTC beam search (a word list, or any text: words are split
    /// at white space), which charges --oov-penalty for every word outside them; with
    /// --ctc-only. Replaces the built-in word model.
    #[arg(long, value_name = "FILE")]
    lexicon: Option<PathBuf>,
    /// Score (natural log) subtracted per word outside the --lexicon or --word-lm.
    #[arg(long, value_name = "P")]
    oov_penalty: Option<f32>,
    /// Word language model (`lasr lm --words`) for the CTC beam search, with
    /// --ctc-only: each finished word scores --word-lm-weight times its log-probability
    /// given the words before it, and its words are the known words (as --lexicon).
    /// The built-in model comes with the built-in word model unless --no-word-lm.
    #[arg(long, value_name = "FILE", conflicts_with = "lexicon")]
    word_lm: Option<PathBuf>,
    /// Decode without a word language model.
    #[arg(long, conflicts_with = "word_lm")]
    no_word_lm: bool,
    /// Weight of the word model's log-probabilities.
    #[arg(long, value_name = "W")]
    word_lm_weight: Option<f32>,
    /// Score added per word with --word-lm (offsets its cost per word).
    #[arg(long, value_name = "B")]
    word_bonus: Option<f32>,
    /// Attention rescoring, with CTC beam search: add W times the attention decoder's
    /// log-probability to each of the --rescore-nbest best hypotheses and re-rank
    /// them (0 = off).
    #[arg(long, value_name = "W")]
    rescore: Option<f32>,
    /// How many of the CTC beam's best hypotheses --rescore re-ranks (and keeps).
    #[arg(long, value_name = "N")]
    rescore_nbest: Option<usize>,
    /// LSTM language model (from `lasr rnnlm`) that re-ranks the --rescore-nbest best
    /// hypotheses of the CTC beam search (with --ctc-only; beside --rescore or
    /// alone), taking over --rnnlm-share of the character LM's weight there. The
    /// built-in model brings the built-in one when its decoding recommends a share
    /// and a character LM is on, unless --no-rnnlm.
    #[arg(long, value_name = "FILE")]
    rnnlm: Option<PathBuf>,
    /// A backward LSTM language model (`lasr rnnlm --reverse`), beside the forward
    /// one: each hypothesis's LSTM log-probability is then the mean of the two. It
    /// replaces a built-in backward model but keeps the built-in forward one (alone:
    /// add --no-rnnlm); --rnnlm FILE replaces both built-ins.
    #[arg(long, value_name = "FILE")]
    rnnlm_backward: Option<PathBuf>,
    /// Decode without the built-in LSTM language models (either direction); a
    /// --rnnlm-backward FILE still re-ranks.
    #[arg(long, conflicts_with = "rnnlm")]
    no_rnnlm: bool,
    /// The share (0 to 2) of the character LM's weight the LSTM takes over when it
    /// re-ranks: the hypotheses' LM term becomes --lm-weight x ((1 - S) x character
    /// LM log-prob + S x LSTM log-prob); without a character LM, S x --lm-weight x
    /// the LSTM's log-prob. 0 turns the LSTM off; past 1 the LSTM's disagreement with
    /// the character LM counts for more than that LM's weight.
    #[arg(long, value_name = "S")]
    rnnlm_share: Option<f32>,
    /// Ensemble speller rescoring, with CTC beam search: add W times the log-probability
    /// of the model file's ensemble speller (a speller attending over every listener
    /// of the ensemble, from `lasr speller`) to each of the --rescore-nbest best
    /// hypotheses and re-rank them, beside --rescore's main speller (0 = off).
    #[arg(long, value_name = "W")]
    ensemble_speller: Option<f32>,
    /// CTC-only decoding: divide S times the letters' label prior out of the CTC
    /// output before the prefix search (0 to 2; 0 = off): each letter's
    /// log-probability loses S x (its log-prior among the letters less their
    /// prior-weighted mean), so the choice between letters rests more on the sound and
    /// the language models, which count the letters' frequencies themselves. Blank and
    /// space are untouched; attention searches ignore it. The model file must hold a
    /// prior (`lasr prior` measures one).
    #[arg(long, value_name = "S")]
    ctc_prior_scale: Option<f32>,
    /// How the recurrent weights are held while decoding: `f32` is exactly the
    /// file's weights; `bf16` rounds them to bfloat16 (8 significant bits), so each step of the
    /// listener and the attention decoder reads half the bytes; `int8` stores 8-bit
    /// integers with a scale per row, a quarter of the bytes, and quantizes each input
    /// vector too, summing the products in integers (the fastest: AVX-512 VNNI where
    /// the CPU has it, else AVX2). Both decode faster with scores that may differ
    /// slightly. Default: what the model file recommends, else f32.
    #[arg(long, value_name = "FORMAT")]
    weights: Option<lasr_model::WeightFormat>,
    /// Take each utterance's mean spectral shape off its features after CMVN (`true`)
    /// or not (`false`): a microphone's colouring goes, the level stays. Default: the
    /// model file's front-end setting (the built-in model's is true).
    #[arg(long, value_name = "BOOL")]
    utterance_shape: Option<bool>,
    /// Scale each band's deviations from its utterance mean by the band's deviation
    /// over the utterance to the power -P (0 to 1, after the shape; 0 = off).
    /// Default: the model file's front-end setting (the built-in model's is 0).
    #[arg(long, value_name = "P")]
    utterance_spread: Option<f32>,
}

impl DecodeArgs {
    /// The model with the front-end settings the flags override.
    fn front_end(&self, mut model: lasr_model::ModelFile) -> Result<lasr_model::ModelFile> {
        if let Some(v) = self.utterance_shape {
            model.front_end.utterance_shape = v;
        }
        if let Some(p) = self.utterance_spread {
            model.front_end.utterance_spread = p;
            model.front_end.validate().context("--utterance-spread")?;
        }
        Ok(model)
    }

    /// The model file's recommended decoding (or the library's defaults, with CTC
    /// re-ranking when the model has a CTC head), overridden by the flags given.
    fn options(
        &self,
        model: &lasr_model::ModelFile,
        builtin: bool,
    ) -> Result<lasr_model::DecodeOptions> {
        let mut o = model
            .decode
            .clone()
            .unwrap_or_else(|| lasr_model::DecodeOptions {
                ctc_weight: if model.las.ctc.is_some() {
                    DEFAULT_CTC_WEIGHT
                } else {
                    0.0
                },
                // A model trained on CTC alone has an untrained speller.
                ctc_only: !model.las.config.trains_speller(),
                ..Default::default()
            });
        if let Some(b) = self.beam {
            o.search.beam_size = b;
        }
        if let Some(a) = self.length_norm {
            o.search.length_norm = if a > 0.0 {
                lasr_decode::LengthNorm::Power(a)
            } else {
                lasr_decode::LengthNorm::None
            };
        }
        if let Some(w) = self.ctc_weight {
            o.ctc_weight = w;
        }
        if self.joint {
            // Joint decoding is an attention search scored by CTC.
            o.ctc_joint = true;
            o.ctc_only = false;
            if o.ctc_weight == 0.0 {
                o.ctc_weight = DEFAULT_CTC_WEIGHT;
            }
        }
        if let Some(t) = self.eos_threshold {
            o.search.eos_threshold = Some(t);
        }
        if self.ctc_only {
            o.ctc_only = true;
        }
        if self.attention {
            o.ctc_only = false;
        }
        if let Some(b) = self.ctc_bonus {
            o.ctc_insertion_bonus = b;
        }
        if let Some(m) = self.max_chunk {
            o.max_chunk_seconds = m;
        }
        if let Some(w) = self.lm_weight {
            o.lm_weight = w;
        }
        if let Some(path) = &self.lm {
            o.lm = Some(lasr_model::SharedLm(std::sync::Arc::new(
                lasr_decode::CharLm::load(path, &model.vocab)?,
            )));
        } else if !self.no_lm && builtin {
            o.lm = builtin_lm(&model.vocab)?;
        }
        if let Some(p) = self.oov_penalty {
            o.oov_penalty = p;
        }
        if let Some(path) = &self.lexicon {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read the word list", path.display()))?;
            let lex = lasr_decode::Lexicon::from_text(&model.vocab, &text)
                .with_context(|| format!("{}: not a usable word list", path.display()))?;
            o.lexicon = Some(lasr_model::SharedLexicon(std::sync::Arc::new(lex)));
        }
        if let Some(w) = self.word_lm_weight {
            o.word_lm_weight = w;
        }
        if let Some(b) = self.word_bonus {
            o.word_bonus = b;
        }
        if let Some(w) = self.rescore {
            o.attention_rescore_weight = w;
        }
        if let Some(w) = self.ensemble_speller {
            o.ensemble_speller_weight = w;
        }
        if let Some(s) = self.ctc_prior_scale {
            o.ctc_prior_scale = s;
        }
        if let Some(n) = self.rescore_nbest {
            o.rescore_nbest = n;
        }
        if let Some(w) = self.weights {
            o.weights = w;
        }
        if let Some(w) = self.rnnlm_share {
            o.rnnlm_share = w;
        }
        let given = |path: &Path, flag: &str, reversed: bool| -> Result<lasr_model::SharedRnnLm> {
            let (lm, vocab) = lasr_model::RnnLm::load(path)?;
            if vocab != model.vocab {
                bail!(
                    "{}: the LSTM language model was trained on another vocabulary than the model's",
                    path.display()
                );
            }
            if lm.config.reversed != reversed {
                bail!(
                    "{}: a {} LSTM language model given as {flag}",
                    path.display(),
                    if reversed { "forward" } else { "backward" }
                );
            }
            if o.rnnlm_share == 0.0 && self.rnnlm_share.is_none() {
                bail!("{flag} needs --rnnlm-share S above 0 (the model file recommends none)");
            }
            Ok(lasr_model::SharedRnnLm(std::sync::Arc::new(
                lm.scorer(&vocab, o.weights)?,
            )))
        };
        if let Some(path) = &self.rnnlm_backward {
            o.rnnlm_backward = Some(given(path, "--rnnlm-backward", true)?);
        }
        if let Some(path) = &self.rnnlm {
            o.rnnlm = Some(given(path, "--rnnlm", false)?);
        } else if !self.no_rnnlm
            && builtin
            && o.ctc_only
            && o.rnnlm_share > 0.0
            // The recommended share was tuned against the character LM; without one
            // only an explicit --rnnlm-share brings the LSTM in.
            && (o.lm.is_some() || self.rnnlm_share.is_some())
        {
            // Only the CTC search re-ranks with one: the attention search would refuse it.
            o.rnnlm = builtin_rnnlm(
                BUILTIN_RNNLM,
                "LSTM language model",
                &model.vocab,
                o.weights,
            )?;
            if self.rnnlm_backward.is_none() {
                o.rnnlm_backward = builtin_rnnlm(
                    BUILTIN_RNNLM_BACKWARD,
                    "backward LSTM language model",
                    &model.vocab,
                    o.weights,
                )?;
            }
        }
        if self.rnnlm_share.is_some_and(|s| s > 0.0)
            && o.rnnlm.is_none()
            && o.rnnlm_backward.is_none()
        {
            let why = if self.no_rnnlm {
                "--no-rnnlm turned it off"
            } else if !o.ctc_only {
                "only the CTC search (--ctc-only) re-ranks with one"
            } else {
                "this model comes without one: give --rnnlm FILE or --rnnlm-backward FILE"
            };
            bail!("--rnnlm-share has no LSTM language model to apply to: {why}");
        }
        if let Some(path) = &self.word_lm {
            o.word_lm = Some(lasr_model::SharedWordLm(std::sync::Arc::new(
                lasr_decode::WordLm::load(path, &model.vocab)?,
            )));
        } else if !self.no_word_lm && builtin && o.ctc_only && self.lexicon.is_none() {
            // Only CTC search uses one: the attention decoder would refuse it.
            o.word_lm = builtin_word_lm(&model.vocab)?;
        }
        // A setting for a word model that is not there would be silently ignored.
        if o.word_lm.is_none() {
            let why = if self.no_word_lm {
                "--no-word-lm turned the word model off"
            } else if self.lexicon.is_some() {
                "--lexicon replaces the word model with a plain word list"
            } else if !o.ctc_only {
                "only the CTC search (--ctc-only) uses a word model"
            } else {
                "this model comes without one: give --word-lm FILE"
            };
            for (flag, given) in [
                ("--word-lm-weight", self.word_lm_weight.is_some()),
                ("--word-bonus", self.word_bonus.is_some()),
            ] {
                if given {
                    bail!("{flag} has no word model to apply to: {why}");
                }
            }
            if self.oov_penalty.is_some() && o.lexicon.is_none() {
                bail!(
                    "--oov-penalty has no known words to apply to (--word-lm or --lexicon): {why}"
                );
            }
        }
        if self.rescore_nbest.is_some() && o.attention_rescore_weight == 0.0 && o.rnnlm.is_none() {
            bail!(
                "--rescore-nbest sets how many hypotheses --rescore or --rnnlm re-rank: give one of them too"
            );
        }
        Ok(o)
    }
}

/// CTC weight in decoding when the model has a CTC head and none is given.
const DEFAULT_CTC_WEIGHT: f32 = 0.3;

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    lasr bench ../shared/data/librispeech/test-clean-dev --model model.safetensors\n  \
    lasr bench dev.tsv --model model.safetensors --limit 200 --report dev-report.json\n\n\
    Decodes the corpus greedily, with the beam, and (for models with a CTC head) with\n\
    CTC re-ranking and CTC alone, and prints WER/CER with substitutions, deletions and\n\
    insertions and the real-time factor of each. References and hypotheses are\n\
    upper-cased and stripped of punctuation before scoring.")]
struct BenchArgs {
    /// A LibriSpeech-layout directory, a Kaldi data directory (wav.scp + text
    /// [+ segments]) or a TSV manifest (AUDIO<TAB>TRANSCRIPT).
    #[arg(value_name = "CORPUS")]
    corpus: PathBuf,
    /// Model file; default: the model built into this binary.
    #[arg(short, long, value_name = "FILE")]
    model: Option<PathBuf>,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Only the first N utterances (in id order).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Write the whole report, every utterance included, as JSON here.
    #[arg(long, value_name = "JSON")]
    report: Option<PathBuf>,
    /// Print the summary as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Run only these settings (comma-separated): greedy, beam, beam+ctc, ctc,
    /// ctc-beam, beam+lm, beam+ctc+lm, ctc-beam+lm.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    only: Vec<String>,
}

#[derive(Args)]
#[command(after_help = "Example:\n  \
    lasr rnnlm ../shared/data/librispeech/lm-text/train-clean-100.txt --strip-ids \\\n         \
    --valid ../shared/data/librispeech/lm-text/dev-clean.txt --hidden 512 --epochs 8 -o rnnlm.safetensors\n  \
    lasr transcribe --rnnlm rnnlm.safetensors --rnnlm-share 0.5 speech.flac\n\n\
    One sentence per line, normalised as transcripts are. Each sentence is read from a\n\
    zero state, <sos> in and <eos> out, and the perplexities printed are per predicted\n\
    character with <eos> included, as `lasr lm --eval` prints them. After every epoch the\n\
    model is written to --out (atomically) if its --valid perplexity is the best so far;\n\
    the JSON lines of --log record every epoch.")]
struct RnnlmArgs {
    /// Text files, one sentence per line.
    #[arg(required = true, value_name = "TEXT")]
    text: Vec<PathBuf>,
    /// Held-out text (same form): its perplexity picks the epoch that is kept.
    #[arg(long, value_name = "TEXT")]
    valid: PathBuf,
    /// Drop each line's first word (LibriSpeech transcripts start with an utterance id).
    #[arg(long)]
    strip_ids: bool,
    /// Where to write the model (safetensors, with its config and vocabulary).
    #[arg(short, long, value_name = "FILE")]
    out: PathBuf,
    /// Width of each LSTM layer.
    #[arg(long, default_value_t = 512, value_name = "H")]
    hidden: usize,
    /// LSTM layers.
    #[arg(long, default_value_t = 1, value_name = "N")]
    layers: usize,
    /// Width of the character embedding.
    #[arg(long, default_value_t = 64, value_name = "E")]
    embedding: usize,
    /// Drop probability on each LSTM layer's output while training.
    #[arg(long, default_value_t = 0.1, value_name = "P")]
    dropout: f32,
    /// Train a backward model, reading each sentence right to left; decoding gives it
    /// with --rnnlm-backward, beside a forward one.
    #[arg(long)]
    reverse: bool,
    /// Passes over the text.
    #[arg(long, default_value_t = 8, value_name = "N")]
    epochs: usize,
    /// Adam's peak learning rate (linear warm-up, then cosine decay to 5%).
    #[arg(long, default_value_t = 2e-3, value_name = "LR")]
    learning_rate: f32,
    /// Most characters per batch (padding counted).
    #[arg(long, default_value_t = 8192, value_name = "N")]
    batch_tokens: usize,
    /// Seed of the initialisation, batch order and dropout.
    #[arg(long, default_value_t = 1, value_name = "N")]
    seed: u64,
    /// Append one JSON line per epoch here.
    #[arg(long, value_name = "JSONL")]
    log: Option<PathBuf>,
}

#[derive(Args)]
#[command(after_help = "Example:\n  \
    lasr lm ../shared/data/librispeech/lm-text/train-clean-100.txt --strip-ids --order 6 \\\n         \
    --eval ../shared/data/librispeech/lm-text/dev-clean.txt -o lm6.bin\n  \
    lasr transcribe -m model.safetensors --lm lm6.bin --lm-weight 0.3 speech.flac\n  \
    lasr lm ../shared/data/librispeech/lm-text/train-clean-100.txt --strip-ids --words \\\n         \
    --order 3 -o words3.bin\n  \
    lasr transcribe --ctc-only --word-lm words3.bin --word-lm-weight 0.5 speech.flac\n\n\
    One sentence per line, normalised as transcripts are (case folded, characters\n\
    outside the model's alphabet dropped). Interpolated modified Kneser-Ney smoothing.\n\
    A character model (the default) fuses into every search; a word model (--words)\n\
    scores the words of the CTC prefix beam search, and its words become the known\n\
    words (others are scored as <unk> and pay --oov-penalty).")]
struct LmArgs {
    /// Text files, one sentence per line.
    #[arg(required = true, value_name = "TEXT")]
    text: Vec<PathBuf>,
    /// Symbols of context plus one (default: 6 characters, or 3 words with --words).
    #[arg(long, value_name = "N")]
    order: Option<usize>,
    /// Build a word model instead of a character model.
    #[arg(long)]
    words: bool,
    /// With --words: keep the words seen at least this often (others are <unk>).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "words")]
    min_count: usize,
    /// Drop each line's first word (LibriSpeech transcripts start with an utterance id).
    #[arg(long)]
    strip_ids: bool,
    /// Held-out text to report perplexity on (same form).
    #[arg(long, value_name = "TEXT")]
    eval: Option<PathBuf>,
    /// Where to write the model.
    #[arg(short, long, value_name = "FILE")]
    out: PathBuf,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    lasr features speech.wav                       # summary table\n  \
    lasr features speech.wav -o feats.npy --plot feats.png\n  \
    lasr features speech.wav --plot masked.png --spec-augment 1\n  \
    lasr features corpus/ --out-dir feats/ --json   # one .npy per file, JSON lines\n\n\
    The .npy holds float32 [frames, mel bins], one row per 10 ms; numpy.load reads it.")]
struct FeaturesArgs {
    /// Audio files, or directories searched recursively for .wav and .flac files.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// Save the features of the (single) input as .npy.
    #[arg(short, long, value_name = "NPY", conflicts_with = "out_dir")]
    out: Option<PathBuf>,
    /// Save one <name>.npy per input into this directory (created if missing).
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Draw the features of the (single) input as a PNG heat map.
    #[arg(long, value_name = "PNG")]
    plot: Option<PathBuf>,
    /// Front-end config JSON (from `lasr config` or `lasr cmvn`). Default: an 80-bin
    /// Kaldi-compatible log-mel filterbank at 16 kHz, no normalisation.
    #[arg(short, long, value_name = "JSON")]
    config: Option<PathBuf>,
    /// Print one JSON object per input (file, frames, dim, statistics, or error).
    #[arg(long)]
    json: bool,
    /// Apply the config's SpecAugment masks with this seed, to see what training sees.
    #[arg(long, value_name = "SEED")]
    spec_augment: Option<u64>,
}

#[derive(Args)]
#[command(after_help = "Example:\n  \
    lasr cmvn LibriSpeech/train-clean-100 --out frontend.json\n  \
    lasr features utt.flac --config frontend.json -o utt.npy\n\n\
    Files that cannot be read are reported and left out of the statistics.")]
struct CmvnArgs {
    /// Audio files, or directories searched recursively for .wav and .flac files.
    #[arg(value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// Also take audio paths from this file, one per line (first tab-separated column;
    /// `#` comments; relative paths are relative to the list's directory).
    #[arg(long, value_name = "FILE")]
    list: Option<PathBuf>,
    /// Where to write the front-end config (feature settings plus statistics).
    #[arg(short, long, value_name = "JSON")]
    out: PathBuf,
    /// Feature settings to use (any CMVN already in the file is replaced).
    #[arg(short, long, value_name = "JSON")]
    config: Option<PathBuf>,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so `println!` into a closed pipe (`lasr info | head`)
    // panicked; the default action ends the process quietly, as `cat` does.
    #[cfg(unix)]
    // SAFETY: at the very start of main, before any thread exists, restoring a
    // signal's default action races with nothing.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Training and decoding free and reallocate the same large buffers on every
    // step; glibc's default hands them back to the kernel and faults them in again.
    lasr_nn::heap::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Features(a) => features(a),
        Command::Cmvn(a) => cmvn(a),
        Command::Config => print_config(),
        Command::Transcribe(a) => transcribe(a),
        Command::Train(a) => train(a),
        Command::Bench(a) => bench(a),
        Command::Lm(a) => lm(a),
        Command::Rnnlm(a) => rnnlm(a),
        Command::Speller(a) => speller::speller(a),
        Command::Prior(a) => prior(a),
        Command::Info { model } => info(model.as_deref()),
        Command::Average { models, out } => average(&models, &out),
        Command::Ensemble {
            models,
            out,
            storage,
            main: Some(main),
            ..
        } => replace_main(&models, &main, &out, storage),
        Command::Ensemble {
            models,
            out,
            storage,
            take: Some(number),
            ..
        } => take_member(&models, number, &out, storage),
        Command::Ensemble {
            models,
            weights,
            leave_out,
            out,
            storage,
            ..
        } => ensemble(&models, weights, &leave_out, &out, storage),
        Command::Pack {
            model,
            decode,
            utterance_shape,
            utterance_spread,
            out,
            storage,
        } => pack(
            &model,
            decode.as_deref(),
            (utterance_shape, utterance_spread),
            &out,
            storage,
        ),
        Command::Curves { log, out } => curves(&log, &out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn read_config(path: Option<&Path>) -> Result<FrontEndConfig> {
    let Some(path) = path else {
        return Ok(FrontEndConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let config: FrontEndConfig = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a lasr front-end config", path.display()))?;
    config
        .validate()
        .with_context(|| format!("{}", path.display()))?;
    Ok(config)
}

fn progress(len: usize, what: &str) -> ProgressBar {
    if len < 2 || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} files, {per_sec}, eta {eta}")
            .expect("template is valid")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// A bar over a training run's batches (its length set as training learns it), shown
/// only on a terminal.
fn batch_progress() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} batches, eta {eta}")
            .expect("template is valid")
            .progress_chars("=> "),
    );
    bar
}

/// Writes `bytes` to `path` through a temporary file and a rename, so an interrupted
/// run never leaves a half-written file where a good one was.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

struct FileReport {
    file: PathBuf,
    result: Result<Summary>,
}

struct Summary {
    sample_rate: u32,
    duration_s: f64,
    frames: usize,
    dim: usize,
    min: f32,
    mean: f32,
    max: f32,
    npy: Option<PathBuf>,
}

fn features(args: FeaturesArgs) -> Result<ExitCode> {
    let config = read_config(args.config.as_deref())?;
    let files = collect_audio_files(&args.inputs)?;
    if files.is_empty() {
        bail!("no .wav or .flac files found in {:?}", args.inputs);
    }
    if files.len() > 1 && (args.out.is_some() || args.plot.is_some()) {
        bail!(
            "--out and --plot take a single input, but {} files were given; use --out-dir for many",
            files.len()
        );
    }
    if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create directory", dir.display()))?;
    }
    let front = FrontEnd::new(config)?;
    let bar = progress(files.len(), "features");
    let reports: Vec<FileReport> = files
        .par_iter()
        .map_init(
            || front.clone(),
            |front, file| {
                let result = one_file(front, file, &args);
                bar.inc(1);
                FileReport {
                    file: file.clone(),
                    result,
                }
            },
        )
        .collect();
    bar.finish_and_clear();

    let mut failed = 0;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !args.json {
        writeln!(
            out,
            "{:>7} {:>9} {:>7} {:>4} {:>8} {:>8} {:>8}  file",
            "rate", "seconds", "frames", "dim", "min", "mean", "max"
        )?;
    }
    for r in &reports {
        match &r.result {
            Ok(s) if args.json => {
                let v = serde_json::json!({
                    "file": r.file, "sample_rate": s.sample_rate, "duration_s": s.duration_s,
                    "frames": s.frames, "dim": s.dim, "min": s.min, "mean": s.mean, "max": s.max,
                    "npy": s.npy,
                });
                writeln!(out, "{v}")?;
            }
            Ok(s) => writeln!(
                out,
                "{:>7} {:>9.3} {:>7} {:>4} {:>8.3} {:>8.3} {:>8.3}  {}",
                s.sample_rate,
                s.duration_s,
                s.frames,
                s.dim,
                s.min,
                s.mean,
                s.max,
                r.file.display(),
            )?,
            Err(e) => {
                failed += 1;
                if args.json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({"file": r.file, "error": format!("{e:#}")})
                    )?;
                }
                eprintln!("error: {e:#}");
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} files failed", reports.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn one_file(front: &mut FrontEnd, file: &Path, args: &FeaturesArgs) -> Result<Summary> {
    let audio = load(file)?;
    let (sample_rate, duration_s) = (audio.sample_rate, audio.duration_secs());
    let mut feats = front.audio_features(audio).map_err(|e| e.in_file(file))?;
    if let Some(seed) = args.spec_augment {
        let config = &front.config().features.spec_augment;
        lasr_features::spec_augment_seeded(&mut feats.view_mut(), config, seed);
    }
    let npy = match (&args.out, &args.out_dir) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(dir)) => {
            let stem = file.file_stem().unwrap_or(file.as_os_str());
            Some(dir.join(stem).with_extension("npy"))
        }
        _ => None,
    };
    if let Some(p) = &npy {
        let mut bytes = Vec::new();
        ndarray_npy::WriteNpyExt::write_npy(&feats, &mut bytes)
            .with_context(|| format!("{}: cannot encode .npy", p.display()))?;
        write_atomic(p, &bytes)?;
    }
    if let Some(p) = &args.plot {
        plot::write_heatmap(feats.view(), p, 2)?;
    }
    let n = feats.len() as f64;
    Ok(Summary {
        sample_rate,
        duration_s,
        frames: feats.nrows(),
        dim: feats.ncols(),
        min: feats.iter().copied().fold(f32::INFINITY, f32::min),
        mean: (feats.iter().map(|&v| f64::from(v)).sum::<f64>() / n) as f32,
        max: feats.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        npy,
    })
}

/// Paths from a list file: first tab-separated column, `#` comments and blank lines
/// skipped, relative paths taken from the list's directory.
fn read_list(list: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(list)
        .with_context(|| format!("{}: cannot read", list.display()))?;
    let base = list.parent().unwrap_or(Path::new("."));
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let p = PathBuf::from(l.split('\t').next().unwrap_or(l));
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        })
        .collect())
}

fn cmvn(args: CmvnArgs) -> Result<ExitCode> {
    let mut config = read_config(args.config.as_deref())?;
    let mut files = collect_audio_files(&args.inputs)?;
    if let Some(list) = &args.list {
        files.extend(read_list(list)?);
    }
    if files.is_empty() {
        bail!("no audio given: pass files, directories or --list");
    }
    let bar = progress(files.len(), "cmvn");
    let (stats, errors) = lasr_features::corpus_cmvn_stats(&files, &config, &|| bar.inc(1))?;
    bar.finish_and_clear();
    for e in &errors {
        eprintln!("skipped: {e}");
    }
    let cmvn = stats
        .finish()
        .context("no file could be read, so there are no statistics")?;
    config.cmvn = Some(cmvn);
    let json = serde_json::to_string_pretty(&config)?;
    write_atomic(&args.out, json.as_bytes())?;
    let used = files.len() - errors.len();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"out": args.out, "files": used, "skipped": errors.len(), "frames": stats.frames})
        );
    } else {
        println!(
            "wrote {}: statistics of {} frames ({:.2} h) from {used} files, {} skipped",
            args.out.display(),
            stats.frames,
            // The edge padding counts in the statistics but is not audio.
            stats
                .frames
                .saturating_sub((2 * config.pad_frames * used) as u64) as f64
                * f64::from(config.features.frame_shift_ms)
                / 3.6e6,
            errors.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_config() -> Result<ExitCode> {
    println!(
        "{}",
        serde_json::to_string_pretty(&FrontEndConfig::default())?
    );
    Ok(ExitCode::SUCCESS)
}

/// An input of `lasr transcribe`: a file, or standard input's bytes.
enum Input {
    File(PathBuf),
    Stdin(Vec<u8>),
}

impl Input {
    fn name(&self) -> PathBuf {
        match self {
            Input::File(p) => p.clone(),
            Input::Stdin(_) => PathBuf::from("-"),
        }
    }
}

fn transcribe(args: TranscribeArgs) -> Result<ExitCode> {
    let (model, builtin) = load_model(args.model.as_deref())?;
    let model = args.decode.front_end(model)?;
    if args.plot_attention.is_some() && !model.las.config.trains_speller() {
        // Refused before decoding: the plot comes after each transcript, and failing
        // there would lose every transcript of the run.
        bail!(
            "--plot-attention draws the attention decoder's alignment, but this model was \
             trained with CTC alone (ctc_weight 1): its speller never learned to attend"
        );
    }
    let mut inputs = Vec::new();
    let (stdin, paths): (Vec<_>, Vec<_>) = args.inputs.iter().partition(|p| p.as_os_str() == "-");
    if stdin.len() > 1 {
        bail!("`-` (standard input) can be given once");
    }
    if !stdin.is_empty() {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
            .context("cannot read standard input")?;
        inputs.push(Input::Stdin(bytes));
    }
    let paths: Vec<PathBuf> = paths.into_iter().cloned().collect();
    if !paths.is_empty() {
        let files = collect_audio_files(&paths)?;
        if files.is_empty() {
            bail!("no .wav or .flac files found in {paths:?}");
        }
        inputs.extend(files.into_iter().map(Input::File));
    }
    let mut options = args.decode.options(&model, builtin)?;
    if !options.ctc_only && args.decode.rescore_nbest.is_some() {
        // (`bench` re-ranks in its CTC settings whatever the others are.)
        bail!("--rescore-nbest re-ranks the CTC beam search (--ctc-only); --attention and --joint search with the attention decoder");
    }
    if !options.ctc_only && args.decode.rescore.is_none() {
        // Rescoring re-ranks a CTC search: a model file's recommendation of it does
        // not carry over to the attention search --attention or --joint ask for.
        // (`bench` keeps it for its CTC settings and leaves it out of the others.)
        options.attention_rescore_weight = 0.0;
    }
    if !options.ctc_only {
        options.search = attention_search(&model, &args.decode, &options.search);
    }
    options.validate(&model)?;
    let weights = model.inference_weights(options.weights);
    let front = model.front_end()?;
    if let Some(dir) = &args.plot_attention {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create directory", dir.display()))?;
    }
    let bar = progress(inputs.len(), "transcribe");
    let results: Vec<(PathBuf, Result<lasr_model::Transcript>)> = inputs
        .par_iter()
        .map_init(
            || front.clone(),
            |front, input| {
                let name = input.name();
                let r = (|| -> Result<lasr_model::Transcript> {
                    let audio = match input {
                        Input::File(p) => load(p)?,
                        Input::Stdin(bytes) => {
                            lasr_features::decode(bytes, Path::new("<standard input>"))?
                        }
                    };
                    let feats = if args.plot_attention.is_some() {
                        Some(front.audio_features(audio.clone())?)
                    } else {
                        None
                    };
                    let t = model.transcribe_audio(&weights, front, audio, &name, &options)?;
                    if let (Some(dir), Some(feats)) = (&args.plot_attention, feats) {
                        let att = model.attention(feats.view(), &t.tokens)?;
                        let stem = name
                            .file_stem()
                            .map_or("stdin".into(), |s| s.to_string_lossy());
                        plot::write_heatmap(
                            att.t(),
                            &dir.join(format!("{stem}.attention.png")),
                            4,
                        )?;
                    }
                    Ok(t)
                })();
                bar.inc(1);
                (name, r)
            },
        )
        .collect();
    bar.finish_and_clear();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = 0;
    for (file, r) in &results {
        match r {
            Ok(t) => {
                let mut t = t.clone();
                t.nbest.truncate(args.nbest.max(1));
                if args.json {
                    let mut v = serde_json::to_value(&t)?;
                    v["file"] = serde_json::json!(file);
                    v["real_time_factor"] = serde_json::json!(t.real_time_factor());
                    writeln!(out, "{v}")?;
                } else {
                    writeln!(out, "{}\t{}", file.display(), t.text)?;
                    for alt in t.nbest.iter().skip(1) {
                        writeln!(out, "{}\t  {:.3}\t{}", file.display(), alt.score, alt.text)?;
                    }
                }
            }
            Err(e) => {
                failed += 1;
                if args.json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({"file": file, "error": format!("{e:#}")})
                    )?;
                }
                eprintln!("error: {e:#}");
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} inputs failed", results.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The search settings for an attention search: `search` (the model file's
/// recommendation with the flags), but when the file recommends a CTC search and no
/// --beam is given, the attention search's default width: the built-in model's 1024
/// suits its CTC search and would make the attention search crawl.
fn attention_search(
    model: &lasr_model::ModelFile,
    args: &DecodeArgs,
    search: &lasr_decode::SearchOptions,
) -> lasr_decode::SearchOptions {
    let recommends_ctc = model.decode.as_ref().is_some_and(|d| d.ctc_only);
    if recommends_ctc && args.beam.is_none() {
        lasr_decode::SearchOptions {
            beam_size: lasr_decode::SearchOptions::default().beam_size,
            ..search.clone()
        }
    } else {
        search.clone()
    }
}

fn bench(args: BenchArgs) -> Result<ExitCode> {
    let (model, builtin) = load_model(args.model.as_deref())?;
    let model = args.decode.front_end(model)?;
    let entries = first_entries(std::slice::from_ref(&args.corpus), args.limit)?;
    let beam = args.decode.options(&model, builtin)?;
    // How the CTC beam settings name their word list, if one was given.
    let lexicon_note = match (&beam.word_lm, &beam.lexicon) {
        (Some(w), _) => format!(
            " + word LM {} ({} words) bonus {}, OOV {}",
            beam.word_lm_weight,
            w.0.num_words(),
            beam.word_bonus,
            beam.oov_penalty
        ),
        (None, Some(l)) => format!(" + {} words, OOV {}", l.0.len(), beam.oov_penalty),
        (None, None) => String::new(),
    };
    let mut rescore_note = if beam.attention_rescore_weight > 0.0 {
        format!(
            " + attention rescore {} ({}-best)",
            beam.attention_rescore_weight, beam.rescore_nbest
        )
    } else {
        String::new()
    };
    if beam.ensemble_speller_weight > 0.0 {
        rescore_note += &format!(
            " + ensemble speller {} ({}-best)",
            beam.ensemble_speller_weight, beam.rescore_nbest
        );
    }
    let sizes = |lm: &lasr_model::SharedRnnLm| {
        format!("{} x {}", lm.0.config().layers, lm.0.config().hidden)
    };
    match (&beam.rnnlm, &beam.rnnlm_backward) {
        (Some(f), Some(b)) => {
            rescore_note += &format!(
                " + LSTM LMs share {} ({} forward, {} backward, {}-best)",
                beam.rnnlm_share,
                sizes(f),
                sizes(b),
                beam.rescore_nbest
            )
        }
        (Some(lm), None) | (None, Some(lm)) => {
            rescore_note += &format!(
                " + LSTM LM share {} ({}{}, {}-best)",
                beam.rnnlm_share,
                sizes(lm),
                if lm.0.config().reversed {
                    " backward"
                } else {
                    ""
                },
                beam.rescore_nbest
            )
        }
        (None, None) => {}
    }
    let prior_note = if beam.ctc_prior_scale > 0.0 {
        format!(" + prior {}", beam.ctc_prior_scale)
    } else {
        String::new()
    };
    // The settings without a language model come first, then the same with it. Only
    // the last (the full CTC search) rescores with attention.
    let plain = lasr_model::DecodeOptions {
        lm: None,
        lexicon: None,
        word_lm: None,
        attention_rescore_weight: 0.0,
        rnnlm: None,
        rnnlm_backward: None,
        ensemble_speller_weight: 0.0,
        ..beam.clone()
    };
    // The attention settings' search (the CTC ones keep `beam.search`).
    let att = attention_search(&model, &args.decode, &beam.search);
    let mut settings = vec![
        lasr_model::BenchSetting {
            name: "greedy".into(),
            options: lasr_model::DecodeOptions {
                search: lasr_decode::SearchOptions {
                    beam_size: 1,
                    ..beam.search.clone()
                },
                ctc_weight: 0.0,
                ctc_joint: false,
                ctc_only: false,
                ..plain.clone()
            },
        },
        lasr_model::BenchSetting {
            name: format!("beam {}", att.beam_size),
            options: lasr_model::DecodeOptions {
                search: att.clone(),
                ctc_weight: 0.0,
                ctc_joint: false,
                ctc_only: false,
                ..plain.clone()
            },
        },
    ];
    // CTC re-ranking weight of the "+ CTC" settings: the one asked for, else the default.
    let rerank = if beam.ctc_weight > 0.0 {
        beam.ctc_weight
    } else {
        DEFAULT_CTC_WEIGHT
    };
    let joint = if beam.ctc_joint { "joint " } else { "" };
    if model.las.ctc.is_some() {
        settings.push(lasr_model::BenchSetting {
            name: format!("beam {} + {joint}CTC {rerank}", att.beam_size),
            options: lasr_model::DecodeOptions {
                search: att.clone(),
                ctc_weight: rerank,
                ctc_only: false,
                ..plain.clone()
            },
        });
        settings.push(lasr_model::BenchSetting {
            name: "CTC best path".into(),
            options: lasr_model::DecodeOptions {
                ctc_only: true,
                ctc_joint: false,
                search: lasr_decode::SearchOptions {
                    beam_size: 1,
                    ..beam.search.clone()
                },
                ..plain.clone()
            },
        });
        // With a char LM, the last setting has every model and this one none (the
        // CTC search alone: a word model without the char LM under it mostly deletes
        // words, which made a poor ablation); without one, this is the full setting.
        let full = beam.lm.is_none();
        settings.push(lasr_model::BenchSetting {
            name: format!(
                "CTC beam {}{prior_note}{}",
                beam.search.beam_size,
                if full {
                    format!("{lexicon_note}{rescore_note}")
                } else {
                    String::new()
                }
            ),
            options: lasr_model::DecodeOptions {
                ctc_only: true,
                ctc_joint: false,
                lexicon: beam.lexicon.clone().filter(|_| full),
                word_lm: beam.word_lm.clone().filter(|_| full),
                attention_rescore_weight: if full {
                    beam.attention_rescore_weight
                } else {
                    0.0
                },
                rnnlm: beam.rnnlm.clone().filter(|_| full),
                rnnlm_backward: beam.rnnlm_backward.clone().filter(|_| full),
                ensemble_speller_weight: if full {
                    beam.ensemble_speller_weight
                } else {
                    0.0
                },
                ..plain.clone()
            },
        });
    }
    // The attention settings never take a word list (it constrains CTC search only).
    let beam_att = lasr_model::DecodeOptions {
        search: att.clone(),
        lexicon: None,
        word_lm: None,
        attention_rescore_weight: 0.0,
        rnnlm: None,
        rnnlm_backward: None,
        ensemble_speller_weight: 0.0,
        ..beam.clone()
    };
    if beam.lm.is_some() {
        let lm_w = beam.lm_weight;
        settings.push(lasr_model::BenchSetting {
            name: format!("beam {} + LM {lm_w}", att.beam_size),
            options: lasr_model::DecodeOptions {
                ctc_weight: 0.0,
                ctc_joint: false,
                ctc_only: false,
                ..beam_att.clone()
            },
        });
        if model.las.ctc.is_some() {
            settings.push(lasr_model::BenchSetting {
                name: format!("beam {} + {joint}CTC {rerank} + LM {lm_w}", att.beam_size),
                options: lasr_model::DecodeOptions {
                    ctc_weight: rerank,
                    ctc_only: false,
                    ..beam_att.clone()
                },
            });
            settings.push(lasr_model::BenchSetting {
                name: format!(
                    "CTC beam {}{prior_note} + LM {lm_w} bonus {}{}{}",
                    beam.search.beam_size, beam.ctc_insertion_bonus, lexicon_note, rescore_note
                ),
                options: lasr_model::DecodeOptions {
                    ctc_only: true,
                    ctc_joint: false,
                    ..beam.clone()
                },
            });
        }
    }
    // Attention searches never read the prior: a report should not say they did.
    for s in &mut settings {
        if !s.options.ctc_only {
            s.options.ctc_prior_scale = 0.0;
        }
    }
    // A model trained with CTC alone has an untrained speller: its attention
    // settings would only measure noise (and crawl to the length limit).
    if !model.las.config.trains_speller() {
        settings.retain(|s| s.options.ctc_only);
    }
    // Short keys for --only, in the order the settings were pushed.
    let keys: Vec<&str> = settings
        .iter()
        .map(|s| {
            let o = &s.options;
            match (
                o.ctc_only,
                o.search.beam_size > 1,
                o.ctc_weight > 0.0,
                o.lm.is_some(),
            ) {
                (true, false, _, false) => "ctc",
                (true, _, _, false) => "ctc-beam",
                (true, _, _, true) => "ctc-beam+lm",
                (false, false, _, _) => "greedy",
                (false, true, false, false) => "beam",
                (false, true, true, false) => "beam+ctc",
                (false, true, false, true) => "beam+lm",
                (false, true, true, true) => "beam+ctc+lm",
            }
        })
        .collect();
    if let Some(bad) = args.only.iter().find(|k| !keys.contains(&k.as_str())) {
        bail!(
            "--only {bad}: this model and these flags offer {}",
            keys.join(", ")
        );
    }
    let settings: Vec<_> = settings
        .into_iter()
        .zip(&keys)
        .filter(|(_, k)| args.only.is_empty() || args.only.iter().any(|o| o == *k))
        .map(|(s, _)| s)
        .collect();
    let bar = progress(entries.len(), "bench");
    let report = lasr_model::bench(&model, beam.weights, &entries, &settings, &|| bar.inc(1))?;
    bar.finish_and_clear();
    for s in &report.skipped {
        eprintln!("skipped {}: {}", s.id, s.error);
    }
    if let Some(path) = &args.report {
        write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v.as_object_mut()
            .expect("a struct is an object")
            .remove("per_utterance");
        println!("{v}");
    } else {
        println!(
            "{}: {} utterances, {:.2} h of audio, {} skipped, {:.1} s on {} threads, {} weights",
            args.corpus.display(),
            report.utterances,
            report.audio_hours,
            report.skipped.len(),
            report.wall_seconds,
            report.threads,
            report.weights
        );
        println!(
            "{:<22} {:>7} {:>7} {:>6} {:>6} {:>6} {:>7} {:>6} {:>6} {:>6} {:>8}",
            "setting",
            "WER%",
            "CER%",
            "w-sub",
            "w-del",
            "w-ins",
            "words",
            "c-sub",
            "c-del",
            "c-ins",
            "RTF"
        );
        for s in &report.settings {
            println!(
                "{:<22} {:>7.2} {:>7.2} {:>6} {:>6} {:>6} {:>7} {:>6} {:>6} {:>6} {:>8.4}",
                s.name,
                100.0 * s.wer,
                100.0 * s.cer,
                s.words.substitutions,
                s.words.deletions,
                s.words.insertions,
                s.words.reference_len,
                s.chars.substitutions,
                s.chars.deletions,
                s.chars.insertions,
                s.real_time_factor
            );
        }
    }
    Ok(if report.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn prior(args: PriorArgs) -> Result<ExitCode> {
    let (mut model, _) = load_model(args.model.as_deref())?;
    let entries = first_entries(&args.corpora, args.limit)?;
    let format = args
        .weights
        .or_else(|| model.decode.as_ref().map(|d| d.weights))
        .unwrap_or(lasr_model::WeightFormat::F32);
    let bar = progress(entries.len(), "measuring");
    let m = lasr_model::prior::measure(&model, format, &entries, &|| bar.inc(1))?;
    bar.finish_and_clear();
    for s in &m.skipped {
        eprintln!("skipped {}: {}", s.id, s.error);
    }
    let symbols = model.vocab.symbols();
    let blank = model.las.config.blank;
    model.ctc_prior = Some(m.prior.clone());
    model.save(&args.out)?;
    if args.json {
        let shift = m.prior.letter_shift(&model.vocab, blank);
        let v = serde_json::json!({
            "out": args.out.display().to_string(),
            "utterances": m.utterances,
            "audio_hours": m.seconds / 3600.0,
            "skipped": m.skipped,
            "frames": m.prior.frames,
            "weights": format.to_string(),
            "prior": by_symbol(symbols, &m.prior.probs),
            "letter_shift": by_symbol(symbols, &shift),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let share = |k: Option<usize>| k.map_or(0.0, |k| m.prior.probs[k]);
        // Both ends of the ranking: the correction moves the rare letters most.
        let is_letter = m.prior.letters(&model.vocab, blank);
        let mut letters: Vec<usize> = (0..symbols.len()).filter(|&k| is_letter[k]).collect();
        letters.sort_by(|&a, &b| m.prior.probs[b].total_cmp(&m.prior.probs[a]));
        let list = |ks: &[usize]| {
            ks.iter()
                .map(|&k| format!("{:?} {:.4}", symbols[k], m.prior.probs[k]))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "measured {} utterances ({:.2} h, {} frames, {} skipped, {format} weights): \
             blank {:.3}, space {:.3}, letters {}",
            m.utterances,
            m.seconds / 3600.0,
            m.prior.frames,
            m.skipped.len(),
            share(Some(blank)),
            share(model.vocab.id(' ')),
            letters.len()
        );
        println!("  commonest: {}", list(&letters[..letters.len().min(5)]));
        println!(
            "  rarest:    {}",
            list(&letters[letters.len().saturating_sub(5)..])
        );
        println!(
            "wrote {} (decode with --ctc-prior-scale S, or recommend one with `lasr pack --decode`)",
            args.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `{"symbol": value, ...}`.
fn by_symbol(symbols: &[String], values: &[f32]) -> serde_json::Value {
    symbols
        .iter()
        .zip(values)
        .map(|(s, v)| (s.clone(), serde_json::json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The entries of every corpus in `paths`, in the order read (each corpus's skipped
/// files reported).
fn corpus_entries(paths: &[PathBuf]) -> Result<Vec<lasr_data::Entry>> {
    let mut entries = Vec::new();
    for p in paths {
        let corpus = lasr_data::corpus(p)?;
        print_warnings("skipped", &corpus.warnings);
        entries.extend(corpus.entries);
    }
    Ok(entries)
}

/// The first `limit` entries by id of the corpora in `paths` (all without a limit),
/// as `bench --limit N` and `prior --limit N` take them; none is an error.
fn first_entries(paths: &[PathBuf], limit: Option<usize>) -> Result<Vec<lasr_data::Entry>> {
    let mut entries = corpus_entries(paths)?;
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(n) = limit {
        entries.truncate(n);
    }
    if entries.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        bail!("{}: no utterances", names.join(", "));
    }
    Ok(entries)
}

fn info(path: Option<&Path>) -> Result<ExitCode> {
    use lasr_nn::Module;
    let (model, builtin) = load_model(path)?;
    let c = &model.las.config;
    let v = serde_json::json!({
        "model": if builtin { "built-in".to_string() } else { path.map(|p| p.display().to_string()).unwrap_or_default() },
        "format": model.format_version(),
        "storage": match model.storage {
            lasr_model::Storage::F32 => "f32",
            lasr_model::Storage::F16 => "f16",
            lasr_model::Storage::Int8 => "int8",
        },
        "parameters": model.las.num_params()
            + model.members.iter().map(|m| m.num_params()).sum::<usize>()
            + model.ensemble_speller.as_ref().map_or(0, |e| e.num_params()),
        "listener_parameters": model.las.listener.num_params(),
        "speller_parameters": model.las.speller.num_params(),
        "ensemble": (!model.members.is_empty()).then(|| serde_json::json!({
            "main_weight": model.main_weight(),
            "members": model.members.iter().enumerate().map(|(k, m)| serde_json::json!({
                // What `lasr ensemble --drop` calls it (and its tensors' `member.N.`).
                "member": k + 1,
                "weight": m.weight,
                "parameters": m.num_params(),
                "config": m.config,
                "info": m.info,
            })).collect::<Vec<_>>(),
        })),
        "ensemble_speller": model.ensemble_speller.as_ref().map(|e| serde_json::json!({
            "input_dim": e.input_dim(),
            "parameters": e.num_params(),
        })),
        "ctc_prior": model.ctc_prior.as_ref().map(|p| serde_json::json!({
            "frames": p.frames,
            "probs": by_symbol(model.vocab.symbols(), &p.probs),
        })),
        "config": c,
        "seconds_per_listener_frame": model.seconds_per_frame(),
        "features": model.front_end.features,
        "cmvn": model.front_end.cmvn.is_some(),
        "utterance_mean": model.front_end.utterance_mean,
        "utterance_shape": model.front_end.utterance_shape,
        "utterance_spread": model.front_end.utterance_spread,
        "pad_frames": model.front_end.pad_frames,
        "vocabulary": model.vocab.symbols(),
        "decode": model.decode,
        "built_in_lm": builtin && BUILTIN_LM.is_some(),
        "built_in_word_lm": builtin && BUILTIN_WORD_LM.is_some(),
        "built_in_rnnlm": builtin && BUILTIN_RNNLM.is_some(),
        "built_in_rnnlm_backward": builtin && BUILTIN_RNNLM_BACKWARD.is_some(),
        "info": model.info,
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

fn average(models: &[PathBuf], out: &Path) -> Result<ExitCode> {
    let loaded = models
        .iter()
        .map(|p| lasr_model::ModelFile::load(p).map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?;
    let mean = lasr_model::ModelFile::average(&loaded)?;
    mean.save(out)?;
    if loaded[0].ctc_prior.is_some() {
        prior_dropped(&models[0]);
    }
    println!("wrote {} (mean of {} models)", out.display(), models.len());
    Ok(ExitCode::SUCCESS)
}

/// Writes `model` to `out`, in the `--storage` asked for, else as it is stored.
fn save_stored(
    mut model: lasr_model::ModelFile,
    storage: Option<StorageArg>,
    out: &Path,
) -> Result<()> {
    if let Some(s) = storage {
        model.storage = s.into();
    }
    model.save(out)?;
    Ok(())
}

/// `lasr ensemble ENSEMBLE --take N`: member N as a model of its own.
fn take_member(
    models: &[PathBuf],
    number: usize,
    out: &Path,
    storage: Option<StorageArg>,
) -> Result<ExitCode> {
    let [ensemble] = models else {
        bail!("--take writes a member of one ensemble: give that ensemble alone");
    };
    let file = lasr_model::ModelFile::load(ensemble)?;
    let member = file
        .take_member(number)
        .with_context(|| format!("{}: --take {number}", ensemble.display()))?;
    save_stored(member, storage, out)?;
    println!(
        "wrote {} (member {number} of {})",
        out.display(),
        ensemble.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `lasr ensemble ENSEMBLE --main MODEL`: the ensemble with another main model.
fn replace_main(
    models: &[PathBuf],
    main: &Path,
    out: &Path,
    storage: Option<StorageArg>,
) -> Result<ExitCode> {
    let [ensemble] = models else {
        bail!("--main replaces the main model of one ensemble: give that ensemble alone");
    };
    let first = lasr_model::ModelFile::load(ensemble)?;
    if first.members.is_empty() {
        bail!(
            "{}: not an ensemble (no members): use {} itself, or `lasr ensemble {} {} -o OUT` \
             to make an ensemble of the two",
            ensemble.display(),
            main.display(),
            main.display(),
            ensemble.display()
        );
    }
    let new_main = lasr_model::ModelFile::load(main)?;
    let had_prior = first.ctc_prior.is_some();
    let joined = first.with_main(new_main).with_context(|| {
        format!(
            "cannot put {} in place of the main model of {}",
            main.display(),
            ensemble.display()
        )
    })?;
    save_stored(joined, storage, out)?;
    if had_prior {
        prior_dropped(ensemble);
    }
    println!(
        "wrote {} ({} with the main model of {})",
        out.display(),
        ensemble.display(),
        main.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Says that `first`'s CTC prior did not travel to a model with another output.
fn prior_dropped(first: &Path) {
    eprintln!(
        "note: the CTC prior of {} described its old output and was left out, with any \
         recommended --ctc-prior-scale: measure it again with `lasr prior`",
        first.display()
    );
}

fn ensemble(
    models: &[PathBuf],
    weights: Option<Vec<f32>>,
    leave_out: &[usize],
    out: &Path,
    storage: Option<StorageArg>,
) -> Result<ExitCode> {
    if models.len() < 2 && leave_out.is_empty() && weights.is_none() {
        bail!(
            "an ensemble needs a second model, --drop to leave out members of the first, \
             or --weights to re-weight it"
        );
    }
    let mut loaded = models
        .iter()
        .map(|p| lasr_model::ModelFile::load(p).map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?;
    // Judged before any member leaves: an ensemble can only go first, whatever it keeps.
    let nested = !loaded[0].members.is_empty();
    let had_prior = loaded[0].ctc_prior.is_some();
    // The main model's share takes up the dropped members' when they leave.
    let main_weight = loaded[0].main_weight();
    loaded[0]
        .drop_members(leave_out)
        .with_context(|| format!("{}: --drop", models[0].display()))?;
    // A first model that is an ensemble brings its (kept) members along.
    let n = models.len() + loaded[0].members.len();
    let weights = weights.unwrap_or_else(|| {
        if models.len() == 1 {
            // Shrinking a tuned ensemble keeps the proportions it was tuned to.
            let first = &loaded[0];
            let kept: Vec<f32> = std::iter::once(main_weight)
                .chain(first.members.iter().map(|m| m.weight))
                .collect();
            let sum: f32 = kept.iter().sum();
            kept.iter().map(|w| w / sum).collect()
        } else {
            vec![1.0 / n as f32; n]
        }
    });
    let main = loaded.remove(0);
    // Members read with the first model's front end: a member's own utterance-shape
    // setting does not travel. Said, since it changes what that member hears.
    let main_shape = main.front_end.utterance_shape;
    let main_spread = main.front_end.utterance_spread;
    let shape_unlike: Vec<String> = loaded
        .iter()
        .enumerate()
        .filter(|(_, m)| {
            m.front_end.utterance_shape != main_shape || m.front_end.utterance_spread != main_spread
        })
        .map(|(k, _)| models[k + 1].display().to_string())
        .collect();
    // Only the first model keeps its speller: an attention decoder placed later is
    // dropped, and with it every attention search and re-ranking. Said once the join
    // has succeeded, so a refused join is not preceded by advice.
    let dropped = if main.las.config.trains_speller() {
        None
    } else {
        loaded
            .iter()
            .position(|m| m.las.config.trains_speller())
            .map(|k| (nested, k + 1))
    };
    let joined = lasr_model::ModelFile::ensemble(main, loaded, &weights).with_context(|| {
        let names: Vec<String> = models
            .iter()
            .enumerate()
            .map(|(k, p)| format!("model {} = {}", k + 1, p.display()))
            .collect();
        format!("cannot join {}", names.join(", "))
    })?;
    if let Some((nested, k)) = dropped {
        let (first, with) = (models[0].display(), models[k].display());
        // An ensemble can only go first, so one whose main model is CTC-only is rebuilt.
        let (whose, advice) = if nested {
            (
                format!("the main model of {first}"),
                format!("rebuild the ensemble from its original models with {with} first"),
            )
        } else {
            (first.to_string(), "put it first".to_string())
        };
        eprintln!(
            "warning: {whose} was trained with CTC alone, so the ensemble has no trained \
             attention decoder and decodes with CTC only; {with} has one: {advice} to keep \
             attention search and re-ranking"
        );
    }
    if !shape_unlike.is_empty() {
        eprintln!(
            "warning: {} {} with other utterance settings than the first model's; \
             members read with the first's (--utterance-shape {main_shape} \
             --utterance-spread {main_spread})",
            shape_unlike.join(", "),
            if shape_unlike.len() == 1 {
                "was packed or trained"
            } else {
                "were packed or trained"
            },
        );
    }
    let prior_left = had_prior && joined.ctc_prior.is_none();
    save_stored(joined, storage, out)?;
    if prior_left {
        prior_dropped(&models[0]);
    }
    if n == 1 {
        println!(
            "wrote {} (the main model of {} alone)",
            out.display(),
            models[0].display()
        );
    } else {
        println!(
            "wrote {} (CTC ensemble of {} models, weights {:?})",
            out.display(),
            n,
            weights
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn pack(
    model: &Path,
    decode: Option<&Path>,
    (utterance_shape, utterance_spread): (Option<bool>, Option<f32>),
    out: &Path,
    storage: Option<StorageArg>,
) -> Result<ExitCode> {
    let mut m = lasr_model::ModelFile::load(model)?;
    let front = m.front_end.clone();
    if let Some(v) = utterance_shape {
        m.front_end.utterance_shape = v;
    }
    if let Some(p) = utterance_spread {
        m.front_end.utterance_spread = p;
        m.front_end.validate().context("--utterance-spread")?;
    }
    // Kept: another front end moves the output little, and a prior is a property of
    // the training text more than of the features. Said, so it can be measured again.
    if m.front_end != front && m.ctc_prior.is_some() {
        eprintln!(
            "note: {}'s CTC prior was measured with the old front end; it is kept \
             (measure it again with `lasr prior` to match the new one)",
            model.display()
        );
    }
    if let Some(decode) = decode {
        let text = std::fs::read_to_string(decode)
            .with_context(|| format!("{}: cannot read", decode.display()))?;
        let options: lasr_model::DecodeOptions = serde_json::from_str(&text)
            .with_context(|| format!("{}: not decoding options", decode.display()))?;
        options
            .validate(&m)
            .with_context(|| format!("{}", decode.display()))?;
        m.decode = Some(options);
    }
    save_stored(m, storage, out)?;
    println!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}

fn read_lines(path: &Path, strip_ids: bool) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(text
        .lines()
        .map(|l| {
            if strip_ids {
                l.split_once(char::is_whitespace)
                    .map_or("", |(_, rest)| rest)
            } else {
                l
            }
            .to_string()
        })
        .collect())
}

/// `--log JSONL` of `lasr rnnlm` and `lasr speller`: one JSON object appended per
/// epoch.
struct EpochLog {
    path: PathBuf,
    file: std::fs::File,
}

impl EpochLog {
    /// Opens `path` for appending (creating it), if one is given.
    fn open(path: Option<&Path>) -> Result<Option<EpochLog>> {
        path.map(|p| {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("{}: cannot open the log", p.display()))?;
            Ok(EpochLog {
                path: p.to_path_buf(),
                file,
            })
        })
        .transpose()
    }

    /// Appends `line`; the error is the trainers' own, so that it stops training.
    fn append(&mut self, line: &serde_json::Value) -> lasr_model::Result<()> {
        writeln!(self.file, "{line}").map_err(|e| {
            lasr_model::Error::Model(format!(
                "{}: cannot append to the log: {e}",
                self.path.display()
            ))
        })
    }
}

fn rnnlm(args: RnnlmArgs) -> Result<ExitCode> {
    let vocab = lasr_decode::Vocab::librispeech();
    let encode = |lines: Vec<String>| -> Vec<Vec<usize>> {
        lines
            .iter()
            .map(|l| vocab.encode(l))
            .filter(|ids| !ids.is_empty())
            .collect()
    };
    let mut lines = Vec::new();
    for p in &args.text {
        lines.extend(read_lines(p, args.strip_ids)?);
    }
    let mut train = encode(lines);
    let mut valid = encode(read_lines(&args.valid, args.strip_ids)?);
    if args.reverse {
        // The model learns, and is validated on, sentences as it will read them.
        for s in train.iter_mut().chain(valid.iter_mut()) {
            s.reverse();
        }
    }
    if train.is_empty() || valid.is_empty() {
        bail!("no sentences to train on or to validate with: the text files are empty");
    }
    if args.epochs == 0 {
        bail!("--epochs must be at least 1");
    }
    let options = lasr_model::RnnLmTrainOptions {
        epochs: args.epochs,
        learning_rate: args.learning_rate,
        batch_tokens: args.batch_tokens,
        seed: args.seed,
        ..Default::default()
    };
    let config = lasr_model::RnnLmConfig {
        vocab_size: vocab.len(),
        embedding_dim: args.embedding,
        hidden: args.hidden,
        layers: args.layers,
        dropout: args.dropout,
        reversed: args.reverse,
    };
    let mut lm = {
        use rand::SeedableRng;
        lasr_model::RnnLm::new(
            config,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(args.seed),
        )?
    };
    eprintln!(
        "{} training sentences ({} characters), {} held out; {} parameters",
        train.len(),
        train.iter().map(Vec::len).sum::<usize>(),
        valid.len(),
        lasr_nn::Module::num_params(&lm)
    );
    let bar = batch_progress();
    let start = std::time::Instant::now();
    let mut best = f64::INFINITY;
    let mut log = EpochLog::open(args.log.as_deref())?;
    lasr_model::train_rnnlm(
        &mut lm,
        &train,
        &valid,
        &options,
        |p| {
            bar.set_length(p.total_steps);
            bar.set_position(p.step);
            bar.set_message(format!("epoch {} loss {:.3}", p.epoch, p.loss));
        },
        |lm, e| {
            let kept = e.valid_perplexity < best;
            if kept {
                best = e.valid_perplexity;
                lm.save(&args.out, &vocab)?;
            }
            let line = serde_json::json!({"epoch": e.epoch, "train_perplexity": e.train_perplexity,
                "valid_perplexity": e.valid_perplexity, "kept": kept,
                "seconds": start.elapsed().as_secs_f64()});
            bar.suspend(|| {
                eprintln!(
                    "epoch {}: train perplexity {:.3}, valid {:.3}{} ({:.0} s)",
                    e.epoch,
                    e.train_perplexity,
                    e.valid_perplexity,
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
    println!(
        "wrote {}: best valid perplexity {best:.3} per character",
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn lm(args: LmArgs) -> Result<ExitCode> {
    let vocab = lasr_decode::Vocab::librispeech();
    let mut lines = Vec::new();
    for p in &args.text {
        lines.extend(read_lines(p, args.strip_ids)?);
    }
    let held = match &args.eval {
        Some(p) => Some(read_lines(p, args.strip_ids)?),
        None => None,
    };
    let start = std::time::Instant::now();
    // Training time only: saving and --eval are not the model's build cost.
    let seconds;
    let text = lines.iter().map(String::as_str);
    // What was built, for the summary: contexts, words, perplexity on --eval, its unit.
    let (order, contexts, words, perplexity, unit) = if args.words {
        let order = args.order.unwrap_or(3);
        let model = lasr_decode::WordLm::train(text, &vocab, order, args.min_count)?;
        seconds = start.elapsed().as_secs_f64();
        model.save(&args.out)?;
        let ppl = held
            .as_ref()
            .map(|h| model.perplexity(&vocab, h.iter().map(String::as_str)));
        let n = model.num_words();
        (order, model.num_contexts(), Some(n), ppl, "word")
    } else {
        let order = args.order.unwrap_or(6);
        let model = lasr_decode::CharLm::train(text, &vocab, order)?;
        seconds = start.elapsed().as_secs_f64();
        model.save(&args.out)?;
        let ppl = held
            .as_ref()
            .map(|h| model.perplexity(h.iter().map(String::as_str)));
        (order, model.num_contexts(), None, ppl, "character")
    };
    let bytes = std::fs::metadata(&args.out).map_or(0, |m| m.len());
    if args.json {
        println!(
            "{}",
            serde_json::json!({"out": args.out, "kind": unit, "order": order,
                "lines": lines.len(), "words": words, "contexts": contexts, "bytes": bytes,
                "seconds": seconds, "eval_perplexity": perplexity})
        );
    } else {
        println!(
            "wrote {}: {unit} model, order {order}, {} lines, {}{contexts} contexts, {:.2} MB in {seconds:.2} s{}",
            args.out.display(),
            lines.len(),
            words.map_or(String::new(), |n| format!("{n} words, ")),
            bytes as f64 / 1e6,
            perplexity.map_or(String::new(), |p| format!(
                "; perplexity {p:.3} per {unit} on {}",
                args.eval.as_ref().expect("set with perplexity").display()
            ))
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn read_json<T: serde::de::DeserializeOwned + Default>(path: Option<&Path>) -> Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid", path.display()))
}

/// Prints at most 20 warnings and how many more there were.
fn print_warnings<T: std::fmt::Display>(what: &str, warnings: &[T]) {
    for w in warnings.iter().take(20) {
        eprintln!("{what}: {w}");
    }
    if warnings.len() > 20 {
        eprintln!("{what}: ... and {} more", warnings.len() - 20);
    }
}

/// Loads a corpus with raw features (CMVN is the caller's), reporting corpus lines,
/// files and cache entries that were skipped.
fn load_corpus(
    paths: &[PathBuf],
    options: &lasr_data::LoadOptions,
    what: &str,
) -> Result<lasr_data::Dataset> {
    let entries = corpus_entries(paths)?;
    let bar = progress(entries.len(), what);
    let (data, report) = lasr_data::Dataset::load_with(entries, options, &|| bar.inc(1))?;
    bar.finish_and_clear();
    for s in &report.skipped {
        eprintln!("skipped {}: {}", s.entry.id, s.error);
    }
    print_warnings("feature cache", &report.warnings);
    let cache = if options.cache.is_some() {
        format!(
            "; features: {} from the cache, {} computed",
            report.cache_hits, report.computed
        )
    } else {
        String::new()
    };
    // Hours of audio: the front end's edge padding is not audio.
    let padding = 2 * options.front.pad_frames * data.len();
    eprintln!(
        "{what}: {} utterances, {:.2} h, {} skipped{cache}",
        data.len(),
        data.frames().saturating_sub(padding) as f64
            * f64::from(options.front.features.frame_shift_ms)
            / 3.6e6,
        report.skipped.len()
    );
    Ok(data)
}

struct Bars {
    bar: ProgressBar,
    /// Set by Ctrl-C.
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Frames trained on since `since`, for the frames/s rate.
    frames: usize,
    since: std::time::Instant,
    /// Trained with CTC alone: validation's loss and CER are the CTC ones.
    ctc_only: bool,
}

impl lasr_model::Observer for Bars {
    fn step(&mut self, p: &lasr_model::Progress, loss: f64, left: usize, frames: usize) {
        // A new epoch starts at position 0: its length is what is left plus this step.
        if self.bar.position() == 0 {
            self.bar.set_length((left + p.batch) as u64);
            self.bar.set_position(p.batch.saturating_sub(1) as u64);
            self.frames = 0;
            self.since = std::time::Instant::now();
        }
        self.frames += frames;
        self.bar.inc(1);
        let rate = self.frames as f64 / self.since.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_message(format!(
            "epoch {} step {} loss {loss:.3} {rate:.0} frames/s",
            p.epoch + 1,
            p.step
        ));
        if left == 0 {
            self.bar.reset();
        }
    }

    fn validated(&mut self, v: &lasr_model::Validation) {
        // A CTC-only model's loss and CER are its CTC ones: said once, named as such.
        let (kind, ctc) = match (self.ctc_only, v.ctc_loss, v.ctc_cer) {
            (true, ..) => ("CTC ", String::new()),
            (false, Some(l), Some(c)) => {
                ("", format!("; CTC loss {l:.4}, CTC CER {:.2}%", 100.0 * c))
            }
            (false, Some(l), None) => ("", format!("; CTC loss {l:.4}")),
            _ => ("", String::new()),
        };
        // With `validate_decode` 0 nothing is decoded and the rates are undefined.
        let rates = if v.decoded == 0 {
            "nothing decoded".to_string()
        } else {
            format!(
                "{kind}CER {:.2}%, {kind}WER {:.2}% ({} utterances decoded)",
                100.0 * v.cer,
                100.0 * v.wer,
                v.decoded
            )
        };
        self.bar.suspend(|| {
            eprintln!(
                "epoch {}: valid {kind}loss {:.4}, {rates}{ctc}",
                v.epoch, v.loss
            )
        });
    }

    fn stop_requested(&mut self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The model config's training settings that `train`'s flags give; false if no flag
/// gives one.
fn set_training_settings(config: &mut lasr_model::ModelConfig, args: &TrainArgs) -> bool {
    let mut flagged = false;
    let mut set = |field: &mut f32, flag: Option<f32>| {
        if let Some(v) = flag {
            *field = v;
            flagged = true;
        }
    };
    set(&mut config.ctc_weight, args.ctc_weight);
    set(&mut config.label_smoothing, args.label_smoothing);
    set(&mut config.dropout, args.dropout);
    set(&mut config.sampling_rate, args.sampling_rate);
    flagged
}

/// `--resume` of the run whose model is `path`: an error if `--FLAG` gives another
/// value than the run's `saved` one (which an `--init` phase could change).
fn refuse_another_on_resume<T: PartialEq + std::fmt::Display>(
    path: &Path,
    flag: &str,
    given: Option<T>,
    saved: T,
) -> Result<()> {
    match given {
        Some(v) if v != saved => bail!(
            "{}: trained with --{flag} {saved}; resume with that, or start a new phase \
             with --init and --{flag} {v}",
            path.display()
        ),
        _ => Ok(()),
    }
}

fn train(args: TrainArgs) -> Result<ExitCode> {
    let preset = args.preset.as_deref().unwrap_or("reference");
    let mut init = match &args.init {
        Some(path) => {
            let mut m = lasr_model::ModelFile::load(path)?;
            if !m.members.is_empty() {
                // The main model is a whole LAS (the members are listeners and CTC
                // heads only), so fine-tuning the shipped ensemble means fine-tuning it.
                eprintln!(
                    "{}: a CTC ensemble of {} models; training starts from its main model and leaves the other {} out",
                    path.display(),
                    m.members.len() + 1,
                    m.members.len()
                );
                m.members.clear();
            }
            Some(m)
        }
        None => None,
    };
    // --init with --model-config: a model of that config grown from the initial one.
    let grow = init.is_some() && args.model_config.is_some();
    let mut config: lasr_model::ModelConfig = match (&init, &args.model_config) {
        (_, Some(path)) => read_json(Some(path.as_path()))?,
        (Some(m), None) => m.las.config.clone(),
        (None, None) => lasr_model::ModelConfig::preset(preset).expect("clap checked the name"),
    };
    let was = config.clone();
    if !args.resume && set_training_settings(&mut config, &args) {
        config.validate().context(
            "the model's training settings (--ctc-weight, --label-smoothing, --dropout, --sampling-rate)",
        )?;
        if !config.trains_speller()
            && (args.label_smoothing.is_some() || args.sampling_rate.is_some())
        {
            eprintln!(
                "note: ctc_weight {} trains no speller, so --label-smoothing and --sampling-rate \
                 change nothing",
                config.ctc_weight
            );
        }
        if let (Some(m), Some(path), false) = (init.as_mut(), &args.init, grow) {
            if was.has_ctc() != config.has_ctc() || was.trains_speller() != config.trains_speller()
            {
                bail!(
                    "{}: trained with ctc_weight {}; a later phase keeps the model's heads, \
                     so --ctc-weight {} is refused (a joint model's weight stays inside (0, 1))",
                    path.display(),
                    was.ctc_weight,
                    config.ctc_weight
                );
            }
            m.las.config = config.clone();
        }
    }
    let mut options: lasr_model::TrainOptions = match &args.options {
        Some(path) => read_json(Some(path.as_path()))?,
        None => lasr_model::TrainOptions::preset(preset).expect("clap checked the name"),
    };
    if let Some(v) = args.validate_every {
        options.validate_every = v;
    }
    if let Some(v) = args.epochs {
        options.epochs = v;
    }
    if let Some(v) = args.lr {
        options.learning_rate = v;
    }
    if let Some(v) = args.batch_frames {
        options.batch_frames = v;
    }
    if let Some(v) = args.seed {
        options.seed = v;
    }
    if args.no_spec_augment {
        options.spec_augment = false;
    }
    // Grown before any audio is read, so a config that cannot grow from the initial
    // model is refused at once.
    if let (true, Some(m), Some(path)) = (grow, init.as_mut(), &args.init) {
        let grown = {
            use rand::SeedableRng;
            lasr_model::Las::grown_from(
                config.clone(),
                &m.las,
                &mut rand_chacha::ChaCha8Rng::seed_from_u64(options.seed),
            )
        }
        .with_context(|| {
            format!(
                "{}: cannot grow the model of {} from it",
                path.display(),
                args.model_config
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display()
            )
        })?;
        let list = |names: &[String]| {
            if names.is_empty() {
                String::new()
            } else {
                format!(" ({})", names.join(", "))
            }
        };
        eprintln!(
            "grown: {} tensors from the initial model, {} fresh{}, {} of its trained tensors left out{}",
            grown.copied.len(),
            grown.fresh.len(),
            list(&grown.fresh),
            grown.dropped.len(),
            list(&grown.dropped)
        );
        m.las = grown.las;
    }
    // Features are loaded raw, then normalised with the training set's own statistics,
    // which travel inside every checkpoint.
    let mut front = FrontEndConfig::default();
    front.features.num_mel_bins = config.input_dim;
    front.utterance_mean = args.utterance_mean;
    // A model's weights only make sense on features normalised the way it was
    // trained, so an initial model brings its own statistics instead of new ones.
    let mut init_cmvn = None;
    if let Some(m) = &init {
        front = m.front_end.clone();
        init_cmvn = front.cmvn.take();
    }
    if let Some(v) = args.utterance_shape {
        front.utterance_shape = v;
    }
    if let Some(p) = args.utterance_spread {
        front.utterance_spread = p;
        front.validate().context("--utterance-spread")?;
    }
    // Padding adds rows of each band's floor, which the statistics barely notice, so
    // an initial model may be taught to read padded audio with its own statistics.
    if let Some(p) = args.pad_frames {
        front.pad_frames = p;
    }
    if let Some(path) = &args.spec_augment {
        let masks: lasr_features::SpecAugmentConfig = read_json(Some(path.as_path()))?;
        masks
            .validate()
            .with_context(|| format!("{}: invalid masks", path.display()))?;
        front.features.spec_augment = masks;
        options.spec_augment = true;
    }
    // Whether validation reports CTC numbers alone; a resumed run trains the saved
    // model, whatever the command line builds.
    let mut resumed_ctc_only = None;
    if args.resume {
        // The data is normalised here, the model's front end comes from its file: they
        // must agree, so the run goes on with the statistics it started with (which an
        // --init run took from its initial model, not from this data).
        let path = args.out.join("model.safetensors");
        let saved = lasr_model::ModelFile::load(&path)?;
        if saved.front_end.utterance_mean != front.utterance_mean {
            bail!(
                "{}: trained {} --utterance-mean; resume with the same setting",
                path.display(),
                if saved.front_end.utterance_mean {
                    "with"
                } else {
                    "without"
                }
            );
        }
        // Settings an --init phase may change but a resumed run keeps.
        refuse_another_on_resume(
            &path,
            "utterance-shape",
            args.utterance_shape,
            saved.front_end.utterance_shape,
        )?;
        refuse_another_on_resume(
            &path,
            "utterance-spread",
            args.utterance_spread,
            saved.front_end.utterance_spread,
        )?;
        refuse_another_on_resume(
            &path,
            "pad-frames",
            args.pad_frames,
            saved.front_end.pad_frames,
        )?;
        let c = &saved.las.config;
        refuse_another_on_resume(&path, "ctc-weight", args.ctc_weight, c.ctc_weight)?;
        refuse_another_on_resume(
            &path,
            "label-smoothing",
            args.label_smoothing,
            c.label_smoothing,
        )?;
        refuse_another_on_resume(&path, "dropout", args.dropout, c.dropout)?;
        refuse_another_on_resume(&path, "sampling-rate", args.sampling_rate, c.sampling_rate)?;
        // `lasr_model::train` reloads the saved model on resume, masks included, so a
        // resumed run can only go on with the masks its file holds.
        let trained_with = saved.info["train_options"]["spec_augment"].as_bool();
        let saved_masks = serde_json::to_string(&saved.front_end.features.spec_augment)?;
        if args.spec_augment.is_some()
            && front.features.spec_augment != saved.front_end.features.spec_augment
        {
            if trained_with == Some(false) {
                bail!(
                    "{}: trained without SpecAugment; a resumed run keeps the masks its file \
                     holds ({saved_masks}): start a new phase with --init and --spec-augment \
                     to train with others",
                    path.display()
                );
            }
            bail!(
                "{}: trained with other SpecAugment masks ({saved_masks}); a resumed run keeps \
                 its masks",
                path.display()
            );
        }
        // `--spec-augment` turns SpecAugment on over the options file, and the file
        // given on resuming may well be the one that said off: without a flag, the run
        // goes on as it trained.
        let flagged = args.no_spec_augment || args.spec_augment.is_some();
        if let Some(was) = trained_with.filter(|&was| was != options.spec_augment) {
            if !flagged {
                if was {
                    eprintln!(
                        "{}: trained with SpecAugment on; going on with it (--no-spec-augment \
                         to turn it off)",
                        path.display()
                    );
                } else {
                    eprintln!(
                        "{}: trained with SpecAugment off; going on without it \
                         (--spec-augment with the run's masks, {saved_masks}, to turn it on)",
                        path.display()
                    );
                }
                options.spec_augment = was;
            }
        }
        resumed_ctc_only = Some(!saved.las.config.trains_speller());
        front = saved.front_end;
        init_cmvn = front.cmvn.take();
    }
    // CMVN and the shape come after loading (`Dataset::normalize`): the statistics
    // are gathered from what loading gives.
    let mut load = lasr_data::LoadOptions {
        front: front.for_statistics(),
        cache: args.feature_cache.clone(),
        speed_perturb: args.speed_perturb.clone(),
    };
    let mut train_set = load_corpus(&args.train, &load, "train")?;
    load.speed_perturb.clear();
    let mut valid_set = load_corpus(std::slice::from_ref(&args.valid), &load, "valid")?;
    let cmvn = match init_cmvn {
        Some(c) => c,
        None => train_set.cmvn_stats().finish()?,
    };
    front.cmvn = Some(cmvn);
    train_set.normalize(&front)?;
    valid_set.normalize(&front)?;
    let model = match init {
        // Decoding settings were tuned for the initial weights; the new ones are
        // tuned (and packed) again.
        Some(m) => lasr_model::ModelFile {
            front_end: front,
            info: serde_json::Value::Null,
            decode: None,
            // It heard the listeners as they were.
            ensemble_speller: None,
            // It measured the initial weights' output.
            ctc_prior: None,
            ..m
        },
        None => {
            let las = {
                use rand::SeedableRng;
                lasr_model::Las::new(
                    config,
                    &mut rand_chacha::ChaCha8Rng::seed_from_u64(options.seed),
                )?
            };
            lasr_model::ModelFile::new(las, front, lasr_decode::Vocab::librispeech())
        }
    };
    model.validate()?;
    let bar = batch_progress();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        // First Ctrl-C: finish the step, write a checkpoint, exit. Second: exit now
        // (the checkpoints on disk are whole either way: they are written atomically).
        ctrlc::set_handler(move || {
            if stop.swap(true, std::sync::atomic::Ordering::Relaxed) {
                std::process::exit(130);
            }
            eprintln!("\nstopping after this step; Ctrl-C again to quit at once");
        })
        .context("cannot install the Ctrl-C handler")?;
    }
    let mut observer = Bars {
        bar,
        stop,
        frames: 0,
        since: std::time::Instant::now(),
        ctc_only: resumed_ctc_only.unwrap_or(!model.las.config.trains_speller()),
    };
    let finish = lasr_model::train(
        model,
        &train_set,
        &valid_set,
        &options,
        &args.out,
        args.resume,
        &mut observer,
    )?;
    observer.bar.finish_and_clear();
    let last = match finish {
        lasr_model::Finish::Done(last) => last,
        lasr_model::Finish::Stopped(p) => {
            eprintln!(
                "stopped at epoch {} batch {} (step {}); checkpoint in {}: continue with --resume",
                p.epoch + 1,
                p.batch,
                p.step,
                args.out.display()
            );
            return Ok(ExitCode::from(130));
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({"out": args.out, "last_validation": last})
        );
    } else if let Some(v) = last {
        let rates = if v.decoded == 0 {
            format!("loss {:.4} (nothing decoded)", v.loss)
        } else {
            format!("CER {:.2}%, WER {:.2}%", 100.0 * v.cer, 100.0 * v.wer)
        };
        println!(
            "done: {} epochs; last validation {rates}; model in {}",
            v.epoch,
            args.out.join("model.safetensors").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn curves(log: &Path, out: &Path) -> Result<ExitCode> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("{}: cannot read", log.display()))?;
    plot::write_training_curves(&text, out).with_context(|| format!("{}", log.display()))?;
    Ok(ExitCode::SUCCESS)
}
