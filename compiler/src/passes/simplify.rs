//! Algebraic simplification: one arm per identity, the identity as a comment.
//!
//! Rule: a rewrite never makes the graph costlier, and never changes a value
//! (so no `x·0 → 0`, which is wrong for x = ∞ or NaN) nor a type (an identity
//! applies only when the result has exactly the type of what replaces it).

use crate::ir::{BinaryOp as B, Graph, NodeId, Op, UnaryOp as U};

fn const_value(g: &Graph, id: NodeId) -> Option<f64> {
    match g.node(id).op {
        Op::Const { value } => Some(value),
        _ => None,
    }
}

/// What `id` simplifies to: an existing node, or a new node to build.
enum Rewrite {
    To(NodeId),
    New(Op, Vec<NodeId>),
}

fn rewrite(g: &Graph, id: NodeId) -> Option<Rewrite> {
    let node = g.node(id);
    let ins = g.inputs(id);
    let same_ty = |x: NodeId| g.ty(x) == &node.ty;
    let is = |x: NodeId, v: f64| const_value(g, x) == Some(v);
    match &node.op {
        Op::Binary { op } => {
            let (a, b) = (ins[0], ins[1]);
            match op {
                // x + 0 = x, 0 + x = x
                B::Add if is(b, 0.0) && same_ty(a) => Some(Rewrite::To(a)),
                B::Add if is(a, 0.0) && same_ty(b) => Some(Rewrite::To(b)),
                // x − 0 = x
                B::Sub if is(b, 0.0) && same_ty(a) => Some(Rewrite::To(a)),
                // x · 1 = x, 1 · x = x
                B::Mul if is(b, 1.0) && same_ty(a) => Some(Rewrite::To(a)),
                B::Mul if is(a, 1.0) && same_ty(b) => Some(Rewrite::To(b)),
                // x / 1 = x
                B::Div if is(b, 1.0) && same_ty(a) => Some(Rewrite::To(a)),
                // (x · c₁) · c₂ = x · (c₁c₂)
                B::Mul => {
                    let c2 = const_value(g, b)?;
                    let inner = g.node(a);
                    let Op::Binary { op: B::Mul } = inner.op else { return None };
                    let ia = g.inputs(a);
                    let c1 = const_value(g, ia[1])?;
                    (g.users(a).len() == 1).then(|| Rewrite::New(Op::Const { value: c1 * c2 }, vec![ia[0]]))
                }
                _ => None,
            }
        }
        // −(−x) = x
        Op::Unary { op: U::Neg } => {
            let x = ins[0];
            match g.node(x).op {
                Op::Unary { op: U::Neg } => Some(Rewrite::To(g.inputs(x)[0])),
                _ => None,
            }
        }
        // reshape(x) to x's own shape = x; reshape(reshape(x)) = reshape(x)
        Op::Reshape { shape } => {
            let x = ins[0];
            if g.ty(x) == &node.ty {
                return Some(Rewrite::To(x));
            }
            match g.node(x).op {
                Op::Reshape { .. } => Some(Rewrite::New(Op::Reshape { shape: shape.clone() }, vec![g.inputs(x)[0]])),
                _ => None,
            }
        }
        // permute by the identity = x; permute(permute(x, p), q) = permute(x, p∘q)
        Op::Permute { perm } => {
            let x = ins[0];
            if perm.iter().enumerate().all(|(i, p)| i == *p) {
                return Some(Rewrite::To(x));
            }
            match &g.node(x).op {
                Op::Permute { perm: inner } => {
                    let composed: Vec<usize> = perm.iter().map(|p| inner[*p]).collect();
                    Some(Rewrite::New(Op::Permute { perm: composed }, vec![g.inputs(x)[0]]))
                }
                _ => None,
            }
        }
        // expand(x, like) where x already has like's shape = x
        Op::Expand if same_ty(ins[0]) => Some(Rewrite::To(ins[0])),
        _ => None,
    }
}

/// Rewrites until no identity applies (a rewrite can expose another, as in
/// `((x·2)·3)·4`).
pub fn run(g: &mut Graph) -> bool {
    let mut changed = false;
    while round(g) {
        changed = true;
    }
    changed
}

fn round(g: &mut Graph) -> bool {
    let mut changed = false;
    for id in g.topo_order() {
        // A node nobody uses is left for DCE (rewriting it would change nothing).
        if g.users(id).is_empty() && !g.outputs.iter().any(|(_, o)| *o == id) {
            continue;
        }
        let Some(r) = rewrite(g, id) else { continue };
        let new = match r {
            Rewrite::To(x) => x,
            // The scale rewrite builds `x · c` from a constant and x.
            Rewrite::New(Op::Const { value }, ins) => {
                let ty = g.ty(id).clone();
                let c = g.add_typed(Op::Const { value }, crate::ir::Ty::scalar(), &[]);
                g.add_typed(Op::Binary { op: B::Mul }, ty, &[ins[0], c])
            }
            Rewrite::New(op, ins) => {
                let ty = g.ty(id).clone();
                g.add_typed(op, ty, &ins)
            }
        };
        let label = g.node(id).label.clone();
        g.replace_uses(id, new);
        if let (Some(l), None) = (label, g.node(new).label.clone()) {
            if !matches!(g.node(new).op, Op::Input { .. }) {
                g.set_label(new, &l);
            }
        }
        changed = true;
    }
    changed
}
