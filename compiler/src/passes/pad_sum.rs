//! Pad sums: a sum of pads along one axis whose ranges tile it, each pad
//! used only by the sum, is a concatenation of the padded values:
//! `pad(a, 0, 256) + pad(b, 128, 128) + pad(c, 256, 0) = concat(a, b, c)`.
//! Autodiff makes these sums from the gradient of slices (an attention
//! layer's packed query/key/value projection): the concat writes the result
//! once, where the pads wrote three mostly-zero tensors for an add to read.
//!
//! Rewrites only exact tilings (no gap, no overlap, every term a pad of the
//! sum's type); the replaced nodes are left for DCE.

use crate::ir::{BinaryOp, Dim, Graph, NodeId, Op};

/// The terms of the sum rooted at `id`: adds used only inside the tree are
/// opened; anything else is a term.
fn terms(g: &Graph, id: NodeId, root: bool, out: &mut Vec<NodeId>) {
    let opens = matches!(g.node(id).op, Op::Binary { op: BinaryOp::Add })
        && (root || (g.users(id).len() == 1 && !g.outputs.iter().any(|(_, o)| *o == id)));
    if opens {
        for x in g.inputs(id) {
            terms(g, x, false, out);
        }
    } else {
        out.push(id);
    }
}

/// `concat(values)` along `axis` when the sum at `id` is a tiling of pads.
fn tiling(g: &Graph, id: NodeId) -> Option<(usize, Vec<NodeId>)> {
    let mut ts = Vec::new();
    terms(g, id, true, &mut ts);
    if ts.len() < 2 {
        return None;
    }
    let ty = g.ty(id);
    let mut axis = None;
    let mut ranges = Vec::new();
    for t in &ts {
        let Op::Pad { axis: a, before, after } = g.node(*t).op else { return None };
        if g.ty(*t) != ty || *axis.get_or_insert(a) != a || g.users(*t).len() != 1 {
            return None;
        }
        if g.outputs.iter().any(|(_, o)| o == t) {
            return None;
        }
        let Dim::Fixed(size) = ty.shape.0[a] else { return None };
        ranges.push((before, size - after, g.inputs(*t)[0], size));
    }
    ranges.sort();
    let size = ranges[0].3;
    let mut at = 0;
    for (start, end, _, _) in &ranges {
        if *start != at {
            return None;
        }
        at = *end;
    }
    (at == size).then(|| (axis.expect("a term"), ranges.into_iter().map(|r| r.2).collect()))
}

pub fn run(g: &mut Graph) -> bool {
    let mut changed = false;
    for id in g.topo_order() {
        if !matches!(g.node(id).op, Op::Binary { op: BinaryOp::Add }) {
            continue;
        }
        let Some((axis, parts)) = tiling(g, id) else { continue };
        let ty = g.ty(id).clone();
        g.replace_with(id, Op::Concat { axis }, ty, &parts);
        changed = true;
    }
    changed
}
