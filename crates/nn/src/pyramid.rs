//! Time reduction by joining consecutive frames into one wider frame. Pyramid
//! reduction joins pairs, halving time (LAS's pBLSTM input); frame stacking joins `k`
//! at once, as a listener's input of low frame rate does. A trailing partial group is
//! dropped, as in the reference model (`h[:, :T - T % 2].reshape(B, T // 2, 2 * D)`).

use ndarray::{s, Array3, ArrayView3};

/// `x` `[T, B, D]` -> `[T / k, B, kD]`: output frame `t` is `[x[kt]; ..; x[kt + k - 1]]`.
/// `k` must be positive.
pub fn stack_frames(x: ArrayView3<f32>, k: usize) -> Array3<f32> {
    assert!(k > 0, "stack_frames: k must be positive");
    let (steps, batch, dim) = x.dim();
    let out = steps / k;
    let mut y = Array3::zeros((out, batch, k * dim));
    for t in 0..out {
        for j in 0..k {
            y.slice_mut(s![t, .., j * dim..(j + 1) * dim])
                .assign(&x.slice(s![k * t + j, .., ..]));
        }
    }
    y
}

/// Gradient of [`stack_frames`]: `dy` `[T / k, B, kD]` -> `dx` `[T, B, D]` for an input
/// of `steps` frames (dropped trailing frames get zero).
pub fn stack_frames_backward(dy: ArrayView3<f32>, steps: usize, k: usize) -> Array3<f32> {
    let (out, batch, wide) = dy.dim();
    assert!(
        k > 0 && out == steps / k && wide % k == 0,
        "stack_frames_backward: {out} output frames of width {wide} for {steps} input frames joined {k} at a time"
    );
    let dim = wide / k;
    let mut dx = Array3::zeros((steps, batch, dim));
    for t in 0..out {
        for j in 0..k {
            dx.slice_mut(s![k * t + j, .., ..]).assign(&dy.slice(s![
                t,
                ..,
                j * dim..(j + 1) * dim
            ]));
        }
    }
    dx
}

/// Sequence lengths `[B]` after joining `k` frames at a time: a trailing partial group
/// is dropped. `k` must be positive.
pub fn stacked_lengths(lengths: &[usize], k: usize) -> Vec<usize> {
    assert!(k > 0, "stacked_lengths: k must be positive");
    lengths.iter().map(|l| l / k).collect()
}

/// `x` `[T, B, D]` -> `[T / 2, B, 2D]`: [`stack_frames`] by pairs.
pub fn pyramid_reduce(x: ArrayView3<f32>) -> Array3<f32> {
    stack_frames(x, 2)
}

/// Gradient of [`pyramid_reduce`]: `dy` `[T / 2, B, 2D]` -> `dx` `[T, B, D]` for an
/// input of `steps` frames (a dropped odd frame gets zero).
pub fn pyramid_reduce_backward(dy: ArrayView3<f32>, steps: usize) -> Array3<f32> {
    stack_frames_backward(dy, steps, 2)
}

/// Sequence lengths after a pyramid reduction: a trailing odd frame is dropped.
pub fn pyramid_lengths(lengths: &[usize]) -> Vec<usize> {
    stacked_lengths(lengths, 2)
}
