//! Backends over the kernel stage ([`crate::kernel`]): `cpu` compiles a
//! fused graph's kernels to native code (Cranelift for elementwise loops and
//! reductions, the `gemm` crate for matmuls, copy loops for data movement)
//! and runs them over one arena; `ptx` renders the same kernels as PTX for
//! NVIDIA GPUs (elementwise kernels today; no CUDA runtime yet).

pub mod cpu;
pub mod ptx;
