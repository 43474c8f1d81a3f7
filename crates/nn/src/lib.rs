//! # lasr-nn
//!
//! Layers with explicit forward and backward passes, in the style of llm.c: each
//! layer's backward sits next to its forward, the cache holds exactly what backward
//! needs, and gradients are added into a gradient value of the layer's own type
//! ([`Module::zeros_like`]). Every layer is checked against finite differences
//! ([`gradcheck`]).
//!
//! Conventions: `f32`; sequences are time-major `[T, B, D]`; parameter names follow
//! PyTorch (`weight_ih_l0`, `bias_hh_l0_reverse`, gate order `i, f, g, o`). This crate
//! depends on no other lasr crate.

pub mod attention;
pub mod checkpoint;
pub mod ctc;
pub mod dropout;
pub mod embedding;
pub mod error;
pub mod gradcheck;
pub mod gru;
pub mod heap;
pub mod init;
pub mod linalg;
pub mod linear;
pub mod loss;
pub mod lstm;
pub mod module;
pub mod optim;
pub mod packed;
pub mod pyramid;
mod recurrent;
pub mod team;

pub use attention::{AdditiveAttention, AttentionCache, Location, PreparedAttention};
pub use checkpoint::Storage;
pub use ctc::{ctc_greedy, ctc_loss, ctc_score, Ctc};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use error::{Error, Result};
pub use gru::{
    BiElman, BiElmanCache, BiGru, BiGruCache, Elman, ElmanCache, ElmanCell, ElmanCellCache, Gru,
    GruCache, GruCell, GruCellCache, PreparedElmanCell, PreparedGruCell,
};
pub use linear::Linear;
pub use loss::{softmax_cross_entropy, softmax_cross_entropy_smoothed, CrossEntropy};
pub use lstm::{BiLstm, BiLstmCache, Lstm, LstmCache, LstmCell, LstmCellCache, PreparedLstmCell};
pub use module::Module;
pub use optim::{clip_grad_norm, grad_norm, Adam, LrSchedule, Sgd};
pub use packed::{PackedMatrix, PackedRecurrent, WeightFormat};
pub use pyramid::{
    pyramid_lengths, pyramid_reduce, pyramid_reduce_backward, stack_frames, stack_frames_backward,
    stacked_lengths,
};
pub use recurrent::{Bidirectional, BidirectionalCache, Recurrent};
pub use team::{Team, TeamMember};
pub mod activation;
mod simd;
