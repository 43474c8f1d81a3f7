//! Pyramid time reduction: consecutive frame pairs joined into one frame of twice the
//! width, halving time (LAS's pBLSTM input). An odd last frame is dropped, as in the
//! reference model (`h[:, :T - T % 2].reshape(B, T // 2, 2 * D)`).

use ndarray::{s, Array3, ArrayView3};

/// `x` `[T, B, D]` -> `[T / 2, B, 2D]`: output frame `t` is `[x[2t]; x[2t + 1]]`.
pub fn pyramid_reduce(x: ArrayView3<f32>) -> Array3<f32> {
    let (steps, batch, dim) = x.dim();
    let half = steps / 2;
    let mut y = Array3::zeros((half, batch, 2 * dim));
    for t in 0..half {
        y.slice_mut(s![t, .., ..dim])
            .assign(&x.slice(s![2 * t, .., ..]));
        y.slice_mut(s![t, .., dim..])
            .assign(&x.slice(s![2 * t + 1, .., ..]));
    }
    y
}

/// Gradient of [`pyramid_reduce`]: `dy` `[T / 2, B, 2D]` -> `dx` `[T, B, D]` for an
/// input of `steps` frames (a dropped odd frame gets zero).
pub fn pyramid_reduce_backward(dy: ArrayView3<f32>, steps: usize) -> Array3<f32> {
    let (half, batch, dim2) = dy.dim();
    assert_eq!(
        half,
        steps / 2,
        "pyramid_reduce_backward: {half} output frames for {steps} input frames"
    );
    let dim = dim2 / 2;
    let mut dx = Array3::zeros((steps, batch, dim));
    for t in 0..half {
        dx.slice_mut(s![2 * t, .., ..])
            .assign(&dy.slice(s![t, .., ..dim]));
        dx.slice_mut(s![2 * t + 1, .., ..])
            .assign(&dy.slice(s![t, .., dim..]));
    }
    dx
}

/// Sequence lengths after a reduction: a trailing odd frame is dropped.
pub fn pyramid_lengths(lengths: &[usize]) -> Vec<usize> {
    lengths.iter().map(|l| l / 2).collect()
}
