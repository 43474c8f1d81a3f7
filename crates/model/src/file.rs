//! The model file: one safetensors file holding everything needed to run the model,
//! as whisper.cpp's files do. Tensors are the parameters (PyTorch names, f32); the
//! header's string metadata holds
//!
//! - `lasr.format`: [`FORMAT_VERSION`],
//! - `lasr.model_config`: [`ModelConfig`] as JSON,
//! - `lasr.front_end`: the feature settings and CMVN statistics as JSON,
//! - `lasr.vocab`: the symbol list as JSON,
//! - `lasr.info`: free-form JSON about how the model was made (may be absent),
//! - `lasr.decode`: the decoding this model does best with, as measured on
//!   development data ([`DecodeOptions`] as JSON; may be absent: library defaults).
//!
//! Any safetensors reader opens it; `json.loads(f.metadata()["lasr.model_config"])`
//! recovers the config in Python.

use std::collections::HashMap;
use std::path::Path;

use lasr_decode::Vocab;
use lasr_features::FrontEndConfig;
use lasr_nn::{checkpoint, Module};
use rand::SeedableRng;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::las::Las;
use crate::transcribe::DecodeOptions;

/// Version of the layout above; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;

/// A model with everything it needs to turn audio into text.
#[derive(Debug, Clone)]
pub struct ModelFile {
    pub las: Las,
    pub front_end: FrontEndConfig,
    pub vocab: Vocab,
    /// How the model was made (data, command, steps...), as JSON; `Null` if unknown.
    pub info: serde_json::Value,
    /// Recommended decoding (the language model, if any, is supplied apart).
    pub decode: Option<DecodeOptions>,
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Model(format!("{}: {reason}", path.display()))
}

impl ModelFile {
    /// The element-wise mean of the parameters of `models` (checkpoint averaging, as
    /// ESPnet averages its last or best epochs): every model must have the same
    /// config, vocabulary and front end (CMVN statistics included), i.e. come from one
    /// run. Front end, vocabulary, info and decoding come from the first.
    pub fn average(models: &[ModelFile]) -> Result<ModelFile> {
        let Some(first) = models.first() else {
            return Err(Error::Model("nothing to average".into()));
        };
        for (k, m) in models.iter().enumerate().skip(1) {
            let what = if m.las.config != first.las.config {
                "model config"
            } else if m.front_end != first.front_end {
                "front end (feature settings or CMVN statistics)"
            } else if m.vocab != first.vocab {
                "vocabulary"
            } else {
                continue;
            };
            return Err(Error::Model(format!(
                "model {} differs from the first in its {what}: only checkpoints of one run can be averaged",
                k + 1
            )));
        }
        let mut sums: Vec<Vec<f64>> = Vec::new();
        for m in models {
            let mut k = 0;
            m.las.visit("", &mut |_, t| {
                if sums.len() <= k {
                    sums.push(vec![0.0; t.len()]);
                }
                for (s, &v) in sums[k].iter_mut().zip(t.iter()) {
                    *s += f64::from(v);
                }
                k += 1;
            });
        }
        let n = models.len() as f64;
        let mut out = first.clone();
        let mut k = 0;
        out.las.visit_mut("", &mut |_, mut t| {
            for (v, &s) in t.iter_mut().zip(&sums[k]) {
                *v = (s / n) as f32;
            }
            k += 1;
        });
        Ok(out)
    }

    /// Checks that the parts fit together: vocabulary size and specials, feature width.
    pub fn validate(&self) -> Result<()> {
        let c = &self.las.config;
        if let Some(d) = &self.decode {
            d.validate(self)?;
        }
        if self.vocab.len() != c.vocab_size {
            return Err(Error::Model(format!(
                "vocabulary has {} symbols, the model outputs {}",
                self.vocab.len(),
                c.vocab_size
            )));
        }
        if c.sos != Vocab::SOS || c.eos != Vocab::EOS {
            return Err(Error::Model(format!(
                "model uses sos {} / eos {}, the vocabulary {} / {}",
                c.sos,
                c.eos,
                Vocab::SOS,
                Vocab::EOS
            )));
        }
        if c.has_ctc() && c.blank != Vocab::PAD {
            return Err(Error::Model(format!(
                "CTC blank is {}, but only the padding symbol {} never occurs in a transcript",
                c.blank,
                Vocab::PAD
            )));
        }
        if self.front_end.features.num_mel_bins != c.input_dim {
            return Err(Error::Model(format!(
                "front end makes {} features, the model reads {}",
                self.front_end.features.num_mel_bins, c.input_dim
            )));
        }
        self.front_end
            .validate()
            .map_err(|e| Error::Model(e.to_string()))
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let json = |v: &dyn erased::Ser| v.json();
        let mut meta = HashMap::new();
        meta.insert("lasr.format".to_string(), FORMAT_VERSION.to_string());
        meta.insert("lasr.model_config".to_string(), json(&self.las.config));
        meta.insert("lasr.front_end".to_string(), json(&self.front_end));
        meta.insert("lasr.vocab".to_string(), json(&self.vocab));
        if !self.info.is_null() {
            meta.insert("lasr.info".to_string(), self.info.to_string());
        }
        if let Some(d) = &self.decode {
            meta.insert("lasr.decode".to_string(), json(d));
        }
        Ok(checkpoint::to_bytes(&self.las, "", &meta)?)
    }

    /// Writes the file atomically (a crash never leaves a half-written model).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        Ok(checkpoint::write_atomic(path, &bytes)?)
    }

    /// Reads a model file; errors name the file and what is wrong with it.
    pub fn load(path: &Path) -> Result<ModelFile> {
        let bytes = std::fs::read(path).map_err(|e| bad(path, format!("cannot read: {e}")))?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            Error::Model(m) => bad(path, m),
            other => bad(path, other),
        })
    }

    /// [`ModelFile::load`] from memory (for a model embedded in the binary).
    pub fn from_bytes(bytes: &[u8]) -> Result<ModelFile> {
        let meta = checkpoint::metadata(bytes).map_err(|e| match e {
            lasr_nn::Error::Checkpoint { reason, .. } => Error::Model(reason),
            other => Error::Model(other.to_string()),
        })?;
        let get = |key: &str| {
            meta.get(key).ok_or_else(|| {
                Error::Model(format!(
                    "not a lasr model file: no \"{key}\" in its metadata"
                ))
            })
        };
        let version: u32 = get("lasr.format")?
            .parse()
            .map_err(|_| Error::Model("lasr.format is not a number".into()))?;
        if version != FORMAT_VERSION {
            return Err(Error::Model(format!(
                "model file format {version}; this lasr reads format {FORMAT_VERSION}"
            )));
        }
        let parse = |key: &str| -> Result<serde_json::Value> {
            serde_json::from_str(get(key)?).map_err(|e| Error::Model(format!("{key}: {e}")))
        };
        let config: ModelConfig = serde_json::from_value(parse("lasr.model_config")?)
            .map_err(|e| Error::Model(format!("lasr.model_config: {e}")))?;
        let front_end: FrontEndConfig = serde_json::from_value(parse("lasr.front_end")?)
            .map_err(|e| Error::Model(format!("lasr.front_end: {e}")))?;
        let vocab: Vocab = serde_json::from_value(parse("lasr.vocab")?)
            .map_err(|e| Error::Model(format!("lasr.vocab: {e}")))?;
        let info = meta
            .get("lasr.info")
            .map_or(Ok(serde_json::Value::Null), |s| {
                serde_json::from_str(s).map_err(|e| Error::Model(format!("lasr.info: {e}")))
            })?;
        let decode = meta
            .get("lasr.decode")
            .map(|s| {
                serde_json::from_str::<DecodeOptions>(s)
                    .map_err(|e| Error::Model(format!("lasr.decode: {e}")))
            })
            .transpose()?;
        // Shapes come from the config; the weights then overwrite the initialisation.
        let mut las = Las::new(config, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0))?;
        checkpoint::from_bytes(bytes, "", &mut las).map_err(|e| Error::Model(e.to_string()))?;
        let file = ModelFile {
            las,
            front_end,
            vocab,
            info,
            decode,
        };
        file.validate()?;
        Ok(file)
    }
}

/// Serialising the different metadata parts to JSON strings through one helper.
mod erased {
    pub trait Ser {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> String {
            serde_json::to_string(self).expect("lasr's configs serialise to JSON")
        }
    }
}
