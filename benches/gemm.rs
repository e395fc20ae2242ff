//! The `gemm` crate on the matmuls of the 784-1024-1024-10 MLP at batch 256
//! (every layout the training step uses), of cnn_wide's second convolution
//! and of char_gpt's dense layers, GFLOP/s with all threads, with one, and
//! with the contraction split between two single-threaded halves (what the
//! CPU executor does for a long k and a small output: `splits_k`).
//! Run: `cargo bench --bench gemm`.

use std::time::Instant;

use gemm::{gemm, Parallelism};

/// C[m, n] = op(A)·op(B); A stored [m, k] (or [k, m] when `ta`), B stored
/// [k, n] (or [n, k] when `tb`).
fn run(m: usize, n: usize, k: usize, ta: bool, tb: bool, par: Parallelism) -> f64 {
    run_into(m, n, k, ta, tb, par, false)
}

/// As [`run`]; with `out_t` the product is written transposed (row stride
/// 1, column stride m), as a matmul computed transposed would write its
/// output straight into place.
fn run_into(m: usize, n: usize, k: usize, ta: bool, tb: bool, par: Parallelism, out_t: bool) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let lhs = if ta { (1, m as isize) } else { (k as isize, 1) };
    let rhs = if tb { (1, k as isize) } else { (n as isize, 1) };
    // (column stride, row stride) of the output.
    let dst = if out_t { (m as isize, 1) } else { (1, n as isize) };
    let mut once = || unsafe {
        gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            dst.0,
            dst.1,
            false,
            a.as_ptr(),
            lhs.1,
            lhs.0,
            b.as_ptr(),
            rhs.1,
            rhs.0,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    };
    for _ in 0..3 {
        once();
    }
    let reps = (2e9 / (2.0 * (m * n * k) as f64)).ceil() as usize;
    let t = Instant::now();
    for _ in 0..reps {
        once();
    }
    2.0 * (m * n * k * reps) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// As [`run`] with all threads, k split in two halves computed at once
/// (each single-threaded), the second into a scratch added after.
fn run_split_k(m: usize, n: usize, k: usize, ta: bool, tb: bool) -> f64 {
    /// A pointer that crosses to the other thread.
    #[derive(Clone, Copy)]
    struct Q(*mut f32);
    // SAFETY: each half writes only its own matrix.
    unsafe impl Send for Q {}
    unsafe impl Sync for Q {}
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let mut s = vec![0.0f32; m * n];
    let lhs: (isize, isize) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let rhs: (isize, isize) = if tb { (1, k as isize) } else { (n as isize, 1) };
    let h = k / 2;
    let (pc, ps) = (Q(c.as_mut_ptr()), Q(s.as_mut_ptr()));
    let (pa, pb) = (Q(a.as_ptr() as *mut f32), Q(b.as_ptr() as *mut f32));
    // SAFETY: the second half starts h columns into A and h rows into B.
    let (pa2, pb2) = unsafe { (Q(pa.0.offset(h as isize * lhs.1)), Q(pb.0.offset(h as isize * rhs.0))) };
    let half = |a: Q, b: Q, c: Q, k: usize| unsafe {
        gemm(
            m,
            n,
            k,
            c.0,
            1,
            n as isize,
            false,
            a.0,
            lhs.1,
            lhs.0,
            b.0,
            rhs.1,
            rhs.0,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    };
    let once = || {
        rayon::join(|| half(pa, pb, pc, h), || half(pa2, pb2, ps, k - h));
        // SAFETY: both hold m·n floats; the halves are done.
        let (c, s) = unsafe { (std::slice::from_raw_parts_mut(pc.0, m * n), std::slice::from_raw_parts(ps.0, m * n)) };
        for (c, s) in c.iter_mut().zip(s) {
            *c += *s;
        }
    };
    for _ in 0..3 {
        once();
    }
    let reps = (2e9 / (2.0 * (m * n * k) as f64)).ceil() as usize;
    let t = Instant::now();
    for _ in 0..reps {
        once();
    }
    2.0 * (m * n * k * reps) as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let threads = rayon::current_num_threads();
    println!("{:<34} {:>10} {:>10} {:>10}", "C = op(A)·op(B)", format!("{threads} thr"), "1 thr", "k split");
    for (name, m, n, k, ta, tb) in [
        ("x·W1ᵀ  [256,784]·[1024,784]ᵀ", 256, 1024, 784, false, true),
        ("h·W2ᵀ  [256,1024]·[1024,1024]ᵀ", 256, 1024, 1024, false, true),
        ("dy·W2  [256,1024]·[1024,1024]", 256, 1024, 1024, false, false),
        ("dyᵀ·h  [256,1024]ᵀ·[256,1024]", 1024, 1024, 256, true, false),
        ("dyᵀ·x  [256,1024]ᵀ·[256,784]", 1024, 784, 256, true, false),
        ("square 1024, no transposes", 1024, 1024, 1024, false, false),
        // Feature-major activations (yᵀ = W·xᵀ): what a layout pass would use.
        ("W1·xᵀ  [1024,784]·[256,784]ᵀ", 1024, 256, 784, false, true),
        ("W2·h1ᵀ [1024,1024]·[1024,256]", 1024, 256, 1024, false, false),
        ("W2ᵀ·dyᵀ [1024,1024]ᵀ·[1024,256]", 1024, 256, 1024, true, false),
        ("dyᵀ·h1 [1024,256]·[1024,256]ᵀ", 1024, 1024, 256, false, true),
        // cnn_wide's second convolution (64 images, 32→64 channels, 3×3,
        // 14×14): one image's product as the step runs it today (channel-major
        // columns), and the whole batch's as one product (pixel-major columns).
        ("conv W·col [64,288]·[288,196]", 64, 196, 288, false, false),
        ("conv dW=dy·colᵀ [64,196]·[288,196]ᵀ", 64, 288, 196, false, true),
        ("conv dcol=Wᵀ·dy [64,288]ᵀ·[64,196]", 288, 196, 64, true, false),
        ("conv colᵀ·Wᵀ [12544,288]·[64,288]ᵀ", 12544, 64, 288, false, true),
        ("conv dW=dyᵀ·colᵀ [12544,64]ᵀ·[12544,288]", 64, 288, 12544, true, false),
        ("conv dcolᵀ=dyᵀ·W [12544,64]·[64,288]", 12544, 288, 64, false, false),
        // char_gpt at batch 32 (4,096 positions): the forward product of the
        // first MLP layer, and the weight gradients (the batch folded into k).
        ("gpt x·W1ᵀ [4096,128]·[512,128]ᵀ", 4096, 512, 128, false, true),
        ("gpt dW1=dyᵀ·x [4096,512]ᵀ·[4096,128]", 512, 128, 4096, true, false),
        ("gpt dW2=dyᵀ·h [4096,128]ᵀ·[4096,512]", 128, 512, 4096, true, false),
        ("gpt dWqkv=dyᵀ·x [4096,384]ᵀ·[4096,128]", 384, 128, 4096, true, false),
    ] {
        let all = run(m, n, k, ta, tb, Parallelism::Rayon(threads));
        let one = run(m, n, k, ta, tb, Parallelism::None);
        let split = run_split_k(m, n, k, ta, tb);
        println!("{name:<34} {all:>10.1} {one:>10.1} {split:>10.1}");
    }
    // mlp_large's first layer computed transposed (W1·xᵀ, the fast layout),
    // its product written transposed into place by output strides.
    let (all, one) = (
        run_into(1024, 256, 784, false, true, Parallelism::Rayon(threads), true),
        run_into(1024, 256, 784, false, true, Parallelism::None, true),
    );
    println!("{:<34} {all:>10.1} {one:>10.1}", "W1·xᵀ written transposed");
}
