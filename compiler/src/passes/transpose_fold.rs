//! Transpose folding: a matmul operand that is a permutation swapping the last
//! two axes becomes a transpose flag of the matmul, so no transposed copy is
//! ever made (the GEMM reads the operand with swapped strides).
//!
//! The other way round, the transpose of a matmul's result that nothing else
//! uses is the matmul with operands swapped: (op(A)·op(B))ᵀ = op(B)ᵀ·op(A)ᵀ
//! (weight gradients come out of autodiff as `permute(matmul[aᵀb](x, dy))`).
//!
//! Folds only that exact permutation; the permute node itself is left for DCE
//! (other users may still need it).

use crate::ir::{Graph, NodeId, Op};

/// Whether `x` is a permute swapping the last two axes.
fn swaps_last_two(g: &Graph, x: NodeId) -> bool {
    match &g.node(x).op {
        Op::Permute { perm } => {
            let r = perm.len();
            r >= 2
                && perm[..r - 2].iter().enumerate().all(|(i, p)| i == *p)
                && perm[r - 2] == r - 1
                && perm[r - 1] == r - 2
        }
        _ => false,
    }
}

pub fn run(g: &mut Graph) -> bool {
    let mut changed = false;
    for id in g.topo_order() {
        if swaps_last_two(g, id) {
            let m = g.inputs(id)[0];
            if let Op::MatMul { ta, tb } = g.node(m).op {
                if g.users(m).len() == 1 && !g.outputs.iter().any(|(_, o)| *o == m) {
                    let ins = g.inputs(m);
                    let ty = g.ty(id).clone();
                    g.replace_with(id, Op::MatMul { ta: !tb, tb: !ta }, ty, &[ins[1], ins[0]]);
                    changed = true;
                }
            }
            continue;
        }
        let Op::MatMul { ta, tb } = g.node(id).op else { continue };
        let ins = g.inputs(id);
        let (fa, fb) = (swaps_last_two(g, ins[0]), swaps_last_two(g, ins[1]));
        if !fa && !fb {
            continue;
        }
        let a = if fa { g.inputs(ins[0])[0] } else { ins[0] };
        let b = if fb { g.inputs(ins[1])[0] } else { ins[1] };
        let op = Op::MatMul { ta: ta ^ fa, tb: tb ^ fb };
        let ty = g.ty(id).clone();
        g.replace_with(id, op, ty, &[a, b]);
        changed = true;
    }
    changed
}
