//! What the recurrent layers (LSTM, GRU, Elman) share: step order, the parameter
//! plumbing of four tensors named the PyTorch way, the [`Recurrent`] trait and the
//! [`Bidirectional`] layer built on it.

use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3, ArrayViewD, ArrayViewMutD};
use rand::Rng;

use crate::error::{check_shape, Result};
use crate::gru::{Elman, ElmanCache, Gru, GruCache};
use crate::lstm::{Lstm, LstmCache};
use crate::module::Module;
use crate::packed::{PackedRecurrent, WeightFormat};

/// Processing order of time steps and each step's predecessor.
pub(crate) fn order(reverse: bool, steps: usize) -> Vec<(usize, Option<usize>)> {
    if reverse {
        (0..steps)
            .rev()
            .map(|t| (t, (t + 1 < steps).then_some(t + 1)))
            .collect()
    } else {
        (0..steps).map(|t| (t, t.checked_sub(1))).collect()
    }
}

/// PyTorch's initialisation, width accessors, a layer name for errors, the inference
/// entry points (`infer`, `pack`, `infer_packed` around the layer's own
/// `infer_impl`), and [`crate::Module`] for a layer with `$gates` gates and
/// fields `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`, `reverse`, `suffix`.
macro_rules! recurrent_module {
    ($ty:ident, $name:literal, $gates:literal) => {
        impl $ty {
            /// PyTorch's initialisation: every parameter uniform in `±1/sqrt(H)`.
            pub fn new(
                input: usize,
                hidden: usize,
                reverse: bool,
                suffix: &str,
                rng: &mut impl rand::Rng,
            ) -> Self {
                let b = 1.0 / (hidden as f32).sqrt();
                $ty {
                    weight_ih: $crate::init::uniform(($gates * hidden, input), b, rng),
                    weight_hh: $crate::init::uniform(($gates * hidden, hidden), b, rng),
                    bias_ih: $crate::init::uniform($gates * hidden, b, rng),
                    bias_hh: $crate::init::uniform($gates * hidden, b, rng),
                    reverse,
                    suffix: suffix.to_string(),
                }
            }

            /// Hidden width `H`.
            pub fn hidden(&self) -> usize {
                self.weight_hh.ncols()
            }

            /// Input width `I`.
            pub fn input_dim(&self) -> usize {
                self.weight_ih.ncols()
            }

            /// PyTorch's module name, for error messages.
            pub(crate) const KIND: &'static str = $name;

            pub(crate) fn name(&self) -> String {
                format!("{}{}", Self::KIND, self.suffix)
            }

            /// Inference over one sequence: `x` `[T, I]` -> `[T, H]`. The maths of
            /// `forward` without its cache, with one matrix-vector product per step
            /// (equal to `forward` up to float summation order). Packs `weight_hh` on
            /// every call; `infer_packed` reuses a packing.
            pub fn infer(
                &self,
                x: ndarray::ArrayView2<f32>,
            ) -> $crate::error::Result<ndarray::Array2<f32>> {
                self.infer_packed(x, &self.pack($crate::packed::WeightFormat::F32))
            }

            /// The weights packed for `infer_packed`.
            pub fn pack(
                &self,
                format: $crate::packed::WeightFormat,
            ) -> $crate::packed::PackedRecurrent {
                $crate::packed::PackedRecurrent::new(
                    self.weight_ih.view(),
                    self.weight_hh.view(),
                    format,
                )
            }

            /// `infer` with `w`, this layer's `pack` (in bfloat16 the recurrent
            /// products read half the bytes, in int8 a quarter; see
            /// [`crate::packed`]).
            pub fn infer_packed(
                &self,
                x: ndarray::ArrayView2<f32>,
                w: &$crate::packed::PackedRecurrent,
            ) -> $crate::error::Result<ndarray::Array2<f32>> {
                $crate::error::check_shape(
                    &self.name(),
                    "input",
                    x.shape(),
                    &[None, Some(self.input_dim())],
                )?;
                w.check(&self.name(), self.weight_ih.dim(), self.weight_hh.dim())?;
                #[cfg(target_arch = "x86_64")]
                if $crate::simd::avx512() {
                    // SAFETY: the CPU has AVX-512F, AVX2 and FMA.
                    return Ok(unsafe { self.infer_avx512(x, w) });
                }
                #[cfg(target_arch = "x86_64")]
                if $crate::simd::avx2_fma() {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return Ok(unsafe { self.infer_avx2(x, w) });
                }
                Ok(self.infer_impl(x, w))
            }

            /// `infer_impl` compiled for AVX-512: the gate loop 16 lanes wide (the same
            /// operations as the AVX2 build, so the same results).
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn infer_avx512(
                &self,
                x: ndarray::ArrayView2<f32>,
                w: &$crate::packed::PackedRecurrent,
            ) -> ndarray::Array2<f32> {
                self.infer_impl(x, w)
            }

            /// `infer_impl` compiled for AVX2 and FMA, so the gate loop vectorises.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn infer_avx2(
                &self,
                x: ndarray::ArrayView2<f32>,
                w: &$crate::packed::PackedRecurrent,
            ) -> ndarray::Array2<f32> {
                self.infer_impl(x, w)
            }
        }

        impl $crate::module::Module for $ty {
            fn visit<'a>(
                &'a self,
                prefix: &str,
                f: &mut dyn FnMut(String, ndarray::ArrayViewD<'a, f32>),
            ) {
                let sfx = &self.suffix;
                f(
                    $crate::module::join(prefix, &format!("weight_ih{sfx}")),
                    self.weight_ih.view().into_dyn(),
                );
                f(
                    $crate::module::join(prefix, &format!("weight_hh{sfx}")),
                    self.weight_hh.view().into_dyn(),
                );
                f(
                    $crate::module::join(prefix, &format!("bias_ih{sfx}")),
                    self.bias_ih.view().into_dyn(),
                );
                f(
                    $crate::module::join(prefix, &format!("bias_hh{sfx}")),
                    self.bias_hh.view().into_dyn(),
                );
            }

            fn visit_mut<'a>(
                &'a mut self,
                prefix: &str,
                f: &mut dyn FnMut(String, ndarray::ArrayViewMutD<'a, f32>),
            ) {
                let sfx = self.suffix.clone();
                f(
                    $crate::module::join(prefix, &format!("weight_ih{sfx}")),
                    self.weight_ih.view_mut().into_dyn(),
                );
                f(
                    $crate::module::join(prefix, &format!("weight_hh{sfx}")),
                    self.weight_hh.view_mut().into_dyn(),
                );
                f(
                    $crate::module::join(prefix, &format!("bias_ih{sfx}")),
                    self.bias_ih.view_mut().into_dyn(),
                );
                f(
                    $crate::module::join(prefix, &format!("bias_hh{sfx}")),
                    self.bias_hh.view_mut().into_dyn(),
                );
            }

            fn zeros_like(&self) -> Self {
                $ty {
                    weight_ih: ndarray::Array2::zeros(self.weight_ih.raw_dim()),
                    weight_hh: ndarray::Array2::zeros(self.weight_hh.raw_dim()),
                    bias_ih: ndarray::Array1::zeros(self.bias_ih.raw_dim()),
                    bias_hh: ndarray::Array1::zeros(self.bias_hh.raw_dim()),
                    reverse: self.reverse,
                    suffix: self.suffix.clone(),
                }
            }
        }
    };
}

pub(crate) use recurrent_module;

/// PyTorch's initialisation, width accessors and [`crate::Module`] for a step-wise cell
/// with `$gates` gates and fields `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`, named
/// as PyTorch's `nn.GRUCell` and `nn.RNNCell` name them (no layer suffix).
macro_rules! cell_module {
    ($ty:ident, $gates:literal) => {
        impl $ty {
            /// PyTorch's initialisation: every parameter uniform in `±1/sqrt(H)`, for
            /// input width `I` = `input` and hidden width `H` = `hidden`.
            pub fn new(input: usize, hidden: usize, rng: &mut impl rand::Rng) -> Self {
                let b = 1.0 / (hidden as f32).sqrt();
                $ty {
                    weight_ih: $crate::init::uniform(($gates * hidden, input), b, rng),
                    weight_hh: $crate::init::uniform(($gates * hidden, hidden), b, rng),
                    bias_ih: $crate::init::uniform($gates * hidden, b, rng),
                    bias_hh: $crate::init::uniform($gates * hidden, b, rng),
                }
            }

            /// Hidden width `H`.
            pub fn hidden(&self) -> usize {
                self.weight_hh.ncols()
            }

            /// Input width `I`.
            pub fn input_dim(&self) -> usize {
                self.weight_ih.ncols()
            }
        }

        impl $crate::module::Module for $ty {
            fn visit<'a>(
                &'a self,
                prefix: &str,
                f: &mut dyn FnMut(String, ndarray::ArrayViewD<'a, f32>),
            ) {
                use $crate::module::join;
                f(join(prefix, "weight_ih"), self.weight_ih.view().into_dyn());
                f(join(prefix, "weight_hh"), self.weight_hh.view().into_dyn());
                f(join(prefix, "bias_ih"), self.bias_ih.view().into_dyn());
                f(join(prefix, "bias_hh"), self.bias_hh.view().into_dyn());
            }

            fn visit_mut<'a>(
                &'a mut self,
                prefix: &str,
                f: &mut dyn FnMut(String, ndarray::ArrayViewMutD<'a, f32>),
            ) {
                use $crate::module::join;
                f(
                    join(prefix, "weight_ih"),
                    self.weight_ih.view_mut().into_dyn(),
                );
                f(
                    join(prefix, "weight_hh"),
                    self.weight_hh.view_mut().into_dyn(),
                );
                f(join(prefix, "bias_ih"), self.bias_ih.view_mut().into_dyn());
                f(join(prefix, "bias_hh"), self.bias_hh.view_mut().into_dyn());
            }

            fn zeros_like(&self) -> Self {
                $ty {
                    weight_ih: ndarray::Array2::zeros(self.weight_ih.raw_dim()),
                    weight_hh: ndarray::Array2::zeros(self.weight_hh.raw_dim()),
                    bias_ih: ndarray::Array1::zeros(self.bias_ih.raw_dim()),
                    bias_hh: ndarray::Array1::zeros(self.bias_hh.raw_dim()),
                }
            }
        }
    };
}

pub(crate) use cell_module;

/// One direction of a recurrent layer over whole sequences, as [`Bidirectional`] uses
/// it: implemented by [`Lstm`], [`Gru`] and [`Elman`], so code over a cell type chosen
/// at run time (the model's `cell` config) can be written once.
pub trait Recurrent: Module + Clone + std::fmt::Debug + Send + Sync {
    /// What [`Recurrent::backward`] needs from [`Recurrent::forward`].
    type Cache: Clone + std::fmt::Debug + Send + Sync;

    /// PyTorch's module name (`LSTM`, `GRU`, `RNN`), for error messages.
    const KIND: &'static str;

    /// PyTorch's initialisation for input width `I` = `input`, hidden width `H` =
    /// `hidden`; `suffix` is appended to parameter names (`_l0`, `_l0_reverse`).
    fn new(input: usize, hidden: usize, reverse: bool, suffix: &str, rng: &mut impl Rng) -> Self;

    /// Hidden width `H`.
    fn hidden(&self) -> usize;

    /// `x` `[T, B, I]` -> output `[T, B, H]` and the cache; `lengths` `[B]`, each at
    /// most `T`, marks live steps (`t < lengths[b]`).
    fn forward(
        &self,
        x: ArrayView3<f32>,
        lengths: Option<&[usize]>,
    ) -> Result<(Array3<f32>, Self::Cache)>;

    /// Adds parameter gradients into `grads` and returns `dL/dx` `[T, B, I]`, given
    /// `dy` = `dL/d output` `[T, B, H]`.
    fn backward(
        &self,
        cache: &Self::Cache,
        dy: ArrayView3<f32>,
        grads: &mut Self,
    ) -> Result<Array3<f32>> {
        Ok(self
            .backward_to(cache, dy, grads, true)?
            .expect("the input gradient was asked for"))
    }

    /// [`Recurrent::backward`], returning `dL/dx` only if `input_grad`: a network's
    /// first layer has no use for it, and it costs a product over all steps.
    fn backward_to(
        &self,
        cache: &Self::Cache,
        dy: ArrayView3<f32>,
        grads: &mut Self,
        input_grad: bool,
    ) -> Result<Option<Array3<f32>>>;

    /// Inference over one sequence, no cache: `x` `[T, I]` -> `[T, H]`.
    fn infer(&self, x: ArrayView2<f32>) -> Result<Array2<f32>>;

    /// The weights packed for [`Recurrent::infer_packed`].
    fn pack(&self, format: WeightFormat) -> PackedRecurrent;

    /// [`Recurrent::infer`] reusing `w`, this layer's [`Recurrent::pack`].
    fn infer_packed(&self, x: ArrayView2<f32>, w: &PackedRecurrent) -> Result<Array2<f32>>;
}

/// The layers' inherent methods, which are what their own users call.
macro_rules! impl_recurrent {
    ($ty:ident, $cache:ident) => {
        impl Recurrent for $ty {
            type Cache = $cache;
            const KIND: &'static str = $ty::KIND;

            fn new(
                input: usize,
                hidden: usize,
                reverse: bool,
                suffix: &str,
                rng: &mut impl Rng,
            ) -> Self {
                $ty::new(input, hidden, reverse, suffix, rng)
            }

            fn hidden(&self) -> usize {
                $ty::hidden(self)
            }

            fn forward(
                &self,
                x: ArrayView3<f32>,
                lengths: Option<&[usize]>,
            ) -> Result<(Array3<f32>, $cache)> {
                $ty::forward(self, x, lengths)
            }

            fn backward_to(
                &self,
                cache: &$cache,
                dy: ArrayView3<f32>,
                grads: &mut Self,
                input_grad: bool,
            ) -> Result<Option<Array3<f32>>> {
                $ty::backward_to(self, cache, dy, grads, input_grad)
            }

            fn infer(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
                $ty::infer(self, x)
            }

            fn pack(&self, format: WeightFormat) -> PackedRecurrent {
                $ty::pack(self, format)
            }

            fn infer_packed(&self, x: ArrayView2<f32>, w: &PackedRecurrent) -> Result<Array2<f32>> {
                $ty::infer_packed(self, x, w)
            }
        }
    };
}

impl_recurrent!(Lstm, LstmCache);
impl_recurrent!(Gru, GruCache);
impl_recurrent!(Elman, ElmanCache);

/// A bidirectional layer: both directions read the input, outputs are concatenated
/// forward-first, `[T, B, 2H]` (PyTorch's `bidirectional=True`). Each sequence's
/// reverse direction starts from zero at its own last frame, so padding never leaks.
/// [`crate::BiLstm`], [`crate::BiGru`] and [`crate::BiElman`] are this over each cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Bidirectional<R> {
    pub forward: R,
    pub backward: R,
}

/// What [`Bidirectional::backward`] needs.
#[derive(Debug, Clone)]
pub struct BidirectionalCache<R: Recurrent> {
    forward: R::Cache,
    backward: R::Cache,
}

impl<R: Recurrent> Bidirectional<R> {
    /// Layer `layer` of a stack (names `weight_ih_l{layer}` and `..._reverse`), input
    /// width `I` = `input`, `H` = `hidden` per direction.
    pub fn new(input: usize, hidden: usize, layer: usize, rng: &mut impl Rng) -> Self {
        Bidirectional {
            forward: R::new(input, hidden, false, &format!("_l{layer}"), rng),
            backward: R::new(input, hidden, true, &format!("_l{layer}_reverse"), rng),
        }
    }

    /// `x` `[T, B, I]` -> `[T, B, 2H]` and the cache; `lengths` `[B]` as for
    /// [`Recurrent::forward`].
    pub fn forward(
        &self,
        x: ArrayView3<f32>,
        lengths: Option<&[usize]>,
    ) -> Result<(Array3<f32>, BidirectionalCache<R>)> {
        // The two directions are independent: one per core when there are two.
        let (f, b) = rayon::join(
            || self.forward.forward(x, lengths),
            || self.backward.forward(x, lengths),
        );
        let ((yf, cf), (yb, cb)) = (f?, b?);
        let (steps, batch, hd) = yf.dim();
        // Built row-major (concatenate would keep the inputs' layout), so callers can
        // flatten it to [T * B, 2H] without a copy.
        let mut y = Array3::zeros((steps, batch, 2 * hd));
        y.slice_mut(s![.., .., ..hd]).assign(&yf);
        y.slice_mut(s![.., .., hd..]).assign(&yb);
        Ok((
            y,
            BidirectionalCache {
                forward: cf,
                backward: cb,
            },
        ))
    }

    /// Inference over one sequence: `x` `[T, I]` -> `[T, 2H]` (see
    /// [`Recurrent::infer`]).
    pub fn infer(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.infer_packed(x, &self.pack(WeightFormat::F32))
    }

    /// Both directions' weights packed for [`Bidirectional::infer_packed`], forward
    /// first.
    pub fn pack(&self, format: WeightFormat) -> [PackedRecurrent; 2] {
        [self.forward.pack(format), self.backward.pack(format)]
    }

    /// [`Bidirectional::infer`] reusing `w`, this layer's [`Bidirectional::pack`].
    pub fn infer_packed(
        &self,
        x: ArrayView2<f32>,
        w: &[PackedRecurrent; 2],
    ) -> Result<Array2<f32>> {
        let (f, b) = rayon::join(
            || self.forward.infer_packed(x, &w[0]),
            || self.backward.infer_packed(x, &w[1]),
        );
        let (yf, yb) = (f?, b?);
        let (steps, hd) = yf.dim();
        let mut y = Array2::zeros((steps, 2 * hd));
        y.slice_mut(s![.., ..hd]).assign(&yf);
        y.slice_mut(s![.., hd..]).assign(&yb);
        Ok(y)
    }

    /// `dy` `[T, B, 2H]` -> `dx` `[T, B, I]`, gradients added into `grads`.
    pub fn backward(
        &self,
        cache: &BidirectionalCache<R>,
        dy: ArrayView3<f32>,
        grads: &mut Bidirectional<R>,
    ) -> Result<Array3<f32>> {
        Ok(self
            .backward_to(cache, dy, grads, true)?
            .expect("the input gradient was asked for"))
    }

    /// [`Bidirectional::backward`], returning `dx` only if `input_grad` (see
    /// [`Recurrent::backward_to`]).
    pub fn backward_to(
        &self,
        cache: &BidirectionalCache<R>,
        dy: ArrayView3<f32>,
        grads: &mut Bidirectional<R>,
        input_grad: bool,
    ) -> Result<Option<Array3<f32>>> {
        let hd = self.forward.hidden();
        check_shape(
            &format!("Bi{}", R::KIND),
            "output gradient",
            dy.shape(),
            &[None, None, Some(2 * hd)],
        )?;
        // The directions on separate threads, as in `forward`: each one's per-step
        // products run on one thread, so one after the other left the second core
        // idle through every recurrence (BENCHMARKS.md, "Training step").
        let (f, b) = rayon::join(
            || {
                self.forward.backward_to(
                    &cache.forward,
                    dy.slice(s![.., .., ..hd]),
                    &mut grads.forward,
                    input_grad,
                )
            },
            || {
                self.backward.backward_to(
                    &cache.backward,
                    dy.slice(s![.., .., hd..]),
                    &mut grads.backward,
                    input_grad,
                )
            },
        );
        Ok(match (f?, b?) {
            (Some(mut dx), Some(db)) => {
                dx += &db;
                Some(dx)
            }
            _ => None,
        })
    }
}

impl<R: Recurrent> Module for Bidirectional<R> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, ArrayViewD<'a, f32>)) {
        self.forward.visit(prefix, f);
        self.backward.visit(prefix, f);
    }

    fn visit_mut<'a>(
        &'a mut self,
        prefix: &str,
        f: &mut dyn FnMut(String, ArrayViewMutD<'a, f32>),
    ) {
        self.forward.visit_mut(prefix, f);
        self.backward.visit_mut(prefix, f);
    }

    fn zeros_like(&self) -> Self {
        Bidirectional {
            forward: self.forward.zeros_like(),
            backward: self.backward.zeros_like(),
        }
    }
}
