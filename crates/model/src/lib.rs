//! # lasr-model
//!
//! The Listen, Attend and Spell network built from `lasr-nn` layers: the pyramid
//! recurrent listener (LSTM, GRU or RNN cells), the attending speller, the teacher-forced loss and its gradient.
//! Sizes come from [`ModelConfig`]; parameter names match the PyTorch reference's
//! `state_dict()` so checkpoints move between the two.

pub mod bench;
pub mod cells;
pub mod config;
pub mod ensemble;
pub mod ensemble_speller;
pub mod error;
pub mod file;
pub mod infer;
pub mod las;
pub mod prior;
pub mod rnnlm;
pub mod train;
pub mod transcribe;

pub use bench::{bench, normalize_for_scoring, BenchReport, BenchSetting};
pub use cells::{CellState, ListenerLayer, SpellerCell};
pub use config::{CellType, ModelConfig};
pub use ensemble::{fold_cmvn, mix_log_probs, CtcMember};
pub use ensemble_speller::{
    train_ensemble_speller, Encoded, EnsembleSpeller, EnsembleSpellerOptions, SpellerEpoch,
    SpellerProgress,
};
pub use error::{Error, Result};
pub use file::{ModelFile, FORMAT_VERSION};
pub use infer::{InferenceWeights, SpellerState, UtteranceDecoder};
pub use las::{Batch, Grown, Las, LasCache, Listener, Speller, StepStats};
pub use lasr_nn::{Storage, WeightFormat};
pub use prior::{CtcPrior, PriorSums};
pub use rnnlm::{
    train_rnnlm, RnnLm, RnnLmConfig, RnnLmEpoch, RnnLmProgress, RnnLmScorer, RnnLmTrainOptions,
};
pub use train::{train, validate, Finish, Observer, Progress, Quiet, TrainOptions, Validation};
pub use transcribe::{
    chunk_bounds, Alternative, DecodeOptions, SharedLexicon, SharedLm, SharedRnnLm, SharedWordLm,
    Transcript, Word,
};
