//! Matrix products through the `gemm` crate (AVX-512, AVX2 or scalar kernels chosen at
//! run time), on `ndarray` views of any strides, so transposes cost nothing.

use ndarray::{ArrayView2, ArrayViewMut2};

/// Products at least this large (m * n * k) are split across the rayon pool; smaller
/// ones lose more to synchronisation than they gain. The per-step recurrent products
/// (8 x 256 x 1024 = 2^21) must stay below: splitting them made the listener slower.
const PARALLEL_WORK: usize = 1 << 24;

/// `c = a · b` (when `accumulate` is false) or `c += a · b`, for `a` `[m, k]`,
/// `b` `[k, n]`, `c` `[m, n]`.
///
/// # Panics
/// When the shapes do not chain. Layers check user-facing shapes before they get
/// here, so a panic is a bug in lasr, not bad input.
pub fn matmul(mut c: ArrayViewMut2<f32>, a: ArrayView2<f32>, b: ArrayView2<f32>, accumulate: bool) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert!(
        k == k2 && c.dim() == (m, n),
        "matmul: [{m}, {k}] x [{k2}, {n}] into {:?}",
        c.dim()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    let parallelism = if m * n * k >= PARALLEL_WORK && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let (cs, rs) = (c.strides()[1], c.strides()[0]);
    let (a_cs, a_rs) = (a.strides()[1], a.strides()[0]);
    let (b_cs, b_rs) = (b.strides()[1], b.strides()[0]);
    // SAFETY: the pointers and strides come from live ndarray views whose shapes were
    // checked above; `c` is borrowed mutably, so it aliases neither `a` nor `b`.
    // gemm's convention: dst = alpha * dst + beta * lhs * rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            cs,
            rs,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A row-major copy of `a.t()`, `[n, m]` from `[m, n]`, copied in cache-sized tiles
/// (ndarray's element-by-element copy of a transposed view is several times slower).
pub fn transpose(a: ArrayView2<f32>) -> ndarray::Array2<f32> {
    const TILE: usize = 32;
    let (m, n) = a.dim();
    let mut out = ndarray::Array2::<f32>::zeros((n, m));
    let dst = out.as_slice_mut().expect("fresh arrays are contiguous");
    for i0 in (0..m).step_by(TILE) {
        for j0 in (0..n).step_by(TILE) {
            for i in i0..(i0 + TILE).min(m) {
                for j in j0..(j0 + TILE).min(n) {
                    dst[j * m + i] = a[(i, j)];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, ShapeBuilder};

    fn naive(a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        let (m, k) = a.dim();
        let n = b.ncols();
        Array2::from_shape_fn((m, n), |(i, j)| (0..k).map(|p| a[(i, p)] * b[(p, j)]).sum())
    }

    #[test]
    fn matches_naive_product_for_transposed_and_strided_views() {
        let a = Array2::from_shape_fn((7, 13), |(i, j)| ((i * 13 + j) % 11) as f32 - 5.0);
        let b = Array2::from_shape_fn((13, 5), |(i, j)| ((i * 5 + j) % 7) as f32 * 0.5 - 1.0);
        let want = naive(&a, &b);
        let mut c = Array2::zeros((7, 5));
        matmul(c.view_mut(), a.view(), b.view(), false);
        assert_eq!(c, want);
        // Accumulate onto existing values.
        matmul(c.view_mut(), a.view(), b.view(), true);
        assert_eq!(c, &want * 2.0);
        // Transposed operands and a column-major destination.
        let at = a.t().to_owned();
        let bt = b.t().to_owned();
        let mut cf = Array2::zeros((7, 5).f());
        matmul(cf.view_mut(), at.t(), bt.t(), false);
        assert_eq!(cf, want);
        // A large product goes through the parallel path and still agrees.
        let a = Array2::from_shape_fn((160, 140), |(i, j)| ((i * 7 + j * 3) % 17) as f32 - 8.0);
        let b = Array2::from_shape_fn((140, 120), |(i, j)| ((i + 2 * j) % 5) as f32 - 2.0);
        let mut c = Array2::zeros((160, 120));
        matmul(c.view_mut(), a.view(), b.view(), false);
        assert_eq!(c, naive(&a, &b));
    }

    #[test]
    fn transpose_matches_ndarray() {
        for (m, n) in [(1, 1), (3, 70), (65, 33), (128, 96)] {
            let a = Array2::from_shape_fn((m, n), |(i, j)| (i * 1000 + j) as f32);
            assert_eq!(transpose(a.view()), a.t().to_owned());
            assert_eq!(transpose(a.t()), a);
        }
    }

    #[test]
    #[should_panic(expected = "matmul")]
    fn mismatched_shapes_panic_with_the_shapes() {
        let a = Array2::<f32>::zeros((2, 3));
        let b = Array2::<f32>::zeros((4, 2));
        let mut c = Array2::<f32>::zeros((2, 2));
        matmul(c.view_mut(), a.view(), b.view(), false);
    }
}
