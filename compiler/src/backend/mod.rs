//! Code generation. `clif` lowers kernels to Cranelift and JIT-compiles them
//! (the CPU backend, in progress); PTX comes later.

pub mod clif;
pub mod cpu;
