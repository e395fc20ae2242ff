//! Transpose folding: a matmul operand that is a permutation swapping the last
//! two axes becomes a transpose flag of the matmul, so no transposed copy is
//! ever made (the GEMM reads the operand with swapped strides).
//!
//! Folds only that exact permutation; the permute node itself is left for DCE
//! (other users may still need it).

use crate::ir::{Graph, Op};

pub fn run(g: &mut Graph) -> bool {
    let mut changed = false;
    for id in g.topo_order() {
        let Op::MatMul { ta, tb } = g.node(id).op else { continue };
        let ins = g.inputs(id);
        let swapped = |x| match &g.node(x).op {
            Op::Permute { perm } => {
                let r = perm.len();
                r >= 2
                    && perm[..r - 2].iter().enumerate().all(|(i, p)| i == *p)
                    && perm[r - 2] == r - 1
                    && perm[r - 1] == r - 2
            }
            _ => false,
        };
        let (fa, fb) = (swapped(ins[0]), swapped(ins[1]));
        if !fa && !fb {
            continue;
        }
        let a = if fa { g.inputs(ins[0])[0] } else { ins[0] };
        let b = if fb { g.inputs(ins[1])[0] } else { ins[1] };
        let op = Op::MatMul { ta: ta ^ fa, tb: tb ^ fb };
        let ty = g.ty(id).clone();
        let new = g.add_typed(op, ty, &[a, b]);
        if let Some(l) = g.node(id).label.clone() {
            g.set_label(new, &l);
        }
        g.replace_uses(id, new);
        g.remove(id);
        changed = true;
    }
    changed
}
