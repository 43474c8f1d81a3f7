//! The model file: one safetensors file holding everything needed to run the model,
//! as whisper.cpp's files do. Tensors are the parameters (PyTorch names; f32, f16 in
//! format 3, int8 recurrent matrices with their scales in format 4); the header's
//! string metadata holds
//!
//! - `lasr.format`: the format version, 1 to [`FORMAT_VERSION`] (below),
//! - `lasr.model_config`: [`ModelConfig`] as JSON,
//! - `lasr.front_end`: the feature settings and CMVN statistics as JSON,
//! - `lasr.vocab`: the symbol list as JSON,
//! - `lasr.info`: free-form JSON about how the model was made (may be absent),
//! - `lasr.decode`: the decoding this model does best with, as measured on
//!   development data ([`DecodeOptions`] as JSON; may be absent: library defaults),
//! - `lasr.members` (formats 2 to 4): the CTC ensemble members' configs and mixture
//!   weights as JSON (`[{"model_config": {..}, "weight": 0.3, "info": ..}]`), their
//!   tensors named `member.1.listener...`, `member.1.ctc...` and so on
//!   ([`crate::ensemble`]).
//! - `lasr.ensemble_speller` (format 5): the ensemble speller's config and input
//!   width as JSON (`{"model_config": {..}, "input_dim": 1856}`), its tensors named
//!   `ensemble_speller.proj.weight`, `ensemble_speller.speller.emb.weight` and so on
//!   ([`crate::ensemble_speller`]).
//! - `lasr.ctc_prior` (any format; may be absent): the CTC output's label prior
//!   ([`CtcPrior`] as JSON, `{"probs": [..], "frames": N}`), measured on a corpus by
//!   `lasr prior`, for [`DecodeOptions::ctc_prior_scale`]. Files without it stay
//!   readable by earlier versions; a file recommending a scale is refused by them.
//!
//! Format 3 stores the tensors in IEEE half precision (F16; [`Storage::F16`], a
//! tensor f16 cannot hold stays F32), with or without members. Format 4 adds int8
//! storage of the recurrent weight matrices ([`Storage::Int8`]: `NAME` I8 with its
//! row scales `NAME_scale`; the rest as in format 3). Each file is written
//! with the lowest format that holds it: f32 without members is format 1, so builds
//! from before ensembles still read it; f32 with members format 2.
//!
//! Any safetensors reader opens it; `json.loads(f.metadata()["lasr.model_config"])`
//! recovers the config in Python.

use std::collections::HashMap;
use std::path::Path;

use lasr_decode::Vocab;
use lasr_features::FrontEndConfig;
use lasr_nn::{checkpoint, Module, Storage};
use rand::SeedableRng;

use crate::config::ModelConfig;
use crate::ensemble::CtcMember;
use crate::ensemble_speller::EnsembleSpeller;
use crate::error::{Error, Result};
use crate::las::Las;
use crate::prior::CtcPrior;
use crate::transcribe::DecodeOptions;

/// Version of the layout above; bumped on any incompatible change. Format 2 added
/// ensemble members, format 3 half-precision tensors, format 4 int8 matrices, format
/// 5 the ensemble speller; a file is written with the lowest format that holds it
/// ([`ModelFile::format_version`]).
pub const FORMAT_VERSION: u32 = 5;

/// The most ensemble members a file may list: each is built before its tensors are
/// read, so an untrusted file must not make that open-ended.
pub const MAX_MEMBERS: usize = 16;

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
    /// Further acoustic models whose CTC distributions are mixed with this one's
    /// ([`crate::ensemble`]); usually none.
    pub members: Vec<CtcMember>,
    /// How the tensors are written: f32, or for a model that is only run f16 (half
    /// the bytes) or int8 recurrent matrices (about a quarter). Loading keeps what the
    /// file had, so packing a file again does not change it; training always writes
    /// f32.
    pub storage: Storage,
    /// A speller attending over the main model's and every member's listener states,
    /// for re-ranking ([`crate::ensemble_speller`]); usually none.
    pub ensemble_speller: Option<EnsembleSpeller>,
    /// How often the CTC output (an ensemble's mixture) puts its probability on each
    /// symbol, measured on a corpus ([`crate::prior`]); usually none. A change of the
    /// models (other members, weights or main model, averaging) drops it, with the
    /// recommended decoding's scale ([`ModelFile::drop_ctc_prior`]); a change of
    /// storage or front end keeps it (the output moves little; `lasr pack` says so).
    pub ctc_prior: Option<CtcPrior>,
}

/// How the ensemble speller is described in `lasr.ensemble_speller`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EnsembleSpellerMeta {
    /// Its speller's sizes (the main model's config when it was made).
    model_config: ModelConfig,
    /// Width of the listener states it reads.
    input_dim: usize,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    info: serde_json::Value,
}

/// Tensor-name prefix of the ensemble speller.
const ENSEMBLE_SPELLER: &str = "ensemble_speller";

/// How a member is described in `lasr.members`.
#[derive(serde::Serialize, serde::Deserialize)]
struct MemberMeta {
    model_config: ModelConfig,
    weight: f32,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    info: serde_json::Value,
}

/// Tensor-name prefixes of `n` members: `member.1`, `member.2`, ...
fn member_prefixes(n: usize) -> Vec<String> {
    (1..=n).map(|k| format!("member.{k}")).collect()
}

/// Metadata `key` read as JSON of a `T`, if the file has it; errors name the key.
fn optional_meta<T: serde::de::DeserializeOwned>(
    meta: &HashMap<String, String>,
    key: &str,
) -> Result<Option<T>> {
    meta.get(key)
        .map(|s| serde_json::from_str(s).map_err(|e| Error::Model(format!("{key}: {e}"))))
        .transpose()
}

/// Metadata `key` read as JSON of a `T`; a file without it is not a lasr model file.
fn required_meta<T: serde::de::DeserializeOwned>(
    meta: &HashMap<String, String>,
    key: &str,
) -> Result<T> {
    optional_meta(meta, key)?.ok_or_else(|| missing_meta(key))
}

fn missing_meta(key: &str) -> Error {
    Error::Model(format!(
        "not a lasr model file: no \"{key}\" in its metadata"
    ))
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Model(format!("{}: {reason}", path.display()))
}

impl ModelFile {
    /// One model (no ensemble members, no ensemble speller) reading `front_end`'s
    /// features and spelling with `vocab`, stored in f32, with no record of how it
    /// was made and no recommended decoding: what a fresh training run starts from.
    pub fn new(las: Las, front_end: FrontEndConfig, vocab: Vocab) -> ModelFile {
        ModelFile {
            las,
            front_end,
            vocab,
            info: serde_json::Value::Null,
            decode: None,
            members: Vec::new(),
            storage: Storage::F32,
            ensemble_speller: None,
            ctc_prior: None,
        }
    }

    /// The element-wise mean of the parameters of `models` (checkpoint averaging, as
    /// ESPnet averages its last or best epochs): every model must have the same
    /// config, vocabulary and front end (CMVN statistics included), i.e. come from one
    /// run. Front end, vocabulary, info and decoding come from the first (but a CTC
    /// prior, which the mean's output would not match); the mean is stored in f32
    /// whatever the inputs were.
    pub fn average(models: &[ModelFile]) -> Result<ModelFile> {
        let Some(first) = models.first() else {
            return Err(Error::Model("nothing to average".into()));
        };
        if let Some(k) = models.iter().position(|m| !m.members.is_empty()) {
            return Err(Error::Model(format!(
                "model {} is an ensemble: average the checkpoints of one run, then build the ensemble",
                k + 1
            )));
        }
        for (k, m) in models.iter().enumerate().skip(1) {
            let what = if m.las.config != first.las.config {
                "model config"
            } else if let Some(what) = m.reads_unlike(first, false) {
                what
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
        out.storage = Storage::F32;
        out.drop_ensemble_speller();
        out.drop_ctc_prior();
        let mut k = 0;
        out.las.visit_mut("", &mut |_, mut t| {
            for (v, &s) in t.iter_mut().zip(&sums[k]) {
                *v = (s / n) as f32;
            }
            k += 1;
        });
        Ok(out)
    }

    /// A CTC ensemble ([`crate::ensemble`]): `main` with the listener and CTC head of
    /// each of `others` as members, the frame-wise mixture weighted by `weights` (one
    /// per model, `main`'s first, positive, summing to 1). `main` may be an ensemble
    /// already: its members stay, after it and before `others`, and `weights` gives
    /// them new shares in that order. Every model must have a CTC head, the same
    /// feature settings (members read `main`'s features), the same vocabulary and the
    /// same time reduction. A model normalised with other CMVN statistics has the
    /// difference folded into its first layer ([`crate::ensemble::fold_cmvn`]).
    /// `main`'s speller, info and recommended decoding are kept (its ensemble speller
    /// only when no model is added; its CTC prior, and with it the decoding's prior
    /// scale, only when the mixture stays as it was); tune the decoding again.
    ///
    /// With no `others`, this re-weights `main`'s members (and a `main` without
    /// members comes back as it was, its one weight being 1).
    pub fn ensemble(main: ModelFile, others: Vec<ModelFile>, weights: &[f32]) -> Result<ModelFile> {
        // Models are numbered as given: `main` is model 1.
        for (k, m) in others.iter().enumerate() {
            if !m.members.is_empty() {
                return Err(Error::Model(format!(
                    "model {} is an ensemble already (only the first may be)",
                    k + 2
                )));
            }
            // CMVN statistics may differ: they are folded in below.
            if let Some(what) = m.reads_unlike(&main, true) {
                return Err(Error::Model(format!(
                    "model {} differs from the first in its {what}: members read the first's features",
                    k + 2
                )));
            }
        }
        let members = main.members.len() + others.len();
        if members > MAX_MEMBERS {
            return Err(Error::Model(format!(
                "{members} members; a file holds at most {MAX_MEMBERS}"
            )));
        }
        if weights.len() != members + 1 {
            let held = match main.members.len() {
                0 => String::new(),
                1 => " (the first holds 1 member)".to_string(),
                n => format!(" (the first holds {n} members)"),
            };
            return Err(Error::Model(format!(
                "{} models{held} but {} weights",
                members + 1,
                weights.len()
            )));
        }
        if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
            return Err(Error::Model(format!("ensemble weight {w} is not positive")));
        }
        let sum: f32 = weights.iter().sum();
        if (sum - 1.0).abs() > 1e-4 {
            return Err(Error::Model(format!(
                "ensemble weights sum to {sum}, not 1"
            )));
        }
        let mut out = main;
        if !others.is_empty() {
            out.drop_ensemble_speller();
        }
        let same_mixture = others.is_empty()
            && std::iter::once(out.main_weight())
                .chain(out.members.iter().map(|m| m.weight))
                .zip(weights)
                .all(|(a, b)| (a - b).abs() <= 1e-6);
        // New shares or new members: another mixture, another prior.
        if !same_mixture {
            out.drop_ctc_prior();
        }
        let (held, added) = weights[1..].split_at(out.members.len());
        for (m, &w) in out.members.iter_mut().zip(held) {
            m.weight = w;
        }
        for (k, (mut m, &w)) in others.into_iter().zip(added).enumerate() {
            let model = |e: &dyn std::fmt::Display| Error::Model(format!("model {}: {e}", k + 2));
            if m.front_end.cmvn != out.front_end.cmvn {
                crate::ensemble::fold_cmvn(
                    &mut m.las.listener,
                    m.front_end.cmvn.as_ref(),
                    out.front_end.cmvn.as_ref(),
                )
                .map_err(|e| model(&e))?;
            }
            let info = m.info;
            let mut member = CtcMember::from_las(m.las, w).map_err(|e| model(&e))?;
            member.info = info;
            if let Some(what) = out.member_problem(&member) {
                return Err(model(&format_args!("it has {what}")));
            }
            out.members.push(member);
        }
        out.validate()?;
        Ok(out)
    }

    /// This ensemble with `main` in place of its main model (listener, speller and CTC
    /// head, and the training record that goes with them); the members, their weights,
    /// the recommended decoding and the storage stay; an ensemble speller, which heard
    /// the old main listener, is dropped ([`ModelFile::drop_ensemble_speller`]), and
    /// so is the CTC prior of the old mixture ([`ModelFile::drop_ctc_prior`]). The
    /// members were folded to this file's CMVN statistics, so `main` must read exactly its front end (statistics
    /// included) and spell with its vocabulary: a later phase of the main model
    /// (`lasr train --init`) does. The decoding was tuned for the old main model: tune
    /// it again (`lasr pack --decode`).
    pub fn with_main(self, main: ModelFile) -> Result<ModelFile> {
        if !main.members.is_empty() {
            return Err(Error::Model(
                "the new main model is an ensemble itself".into(),
            ));
        }
        if let Some(what) = main.reads_unlike(&self, false) {
            return Err(Error::Model(format!(
                "the new main model differs from the ensemble's in its {what}: its members \
                 read the ensemble's features"
            )));
        }
        // `validate` checks the rest: a CTC head on the main model, and each member's
        // fit to it (time reduction, vocabulary, input size).
        let mut out = ModelFile {
            las: main.las,
            info: main.info,
            ..self
        };
        out.drop_ensemble_speller();
        out.drop_ctc_prior();
        out.validate()?;
        Ok(out)
    }

    /// Member `number` (1-based, as `lasr info` numbers them) as a model of its own:
    /// its listener and CTC head, reading this file's features (its own statistics
    /// were folded into its first layer when it joined), so that it can be trained on
    /// (`lasr train --init`) and joined again. Only a member trained with CTC alone:
    /// an ensemble keeps no member's speller. The speller of the model made is a fresh
    /// draw of the member's (unused) speller sizes, which CTC-only training never
    /// touches.
    pub fn take_member(mut self, number: usize) -> Result<ModelFile> {
        let n = self.members.len();
        if number == 0 || number > n {
            return Err(Error::Model(format!(
                "there is no member {number}: the model has {}",
                members_held(n)
            )));
        }
        let member = self.members.swap_remove(number - 1);
        if member.config.trains_speller() {
            return Err(Error::Model(format!(
                "member {number} was trained with an attention decoder (ctc_weight {}), \
                 which the ensemble did not keep: only CTC-only members can be taken out",
                member.config.ctc_weight
            )));
        }
        let mut las = Las::new(
            member.config.clone(),
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(0),
        )?;
        las.listener = member.listener;
        las.ctc = Some(member.ctc);
        let out = ModelFile {
            las,
            info: member.info,
            decode: None,
            members: Vec::new(),
            ensemble_speller: None,
            ctc_prior: None,
            ..self
        };
        out.validate()?;
        Ok(out)
    }

    /// Leaves out the members numbered `numbers` (1-based, as their tensor names
    /// `member.1`, `member.2`, ... and `lasr info`'s list number them); the others keep
    /// their order and weights, and the main model's share (the rest of 1) takes up the
    /// dropped weights until [`ModelFile::ensemble`] gives new ones; an ensemble speller
    /// and the CTC prior are dropped with them. Refuses a number that is not a member
    /// or is given twice, leaving `self` as it was.
    pub fn drop_members(&mut self, numbers: &[usize]) -> Result<()> {
        let n = self.members.len();
        let mut keep = vec![true; n];
        for &k in numbers {
            if k == 0 || k > n {
                let held = members_held(n);
                return Err(Error::Model(format!(
                    "there is no member {k} to leave out: the model has {held}"
                )));
            }
            if !std::mem::replace(&mut keep[k - 1], false) {
                return Err(Error::Model(format!("member {k} is named twice")));
            }
        }
        let mut keep = keep.into_iter();
        self.members.retain(|_| keep.next() == Some(true));
        if !numbers.is_empty() {
            self.drop_ensemble_speller();
            self.drop_ctc_prior();
        }
        Ok(())
    }

    /// Leaves out the ensemble speller, and its weight in the recommended decoding
    /// (it was trained on listeners that a change of models takes away; train one
    /// again with `lasr speller`). True if there was one.
    pub fn drop_ensemble_speller(&mut self) -> bool {
        if let Some(d) = &mut self.decode {
            d.ensemble_speller_weight = 0.0;
        }
        self.ensemble_speller.take().is_some()
    }

    /// Leaves out the CTC prior, and its scale in the recommended decoding (the prior
    /// was measured on an output that a change of models or weights changes; measure
    /// it again with `lasr prior`). True if there was one.
    pub fn drop_ctc_prior(&mut self) -> bool {
        if let Some(d) = &mut self.decode {
            d.ctc_prior_scale = 0.0;
        }
        self.ctc_prior.take().is_some()
    }

    /// Checks that the parts fit together: vocabulary size and specials, feature width.
    pub fn validate(&self) -> Result<()> {
        let c = &self.las.config;
        if self.vocab.len() != c.vocab_size {
            return Err(Error::Model(format!(
                "vocabulary has {} symbols, the model outputs {}",
                self.vocab.len(),
                c.vocab_size
            )));
        }
        if let Some(p) = &self.ctc_prior {
            p.validate(c.vocab_size)?;
        }
        if let Some(d) = &self.decode {
            d.validate(self)?;
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
        self.validate_members()?;
        if let Some(es) = &self.ensemble_speller {
            let d_all = self.all_listeners_dim();
            if es.input_dim() != d_all {
                return Err(Error::Model(format!(
                    "the ensemble speller reads {} listener states per frame, the main model and members make {d_all}",
                    es.input_dim()
                )));
            }
            let (ec, c) = (&es.config, &self.las.config);
            if es.proj.output_dim() != ec.listener_dim()
                || ec.vocab_size != c.vocab_size
                || ec.sos != c.sos
                || ec.eos != c.eos
            {
                return Err(Error::Model(format!(
                    "the ensemble speller spells {} symbols (sos {}, eos {}) from {} projected states (its config says {}); the main model has {} symbols (sos {}, eos {})",
                    ec.vocab_size,
                    ec.sos,
                    ec.eos,
                    es.proj.output_dim(),
                    ec.listener_dim(),
                    c.vocab_size,
                    c.sos,
                    c.eos
                )));
            }
        }
        self.front_end
            .validate()
            .map_err(|e| Error::Model(e.to_string()))
    }

    /// What about `other`'s input and output `self` does not share, if anything: the
    /// front end (features and, unless `cmvn_may_differ`, CMVN) or the vocabulary.
    /// Averaging and ensembles both need models that read the same features and spell
    /// with the same symbols; an ensemble folds a member's other CMVN into its weights.
    fn reads_unlike(&self, other: &ModelFile, cmvn_may_differ: bool) -> Option<&'static str> {
        // SpecAugment's masks only shaped training: models trained with other masks
        // read the same features.
        let mut mine = self.front_end.clone();
        mine.features.spec_augment = other.front_end.features.spec_augment.clone();
        if cmvn_may_differ {
            // A member reads the first model's features, utterance shape and spread
            // included (the shipped members were trained without the shape and read
            // with it).
            let same_features = FrontEndConfig {
                cmvn: other.front_end.cmvn.clone(),
                utterance_shape: other.front_end.utterance_shape,
                utterance_spread: other.front_end.utterance_spread,
                ..mine
            } == other.front_end;
            if !same_features {
                return Some("feature settings");
            }
        } else if mine != other.front_end {
            let shape_alone = FrontEndConfig {
                utterance_shape: other.front_end.utterance_shape,
                utterance_spread: other.front_end.utterance_spread,
                ..mine
            } == other.front_end;
            return Some(if shape_alone {
                "utterance shape or spread setting (`lasr pack --utterance-shape` and \
                 `--utterance-spread` set them)"
            } else {
                "front end (feature settings or CMVN statistics)"
            });
        }
        if self.vocab != other.vocab {
            Some("vocabulary")
        } else {
            None
        }
    }

    /// The `lasr.format` this model is written as: 5 with an ensemble speller, 4 with
    /// int8 matrices, 3 with f16 tensors, else 2 with members, else 1 (readable by
    /// builds from before ensembles).
    pub fn format_version(&self) -> u32 {
        if self.ensemble_speller.is_some() {
            5
        } else if self.storage == Storage::Int8 {
            4
        } else if self.storage == Storage::F16 {
            3
        } else if self.members.is_empty() {
            1
        } else {
            2
        }
    }

    /// The main model's share of the CTC mixture: 1 minus the members' weights (1
    /// without members).
    pub fn main_weight(&self) -> f32 {
        1.0 - self.members.iter().map(|m| m.weight).sum::<f32>()
    }

    /// What keeps `m` from mixing with this main model, if anything.
    fn member_problem(&self, m: &CtcMember) -> Option<String> {
        let (c, mc) = (&self.las.config, &m.config);
        Some(
            if !(m.weight.is_finite() && m.weight > 0.0 && m.weight < 1.0) {
                format!("weight {} (must be between 0 and 1)", m.weight)
            } else if !mc.has_ctc() {
                "no CTC head".to_string()
            } else if mc.input_dim != c.input_dim {
                format!(
                    "{} input features, the main model {}",
                    mc.input_dim, c.input_dim
                )
            } else if mc.reduction() != c.reduction() {
                format!(
                    "a time reduction of {}x, the main model {}x (their frames must line up)",
                    mc.reduction(),
                    c.reduction()
                )
            } else if mc.vocab_size != c.vocab_size || mc.blank != c.blank {
                format!(
                    "{} symbols with blank {}, the main model {} with blank {}",
                    mc.vocab_size, mc.blank, c.vocab_size, c.blank
                )
            } else if m.ctc.input_dim() != mc.listener_dim() || m.ctc.output_dim() != mc.vocab_size
            {
                "a CTC head of other shapes than its config".to_string()
            } else {
                return None;
            },
        )
    }

    fn validate_members(&self) -> Result<()> {
        if self.members.is_empty() {
            return Ok(());
        }
        let c = &self.las.config;
        if !c.has_ctc() {
            return Err(Error::Model(
                "an ensemble's main model needs a CTC head: members mix CTC distributions".into(),
            ));
        }
        for (k, m) in self.members.iter().enumerate() {
            if let Some(what) = self.member_problem(m) {
                return Err(Error::Model(format!(
                    "ensemble member {} has {what}",
                    k + 1
                )));
            }
        }
        let main = self.main_weight();
        if main.is_nan() || main <= 0.0 {
            return Err(Error::Model(format!(
                "ensemble members' weights sum to {}, leaving the main model nothing (must be below 1)",
                1.0 - main
            )));
        }
        Ok(())
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let json = |v: &dyn erased::Ser| v.json();
        let mut meta = HashMap::new();
        meta.insert("lasr.format".to_string(), self.format_version().to_string());
        meta.insert("lasr.model_config".to_string(), json(&self.las.config));
        meta.insert("lasr.front_end".to_string(), json(&self.front_end));
        meta.insert("lasr.vocab".to_string(), json(&self.vocab));
        if !self.info.is_null() {
            meta.insert("lasr.info".to_string(), self.info.to_string());
        }
        if let Some(d) = &self.decode {
            meta.insert("lasr.decode".to_string(), json(d));
        }
        let prefixes = member_prefixes(self.members.len());
        let mut parts: Vec<(&str, &dyn Module)> = vec![("", &self.las)];
        if !self.members.is_empty() {
            let described: Vec<MemberMeta> = self
                .members
                .iter()
                .map(|m| MemberMeta {
                    model_config: m.config.clone(),
                    weight: m.weight,
                    info: m.info.clone(),
                })
                .collect();
            meta.insert("lasr.members".to_string(), json(&described));
            for (p, m) in prefixes.iter().zip(&self.members) {
                parts.push((p, m));
            }
        }
        if let Some(es) = &self.ensemble_speller {
            meta.insert(
                "lasr.ensemble_speller".to_string(),
                json(&EnsembleSpellerMeta {
                    model_config: es.config.clone(),
                    input_dim: es.input_dim(),
                    info: serde_json::Value::Null,
                }),
            );
            parts.push((ENSEMBLE_SPELLER, es));
        }
        if let Some(p) = &self.ctc_prior {
            meta.insert("lasr.ctc_prior".to_string(), json(p));
        }
        Ok(checkpoint::to_bytes_parts_as(&parts, self.storage, &meta)?)
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
        let version: u32 = meta
            .get("lasr.format")
            .ok_or_else(|| missing_meta("lasr.format"))?
            .parse()
            .map_err(|_| Error::Model("lasr.format is not a number".into()))?;
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(Error::Model(format!(
                "model file format {version}; this lasr reads formats 1 to {FORMAT_VERSION}"
            )));
        }
        let config: ModelConfig = required_meta(&meta, "lasr.model_config")?;
        let front_end: FrontEndConfig = required_meta(&meta, "lasr.front_end")?;
        let vocab: Vocab = required_meta(&meta, "lasr.vocab")?;
        let info = optional_meta(&meta, "lasr.info")?.unwrap_or(serde_json::Value::Null);
        let decode: Option<DecodeOptions> = optional_meta(&meta, "lasr.decode")?;
        let ctc_prior: Option<CtcPrior> = optional_meta(&meta, "lasr.ctc_prior")?;
        let described: Vec<MemberMeta> = match meta.get("lasr.members") {
            None => Vec::new(),
            Some(_) if version < 2 => {
                return Err(Error::Model(
                    "lasr.members in a format 1 file (ensembles are format 2 or later)".into(),
                ))
            }
            Some(_) => required_meta(&meta, "lasr.members")?,
        };
        if described.len() > MAX_MEMBERS {
            return Err(Error::Model(format!(
                "lasr.members lists {} members; at most {MAX_MEMBERS} are read",
                described.len()
            )));
        }
        let speller_meta: Option<EnsembleSpellerMeta> = match meta.get("lasr.ensemble_speller") {
            None => None,
            Some(_) if version < 5 => {
                return Err(Error::Model(format!(
                "lasr.ensemble_speller in a format {version} file (ensemble spellers are format 5)"
            )))
            }
            Some(_) => optional_meta(&meta, "lasr.ensemble_speller")?,
        };
        if let Some(m) = &speller_meta {
            m.model_config
                .validate()
                .map_err(|e| Error::Model(format!("lasr.ensemble_speller: {e}")))?;
            // Its shapes must be the main model's before any array is built from them.
            let (ec, c) = (&m.model_config, &config);
            if ec.vocab_size != c.vocab_size
                || ec.sos != c.sos
                || ec.eos != c.eos
                || ec.listener_dim() != c.listener_dim()
            {
                return Err(Error::Model(format!(
                    "lasr.ensemble_speller: it spells {} symbols (sos {}, eos {}) from {} projected states; the main model {} (sos {}, eos {}) from {}",
                    ec.vocab_size,
                    ec.sos,
                    ec.eos,
                    ec.listener_dim(),
                    c.vocab_size,
                    c.sos,
                    c.eos,
                    c.listener_dim()
                )));
            }
        }
        // Arrays are built from the configs before the tensors are read: a config
        // must not describe more parameters than the file holds values.
        let wanted = config.min_params()
            + described
                .iter()
                .map(|d| d.model_config.min_member_params())
                .sum::<f64>()
            + speller_meta.as_ref().map_or(0.0, |m| {
                // The projection, and the speller's lower bound (its config's whole
                // model less the listener and CTC head).
                m.input_dim as f64 * m.model_config.listener_dim() as f64
                    + m.model_config.min_params()
                    - m.model_config.min_member_params()
            });
        let contents = checkpoint::contents(bytes).map_err(|e| Error::Model(e.to_string()))?;
        let held = contents.values;
        if wanted > held {
            return Err(Error::Model(format!(
                "its configs describe at least {wanted:.0} parameters, its tensors hold {held:.0} values"
            )));
        }
        // Shapes come from the configs; the weights then overwrite the initialisation.
        let rng = &mut rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut las = Las::new(config, rng)?;
        let mut members = described
            .into_iter()
            .enumerate()
            .map(|(k, d)| {
                let mut m = CtcMember::new(d.model_config, d.weight, rng)
                    .map_err(|e| Error::Model(format!("ensemble member {}: {e}", k + 1)))?;
                m.info = d.info;
                Ok(m)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut ensemble_speller =
            speller_meta.map(|m| EnsembleSpeller::new(m.model_config, m.input_dim, rng));
        let prefixes = member_prefixes(members.len());
        let mut parts: Vec<(&str, &mut dyn Module)> = vec![("", &mut las)];
        for (p, m) in prefixes.iter().zip(&mut members) {
            parts.push((p, m));
        }
        if let Some(es) = &mut ensemble_speller {
            parts.push((ENSEMBLE_SPELLER, es));
        }
        checkpoint::from_bytes_parts(bytes, &mut parts).map_err(|e| Error::Model(e.to_string()))?;
        let halves = &contents.half;
        if let (Some(first), true) = (halves.first(), version < 3) {
            let more = match halves.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            return Err(Error::Model(format!(
                "tensor {first}{more} is 16-bit in a format {version} file (16-bit tensors are format 3)"
            )));
        }
        if let (Some(first), true) = (contents.int8.first(), version < 4) {
            return Err(Error::Model(format!(
                "tensor {first} is int8 in a format {version} file (int8 tensors are format 4)"
            )));
        }
        let storage = contents.storage();
        let file = ModelFile {
            las,
            front_end,
            vocab,
            info,
            decode,
            members,
            storage,
            ensemble_speller,
            ctc_prior,
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

/// "no members", "1 member" or "members 1 to N": what a member number may be, for
/// errors about one that is not.
fn members_held(n: usize) -> String {
    match n {
        0 => "no members".to_string(),
        1 => "1 member".to_string(),
        n => format!("members 1 to {n}"),
    }
}
