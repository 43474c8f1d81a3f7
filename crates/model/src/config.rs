//! Model sizes. The defaults are the LAS paper's, as in the PyTorch reference
//! (../shared/reference): 13,599,264 parameters.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The recurrent cell of the listener's layers and the speller's two cells (config
/// `cell`: `"lstm"`, `"gru"` or `"rnn"`). Parameter names are PyTorch's for each
/// (`nn.LSTM`/`nn.GRU`/`nn.RNN` in the listener, `nn.LSTMCell`/`nn.GRUCell`/
/// `nn.RNNCell` in the speller); only the gate count, and so the shapes, differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellType {
    /// Long short-term memory (4 gates, state `h` and `c`), the reference's.
    #[default]
    Lstm,
    /// Gated recurrent unit (3 gates, reset-after as in PyTorch, state `h`).
    Gru,
    /// Elman RNN with tanh (1 gate, state `h`).
    Rnn,
}

impl CellType {
    /// The config name (`lstm`, `gru`, `rnn`).
    pub fn name(self) -> &'static str {
        match self {
            CellType::Lstm => "lstm",
            CellType::Gru => "gru",
            CellType::Rnn => "rnn",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Feature width (mel bins).
    pub input_dim: usize,
    /// Listener layer width per direction; listener outputs are twice this.
    pub listener_hidden: usize,
    /// Pyramid bidirectional layers after the first one; time shrinks by 2 per layer.
    pub pyramid_layers: usize,
    /// Feature frames joined into each input frame of the first layer (1: none; 4:
    /// a first layer at 25 frames per second, reading 40 ms of features at a time).
    /// Time shrinks by this too. Left out of a written config when 1, as `top_layers`
    /// when 0, so a file of the reference's shape stays readable by builds before them.
    #[serde(skip_serializing_if = "is_one")]
    pub frame_stack: usize,
    /// Bidirectional layers after the pyramid, at its frame rate (deepening the
    /// listener without shrinking time further).
    #[serde(skip_serializing_if = "is_zero")]
    pub top_layers: usize,
    /// Recurrent cell of the listener and the speller (absent from older configs:
    /// LSTM).
    pub cell: CellType,
    /// Character embedding width.
    pub embedding_dim: usize,
    /// Speller cell width (both cells).
    pub speller_hidden: usize,
    /// Attention projection width.
    pub attention_dim: usize,
    /// Output symbols, specials included.
    pub vocab_size: usize,
    /// Token fed at the first decoder step.
    pub sos: usize,
    /// Token that ends a transcript.
    pub eos: usize,
    /// Weight of the CTC loss on the listener in the training objective
    /// `(1 - w) * attention + w * ctc`; 0 builds no CTC head.
    pub ctc_weight: f32,
    /// The CTC blank symbol (the vocabulary's padding symbol, which no transcript holds).
    pub blank: usize,
    /// Location-aware attention: filters over the previous step's weights (0 = the
    /// reference's content-only attention).
    pub location_channels: usize,
    /// Width of those filters in listener frames (odd).
    pub location_width: usize,
    /// Label smoothing of the attention decoder's cross-entropy (PyTorch's
    /// `label_smoothing`): a training setting with no effect on inference, kept with the
    /// model as ESPnet keeps `lsm_weight`, so a checkpoint says how it was trained.
    pub label_smoothing: f32,
    /// Dropout on every listener layer's output and on the speller's output-layer
    /// input during training (a training setting; inference never drops).
    pub dropout: f32,
    /// Scheduled sampling (Bengio et al. 2015): the chance that a training step feeds
    /// the decoder its own previous best guess instead of the true character.
    pub sampling_rate: f32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            input_dim: 80,
            listener_hidden: 256,
            pyramid_layers: 3,
            frame_stack: 1,
            top_layers: 0,
            cell: CellType::Lstm,
            embedding_dim: 256,
            speller_hidden: 512,
            attention_dim: 256,
            vocab_size: 32,
            sos: 1,
            eos: 2,
            ctc_weight: 0.0,
            blank: 0,
            location_channels: 0,
            location_width: 31,
            label_smoothing: 0.0,
            dropout: 0.0,
            sampling_rate: 0.0,
        }
    }
}

impl ModelConfig {
    /// Names accepted by [`ModelConfig::preset`].
    pub const PRESETS: [&'static str; 2] = ["reference", "small"];

    /// A named configuration: `reference` is the LAS paper's sizes as in the PyTorch
    /// reference (13.6 M parameters, content attention, no CTC); `small` is the shipped
    /// model's (`assets/model.json`: 3.65 M parameters, a 4x listener so that
    /// character CTC fits, joint CTC 0.5, content attention), which trains on the 7.8 h
    /// LibriSpeech set in about two hours on two cores. Location-aware attention, label
    /// smoothing and dropout each came out worse in that budget (BENCHMARKS.md,
    /// "Ablation"), so the preset leaves them off.
    pub fn preset(name: &str) -> Option<ModelConfig> {
        match name {
            "reference" => Some(ModelConfig::default()),
            "small" => Some(ModelConfig {
                listener_hidden: 160,
                pyramid_layers: 2,
                embedding_dim: 64,
                speller_hidden: 256,
                attention_dim: 128,
                ctc_weight: 0.5,
                ..ModelConfig::default()
            }),
            _ => None,
        }
    }

    /// Input frames per listener output frame: `frame_stack 2^pyramid_layers`.
    /// Saturates rather than overflows, so an unvalidated config cannot panic here.
    pub fn reduction(&self) -> usize {
        let pyramid = u32::try_from(self.pyramid_layers)
            .ok()
            .and_then(|p| 1usize.checked_shl(p))
            .unwrap_or(usize::MAX);
        self.frame_stack.saturating_mul(pyramid)
    }

    /// Listener output width.
    pub fn listener_dim(&self) -> usize {
        2 * self.listener_hidden
    }

    /// Checks every size.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("input_dim", self.input_dim),
            ("listener_hidden", self.listener_hidden),
            ("embedding_dim", self.embedding_dim),
            ("speller_hidden", self.speller_hidden),
            ("attention_dim", self.attention_dim),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config(format!("{name} must be positive")));
        }
        if self.frame_stack == 0 {
            return Err(Error::Config(
                "frame_stack must be positive (1 joins no frames)".into(),
            ));
        }
        if self.pyramid_layers > 8 || self.reduction() > 256 {
            return Err(Error::Config(format!(
                "frame_stack = {} with pyramid_layers = {} would shrink time {}-fold (at most 256)",
                self.frame_stack,
                self.pyramid_layers,
                self.reduction()
            )));
        }
        // Each listener layer draws its dropout masks from its own site number, and
        // those must stay below the speller's (100): 1 + 8 + 16 layers at most.
        if self.top_layers > 16 {
            return Err(Error::Config(format!(
                "top_layers = {} (at most 16)",
                self.top_layers
            )));
        }
        if self.frame_stack.checked_mul(self.input_dim).is_none() {
            return Err(Error::Config(format!(
                "frame_stack = {} joins {} features each: too wide",
                self.frame_stack, self.input_dim
            )));
        }
        if self.vocab_size < 3
            || self.sos >= self.vocab_size
            || self.eos >= self.vocab_size
            || self.sos == self.eos
        {
            return Err(Error::Config(format!(
                "vocab_size {} with sos {} and eos {}: need distinct sos and eos inside the vocabulary",
                self.vocab_size, self.sos, self.eos
            )));
        }
        if self.location_channels > 0 && self.location_width.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "location_width = {} must be odd (filters centred on each frame)",
                self.location_width
            )));
        }
        if !(0.0..=1.0).contains(&self.ctc_weight) {
            return Err(Error::Config(format!(
                "ctc_weight = {} must lie in [0, 1]",
                self.ctc_weight
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "dropout = {} must lie in [0, 1)",
                self.dropout
            )));
        }
        if !(0.0..=1.0).contains(&self.sampling_rate) {
            return Err(Error::Config(format!(
                "sampling_rate = {} must lie in [0, 1]",
                self.sampling_rate
            )));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::Config(format!(
                "label_smoothing = {} must lie in [0, 1)",
                self.label_smoothing
            )));
        }
        if self.blank >= self.vocab_size || self.blank == self.sos || self.blank == self.eos {
            return Err(Error::Config(format!(
                "blank {} must be inside the vocabulary of {} and differ from sos and eos",
                self.blank, self.vocab_size
            )));
        }
        Ok(())
    }

    /// False for a CTC-only objective (`ctc_weight` 1): training then never runs the
    /// speller, whose weights get no gradient, and the model decodes with CTC.
    pub fn trains_speller(&self) -> bool {
        !ctc_alone(self.ctc_weight)
    }

    /// True when the model carries a CTC head on the listener.
    pub fn has_ctc(&self) -> bool {
        self.ctc_weight > 0.0
    }

    /// A lower bound on the parameters of this config's listener and CTC head (what
    /// an ensemble member stores), in f64 so that absurd sizes cannot overflow. Every
    /// recurrent layer has at least one gate of `H x (input + H)` weights per
    /// direction. A file's header is checked against it before any array is built,
    /// so a crafted config cannot make a loader allocate far more than the file holds.
    pub fn min_member_params(&self) -> f64 {
        let h = self.listener_hidden as f64;
        let d = 2.0 * h;
        let first = d * (self.frame_stack as f64 * self.input_dim as f64 + h);
        let listener = first
            + self.pyramid_layers as f64 * d * (5.0 * h)
            + self.top_layers as f64 * d * (3.0 * h);
        let ctc = if self.has_ctc() {
            self.vocab_size as f64 * d
        } else {
            0.0
        };
        listener + ctc
    }

    /// [`ModelConfig::min_member_params`] plus a lower bound on the speller's: the
    /// embedding, two recurrent layers of one gate, attention projections (with the
    /// location filters, if any) and the output layer.
    pub fn min_params(&self) -> f64 {
        let (v, e) = (self.vocab_size as f64, self.embedding_dim as f64);
        let (d, s, a) = (
            self.listener_dim() as f64,
            self.speller_hidden as f64,
            self.attention_dim as f64,
        );
        let mut speller = v * e + s * (e + d + s) + s * (2.0 * s) + a * (d + s + 1.0) + v * (s + d);
        if self.location_channels > 0 {
            // The location filters and their projection: exact counts.
            let c = self.location_channels as f64;
            speller += c * self.location_width as f64 + a * c;
        }
        self.min_member_params() + speller
    }
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// True when a CTC weight leaves the attention term nothing (weight 1): the one test
/// behind [`ModelConfig::trains_speller`] and the loss a step reports.
pub(crate) fn ctc_alone(ctc_weight: f32) -> bool {
    ctc_weight >= 1.0
}
