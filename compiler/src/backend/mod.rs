//! Backends over the kernel stage ([`crate::kernel`]): `cpu` compiles a
//! fused graph's kernels to native code (Cranelift for elementwise loops and
//! reductions, the `gemm` crate for matmuls, copy loops for data movement)
//! and runs them over one arena; `ptx` renders the same kernels as PTX for
//! NVIDIA GPUs; `cuda` loads that PTX through the CUDA driver (loaded at run
//! time), runs matmuls through cuBLAS, and runs the whole step on the GPU.

pub mod cpu;
pub mod cuda;
pub mod ptx;
