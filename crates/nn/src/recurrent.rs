//! What the sequence-level recurrent layers (LSTM, GRU, Elman) share: step order and
//! the parameter plumbing of four tensors named the PyTorch way.

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

/// PyTorch's initialisation, width accessors, a layer name for errors, and
/// [`crate::Module`] for a layer with `$gates` gates and
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

            pub(crate) fn name(&self) -> String {
                format!(concat!($name, "{}"), self.suffix)
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
