//! Graph optimizations. Each pass is a free function in its own file, takes
//! the graph and says whether it changed anything; [`optimize`] lists them in
//! the order they run. Tests re-verify the graph after every pass, check that
//! each pass is idempotent, and that the optimized graph computes what the
//! unoptimized one does (in the reference interpreter, to 1e-12).
//!
//! After the graph passes, the kernel stage ([`crate::kernel`]) partitions
//! the graph into kernels and plans their memory.

pub mod constant_fold;
pub mod cse;
pub mod dce;
pub mod pad_sum;
pub mod simplify;
pub mod transpose_fold;

use crate::ir::Graph;

/// The passes, in order. Runs the list until nothing changes (at most a few
/// rounds: every pass only shrinks the graph or keeps it).
pub fn optimize(g: &mut Graph) {
    for _ in 0..8 {
        let mut changed = false;
        changed |= constant_fold::run(g);
        changed |= simplify::run(g);
        changed |= cse::run(g);
        changed |= transpose_fold::run(g);
        changed |= pad_sum::run(g);
        changed |= dce::run(g);
        if !changed {
            break;
        }
    }
}

/// A pass: rewrites the graph, says whether it changed anything.
pub type Pass = fn(&mut Graph) -> bool;

/// Each pass by name, for the tests.
pub const PASSES: &[(&str, Pass)] = &[
    ("constant_fold", constant_fold::run),
    ("simplify", simplify::run),
    ("cse", cse::run),
    ("transpose_fold", transpose_fold::run),
    ("pad_sum", pad_sum::run),
    ("dce", dce::run),
];
