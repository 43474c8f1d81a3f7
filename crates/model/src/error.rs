//! The one error type of `lasr-model`.

/// What can go wrong building or running the model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An audio file could not be turned into features (names the file).
    #[error(transparent)]
    Audio(#[from] lasr_features::Error),
    /// A corpus entry could not be read or cut (names the file).
    #[error(transparent)]
    Corpus(#[from] lasr_data::Error),
    /// A batch does not fit the model (wrong feature width, utterance too short for
    /// the pyramid, token outside the vocabulary...).
    #[error("invalid batch: {0}")]
    Batch(String),
    /// A configuration value is out of range.
    #[error("invalid model config: {0}")]
    Config(String),
    /// A model file is missing, unreadable, or does not fit together.
    #[error("model file: {0}")]
    Model(String),
    /// The search refused its options, or the decoder broke its contract.
    #[error(transparent)]
    Search(#[from] lasr_decode::Error),
    /// A layer refused its input; with a correct batch this is a bug in lasr.
    #[error(transparent)]
    Layer(#[from] lasr_nn::Error),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
