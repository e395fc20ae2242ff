//! The kernel stage, shared by the backends: after the graph passes,
//! [`fusion`] partitions the optimized graph into kernels (elementwise
//! chains and reductions, matmuls, data movement) and [`memory`] plans one
//! arena for the values they write; [`loops`] lays out an elementwise
//! kernel's loop nest; [`consts`] holds the numbers every backend must
//! agree on (polynomial coefficients, the dropout hash). A backend (the CPU's `backend::cpu`
//! today, PTX next) renders and runs these kernels; it does not decide
//! them.

pub mod consts;
pub mod fusion;
pub mod loops;
pub mod memory;
