//! Parameter initialisation, seeded so runs are repeatable.

use ndarray::{Array, Dimension, ShapeBuilder};
use rand::Rng;

/// Uniform in `[-bound, bound)`: PyTorch's default for LSTM (`bound = 1/sqrt(hidden)`)
/// and, to within its constant, for Linear (`1/sqrt(fan_in)`).
pub fn uniform<D: Dimension, Sh: ShapeBuilder<Dim = D>>(
    shape: Sh,
    bound: f32,
    rng: &mut impl Rng,
) -> Array<f32, D> {
    Array::from_shape_simple_fn(shape, || {
        let u = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
        (2.0 * u - 1.0) * bound
    })
}
