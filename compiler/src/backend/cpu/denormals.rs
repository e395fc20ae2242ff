//! Subnormal floats flushed to zero while kernels run (FTZ and DAZ on
//! x86-64, FZ on AArch64), as XLA and TensorFlow run their CPU kernels.
//!
//! Why: on many x86 cores an operation whose input or result is subnormal
//! takes a microcode assist of around a hundred cycles. Training makes such
//! values routinely: Adam's first moment decays by β₁ = 0.9 every step in
//! which a weight's gradient is zero (MNIST's rarely lit border pixels), and
//! can reach the subnormal range (below 1.18e−38) within several hundred
//! steps. On an Intel Xeon VM (Sapphire Rapids class), MNIST's MLP spent 63%
//! of its step in the Adam update of the first layer's 100k weights: 0.30 ms
//! a step, 0.043 ms with the flag set (`MODELC_PROFILE=1 cargo bench --bench
//! train_speed -- mnist_mlp`).
//!
//! What it changes: a result below 1.18e−38 in magnitude becomes ±0, and such
//! an input is read as ±0. The f64 reference interpreter does not flush;
//! the difference is below 1.2e−38 absolute per operation, far inside every
//! comparison's tolerance.
//!
//! The kernels' pool threads set the mode when they start and keep it (they
//! run nothing else); a thread that runs a step itself (the CLI's main
//! thread, adopted by the pool) sets it for the step and restores its own
//! mode after ([`Flushing`]).

/// The floating-point control bits this module sets.
#[cfg(target_arch = "x86_64")]
mod mode {
    /// MXCSR: flush-to-zero (bit 15) and denormals-are-zero (bit 6).
    const FLUSH: u32 = (1 << 15) | (1 << 6);

    pub fn get() -> u32 {
        let mut x: u32 = 0;
        // SAFETY: stores the 32-bit MXCSR into `x`.
        unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut x, options(nostack, preserves_flags)) };
        x
    }

    pub fn set(x: u32) {
        // SAFETY: loads a value read from MXCSR with only the flush bits
        // changed (setting a reserved bit would fault; these are defined on
        // every x86-64 core).
        unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &x, options(nostack, preserves_flags)) };
    }

    pub fn flushing(x: u32) -> u32 {
        x | FLUSH
    }
}

#[cfg(target_arch = "aarch64")]
mod mode {
    /// FPCR: flush-to-zero (bit 24).
    const FLUSH: u64 = 1 << 24;

    pub fn get() -> u64 {
        let x: u64;
        // SAFETY: reads FPCR.
        unsafe { std::arch::asm!("mrs {}, fpcr", out(reg) x, options(nomem, nostack, preserves_flags)) };
        x
    }

    pub fn set(x: u64) {
        // SAFETY: writes FPCR with only the flush bit changed.
        unsafe { std::arch::asm!("msr fpcr, {}", in(reg) x, options(nomem, nostack, preserves_flags)) };
    }

    pub fn flushing(x: u64) -> u64 {
        x | FLUSH
    }
}

/// Elsewhere: nothing to set (subnormals keep their IEEE meaning).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod mode {
    pub fn get() -> u32 {
        0
    }

    pub fn set(_: u32) {}

    pub fn flushing(x: u32) -> u32 {
        x
    }
}

/// Sets the calling thread's mode for good (a kernel pool thread's start).
pub fn flush_on_this_thread() {
    mode::set(mode::flushing(mode::get()));
}

/// The calling thread flushes subnormals until this drops, then has its
/// own mode back.
pub struct Flushing {
    saved: Saved,
}

#[cfg(target_arch = "aarch64")]
type Saved = u64;
#[cfg(not(target_arch = "aarch64"))]
type Saved = u32;

impl Flushing {
    pub fn start() -> Flushing {
        let saved = mode::get();
        mode::set(mode::flushing(saved));
        Flushing { saved }
    }
}

impl Drop for Flushing {
    fn drop(&mut self) {
        mode::set(self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `black_box` keeps the compiler from folding the products at compile
    /// time (which would not see the mode).
    fn tiny_product() -> f32 {
        std::hint::black_box(1e-20f32) * std::hint::black_box(1e-20f32)
    }

    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn subnormals_flush_while_flushing_and_not_after() {
        let before = tiny_product();
        assert!(before > 0.0 && before < f32::MIN_POSITIVE, "1e-40 is subnormal: {before:e}");
        {
            let _f = Flushing::start();
            assert_eq!(tiny_product(), 0.0);
            // Normal results are untouched.
            assert_eq!(std::hint::black_box(1e-19f32) * std::hint::black_box(1e-19f32), 1e-38f32);
        }
        assert_eq!(tiny_product(), before, "the thread's own mode is back");
    }
}
