//! What every layer shares: named parameters, visited in a fixed order.
//!
//! A layer's gradients live in a value of the layer's own type (`zeros_like`), so they
//! have exactly the parameters' names and shapes; optimisers, checkpoints and gradient
//! checks walk parameters and gradients side by side with [`Module::visit`].

use ndarray::{ArrayViewD, ArrayViewMutD};

/// A layer with named parameters (PyTorch's names, e.g. `weight_ih_l0`).
pub trait Module {
    /// Calls `f(name, tensor)` for every parameter, in a fixed order.
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, ArrayViewD<'a, f32>));
    /// Like [`Module::visit`], with mutable access.
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(String, ArrayViewMutD<'a, f32>));
    /// The same layer with every parameter zero: a gradient accumulator.
    fn zeros_like(&self) -> Self
    where
        Self: Sized;

    /// Number of scalar parameters.
    fn num_params(&self) -> usize {
        let mut n = 0;
        self.visit("", &mut |_, t| n += t.len());
        n
    }

    /// Adds `other`'s parameters into this one's, element by element (summing the
    /// gradients of batch parts computed apart). Panics if the two differ in structure,
    /// which only a programming error can cause: both come from `zeros_like`.
    fn add_from(&mut self, other: &Self)
    where
        Self: Sized,
    {
        let mut src = Vec::new();
        other.visit("", &mut |_, t| src.push(t));
        let mut src = src.into_iter();
        self.visit_mut("", &mut |name, mut t| {
            let s = src.next().expect("both values have the same parameters");
            assert_eq!(s.shape(), t.shape(), "{name}: shapes differ");
            t += &s;
        });
    }

    /// Sets every parameter to zero (clears accumulated gradients).
    fn zero(&mut self) {
        self.visit_mut("", &mut |_, mut t| t.fill(0.0));
    }
}

/// `prefix.name`, or `name` at the top level.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
