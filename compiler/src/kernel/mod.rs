//! The kernel stage, shared by the backends: after the graph passes,
//! [`fusion`] partitions the optimized graph into kernels (elementwise
//! chains and reductions, matmuls, data movement) and [`memory`] plans one
//! arena for the values they write; [`loops`] lays out an elementwise
//! kernel's loop nest; [`consts`] holds the numbers every backend must
//! agree on (polynomial coefficients, the dropout hash); [`layout`] decides
//! where values live at a batch size (feedback in place or copied back,
//! arena offsets, views) and the gemm calls of a matmul. A backend (the CPU's `backend::cpu`
//! today, PTX next) renders and runs these kernels; it does not decide
//! them.

pub mod consts;
pub mod fusion;
pub mod layout;
pub mod loops;
pub mod memory;
