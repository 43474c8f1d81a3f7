//! The one error type of `lasr-model`.

/// What can go wrong building or running the model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A batch does not fit the model (wrong feature width, utterance too short for
    /// the pyramid, token outside the vocabulary...).
    #[error("invalid batch: {0}")]
    Batch(String),
    /// A configuration value is out of range.
    #[error("invalid model config: {0}")]
    Config(String),
    /// A layer refused its input; with a correct batch this is a bug in lasr.
    #[error(transparent)]
    Layer(#[from] lasr_nn::Error),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
