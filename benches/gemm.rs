//! The `gemm` crate on the matmuls of the 784-1024-1024-10 MLP at batch 256
//! (every layout the training step uses), of cnn_wide's second convolution
//! and of char_gpt's dense layers, GFLOP/s with all threads, with one, and
//! with the contraction split between two single-threaded halves (what the
//! CPU executor does for a long k and a small output: `splits_k`).
//! Run: `cargo bench --bench gemm`.

use std::time::Instant;

use gemm::{gemm, Parallelism};

/// A pointer that crosses to the other thread of a split product.
#[derive(Clone, Copy)]
struct Q(*mut f32);
// SAFETY: each half of a split product writes only its own matrix.
unsafe impl Send for Q {}
unsafe impl Sync for Q {}

/// c = A·B over k of the contraction: A with (row, column) strides `lhs`,
/// B with `rhs`, c with `dst`.
///
/// # Safety
/// The strides describe matrices inside the buffers; c overlaps neither.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    a: Q,
    lhs: (isize, isize),
    b: Q,
    rhs: (isize, isize),
    c: Q,
    dst: (isize, isize),
    par: Parallelism,
) {
    gemm(m, n, k, c.0, dst.1, dst.0, false, a.0, lhs.1, lhs.0, b.0, rhs.1, rhs.0, 0.0, 1.0, false, false, false, par)
}

/// GFLOP/s of `once`, an m×n×k product: three warm-up calls, then as many
/// as make 2 GFLOP.
fn gflops(m: usize, n: usize, k: usize, mut once: impl FnMut()) -> f64 {
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

/// The operands of an m×n×k product, A stored [m, k] (or [k, m] when `ta`),
/// B stored [k, n] (or [n, k] when `tb`), with their (row, column) strides.
struct Operands {
    a: Vec<f32>,
    lhs: (isize, isize),
    b: Vec<f32>,
    rhs: (isize, isize),
}

fn operands(m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Operands {
    let lhs = if ta { (1, m as isize) } else { (k as isize, 1) };
    let rhs = if tb { (1, k as isize) } else { (n as isize, 1) };
    Operands { a: vec![0.5f32; m * k], lhs, b: vec![0.25f32; k * n], rhs }
}

/// C[m, n] = op(A)·op(B) (see [`operands`]).
fn run(m: usize, n: usize, k: usize, ta: bool, tb: bool, par: Parallelism) -> f64 {
    run_into(m, n, k, ta, tb, par, false)
}

/// As [`run`]; with `out_t` the product is written transposed (row stride
/// 1, column stride m), as a matmul computed transposed would write its
/// output straight into place.
fn run_into(m: usize, n: usize, k: usize, ta: bool, tb: bool, par: Parallelism, out_t: bool) -> f64 {
    let Operands { a, lhs, b, rhs } = operands(m, n, k, ta, tb);
    let mut c = vec![0.0f32; m * n];
    let dst = if out_t { (1, m as isize) } else { (n as isize, 1) };
    let (pa, pb, pc) = (Q(a.as_ptr() as *mut f32), Q(b.as_ptr() as *mut f32), Q(c.as_mut_ptr()));
    // SAFETY: the operands and c hold the matrices the strides describe.
    gflops(m, n, k, || unsafe { product((m, n, k), pa, lhs, pb, rhs, pc, dst, par) })
}

/// As [`run`] with all threads, k split in two halves computed at once
/// (each single-threaded), the second into a scratch added after.
fn run_split_k(m: usize, n: usize, k: usize, ta: bool, tb: bool) -> f64 {
    let Operands { a, lhs, b, rhs } = operands(m, n, k, ta, tb);
    let mut c = vec![0.0f32; m * n];
    let mut s = vec![0.0f32; m * n];
    let h = k / 2;
    let (pc, ps) = (Q(c.as_mut_ptr()), Q(s.as_mut_ptr()));
    let (pa, pb) = (Q(a.as_ptr() as *mut f32), Q(b.as_ptr() as *mut f32));
    // SAFETY: the second half starts h columns into A and h rows into B.
    let (pa2, pb2) = unsafe { (Q(pa.0.offset(h as isize * lhs.1)), Q(pb.0.offset(h as isize * rhs.0))) };
    let rows = (n as isize, 1);
    gflops(m, n, k, || {
        // SAFETY: each half writes its own m×n matrix.
        rayon::join(
            || unsafe { product((m, n, h), pa, lhs, pb, rhs, pc, rows, Parallelism::None) },
            || unsafe { product((m, n, k - h), pa2, lhs, pb2, rhs, ps, rows, Parallelism::None) },
        );
        // SAFETY: both hold m·n floats; the halves are done.
        let (c, s) = unsafe { (std::slice::from_raw_parts_mut(pc.0, m * n), std::slice::from_raw_parts(ps.0, m * n)) };
        for (c, s) in c.iter_mut().zip(s) {
            *c += *s;
        }
    })
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
