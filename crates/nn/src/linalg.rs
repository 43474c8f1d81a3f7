//! Matrix products through the `gemm` crate (AVX-512, AVX2 or scalar kernels chosen at
//! run time), on `ndarray` views of any strides, so transposes cost nothing.

use std::cell::Cell;

use ndarray::{ArrayView2, ArrayViewMut2};

/// Products at least this large (m * n * k) are split across the rayon pool; smaller
/// ones lose more to synchronisation than they gain. The per-step recurrent products
/// (8 x 256 x 1024 = 2^21) must stay below: splitting them made the listener slower.
pub(crate) const PARALLEL_WORK: usize = 1 << 24;

thread_local! {
    /// Set by [`serial`]: this thread's products stay on it.
    static SERIAL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every [`matmul`] on this thread computed on this thread alone, not
/// spread over the rayon pool: for threads that already keep a core each busy (the
/// members of a [`Team`](crate::team::Team)), where the pool's threads would only
/// compete with them for the cores.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the thread's setting, also when `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|s| s.replace(true)));
    f()
}

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
    let parallelism = if m * n * k >= PARALLEL_WORK
        && rayon::current_num_threads() > 1
        && !SERIAL.with(Cell::get)
    {
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

/// `y += w · x` for one vector: `w` `[N, K]` with contiguous rows (the layout weights
/// are stored in), `x` `[K]`, `y` `[N]`.
///
/// Inference runs one sequence at a time, where the per-step recurrent product has a
/// single row and gemm's general kernels lose to reading each weight row once as a dot
/// product; no transposed copy of the weights is needed either.
///
/// # Panics
/// When the shapes do not chain or `w`'s rows are not contiguous and in ascending
/// order (a bug in lasr: the
/// weights are owned, row-major arrays).
pub fn gemv_acc(y: &mut [f32], w: ArrayView2<f32>, x: &[f32]) {
    let (n, k) = w.dim();
    assert!(
        y.len() == n && x.len() == k && (w.strides()[1] == 1 || k <= 1) && w.strides()[0] >= 0,
        "gemv: [{n}, {k}] x [{}] into [{}]",
        x.len(),
        y.len()
    );
    if n == 0 || k == 0 {
        return;
    }
    let stride = w.strides()[0] as usize;
    // SAFETY: rows of `w` are `k` contiguous floats a non-negative `stride` apart
    // (checked above).
    let row = |j: usize| unsafe { std::slice::from_raw_parts(w.as_ptr().add(j * stride), k) };
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx512() {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { gemv_avx512(y, &row, x) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { gemv_avx2(y, &row, x) };
    }
    gemv_impl(y, &row, x)
}

/// Eight rows at a time, one 16-lane accumulator each, every chunk of `x` loaded once
/// for the eight; the last partial chunk through a masked load. Written with
/// intrinsics because the portable loop below keeps some accumulators on the stack.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gemv_avx512<'a>(y: &mut [f32], row: &dyn Fn(usize) -> &'a [f32], x: &[f32]) {
    use std::arch::x86_64::*;
    const R: usize = 8;
    let (n, k) = (y.len(), x.len());
    let body = k - k % 16;
    let tail: __mmask16 = ((1u32 << (k % 16)) - 1) as __mmask16;
    let xp = x.as_ptr();
    let mut j = 0;
    while j + R <= n {
        let rows: [*const f32; R] = std::array::from_fn(|r| row(j + r).as_ptr());
        let mut acc = [_mm512_setzero_ps(); R];
        let mut p = 0;
        while p < body {
            // SAFETY: `p + 16 <= k`, the length of `x` and of every row.
            let xv = _mm512_loadu_ps(xp.add(p));
            for r in 0..R {
                acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(rows[r].add(p)), xv, acc[r]);
            }
            p += 16;
        }
        if tail != 0 {
            // SAFETY: masked lanes are not read.
            let xv = _mm512_maskz_loadu_ps(tail, xp.add(body));
            for r in 0..R {
                let w = _mm512_maskz_loadu_ps(tail, rows[r].add(body));
                acc[r] = _mm512_fmadd_ps(w, xv, acc[r]);
            }
        }
        for r in 0..R {
            y[j + r] += _mm512_reduce_add_ps(acc[r]);
        }
        j += R;
    }
    for (jj, out) in y.iter_mut().enumerate().skip(j) {
        *out += row(jj).iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_avx2<'a>(y: &mut [f32], row: &dyn Fn(usize) -> &'a [f32], x: &[f32]) {
    gemv_impl(y, row, x)
}

/// Eight rows at a time, each with 16 lane-wise partial sums: enough independent
/// accumulators to hide the FMA latency, and each chunk of `x` is loaded once for
/// eight rows.
#[inline(always)]
fn gemv_impl<'a>(y: &mut [f32], row: &dyn Fn(usize) -> &'a [f32], x: &[f32]) {
    const R: usize = 8;
    const L: usize = 16;
    let (n, k) = (y.len(), x.len());
    let body = k - k % L;
    let mut j = 0;
    while j + R <= n {
        let rows: [&[f32]; R] = std::array::from_fn(|r| row(j + r));
        let mut acc = [[0f32; L]; R];
        let mut p = 0;
        while p < body {
            let xc: &[f32; L] = x[p..p + L].try_into().expect("L floats");
            for r in 0..R {
                let wc: &[f32; L] = rows[r][p..p + L].try_into().expect("L floats");
                for l in 0..L {
                    acc[r][l] = wc[l].mul_add(xc[l], acc[r][l]);
                }
            }
            p += L;
        }
        for r in 0..R {
            let mut sum: f32 = acc[r].iter().sum();
            for q in body..k {
                sum = rows[r][q].mul_add(x[q], sum);
            }
            y[j + r] += sum;
        }
        j += R;
    }
    for (jj, out) in y.iter_mut().enumerate().skip(j) {
        *out += row(jj).iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
    }
}

/// A row-major copy of `a.t()`, `[n, m]` from `[m, n]`, copied in cache-sized tiles
/// (ndarray's element-by-element copy of a transposed view is several times slower).
pub fn transpose(a: ArrayView2<f32>) -> ndarray::Array2<f32> {
    const TILE: usize = 32;
    let (m, n) = a.dim();
    let mut out = ndarray::Array2::<f32>::zeros((n, m));
    let dst = out.as_slice_mut().expect("fresh arrays are contiguous");
    if let Some(src) = a.as_slice() {
        // Row-major input (every weight matrix): plain slices, so the inner loop has
        // no stride arithmetic and writes one contiguous run of the output row.
        for i0 in (0..m).step_by(TILE) {
            let rows = &src[i0 * n..(i0 + TILE).min(m) * n];
            for j0 in (0..n).step_by(TILE) {
                for j in j0..(j0 + TILE).min(n) {
                    let out_row = &mut dst[j * m + i0..j * m + i0 + rows.len() / n];
                    for (o, row) in out_row.iter_mut().zip(rows.chunks_exact(n)) {
                        *o = row[j];
                    }
                }
            }
        }
        return out;
    }
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
    fn gemv_matches_f64_product_for_any_shape() {
        for (n, k) in [
            (1, 1),
            (3, 5),
            (8, 16),
            (17, 33),
            (64, 256),
            (1024, 256),
            (9, 1),
        ] {
            // A column slice leaves rows contiguous but `stride` apart.
            let big = Array2::from_shape_fn((n, k + 3), |(i, j)| {
                ((i * 31 + j * 17) % 23) as f32 * 0.1 - 1.1
            });
            let w = big.slice(ndarray::s![.., 1..k + 1]);
            let x: Vec<f32> = (0..k).map(|i| ((i * 7) % 13) as f32 * 0.2 - 1.3).collect();
            let mut y: Vec<f32> = (0..n).map(|i| i as f32).collect();
            gemv_acc(&mut y, w, &x);
            for (i, &got) in y.iter().enumerate() {
                let want = i as f64
                    + (0..k)
                        .map(|p| f64::from(w[(i, p)]) * f64::from(x[p]))
                        .sum::<f64>();
                assert!(
                    (f64::from(got) - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "[{n}, {k}] row {i}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "gemv")]
    fn gemv_refuses_rows_in_descending_order() {
        let w = Array2::<f32>::ones((3, 4));
        let mut y = vec![0.0; 3];
        gemv_acc(&mut y, w.slice(ndarray::s![..;-1, ..]), &[1.0; 4]);
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
