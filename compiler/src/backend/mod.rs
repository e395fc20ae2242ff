//! Code generation for the CPU: `clif` lowers elementwise kernels to
//! Cranelift and JIT-compiles them; `cpu` builds the compiled program
//! (Cranelift kernels, `gemm` calls, copy loops) the runtime executes.
//! There is no GPU (PTX) backend yet.

pub mod clif;
pub mod cpu;
