//! Constant folding: an elementwise op whose operands are all scalar
//! constants becomes a constant.
//!
//! Folds only scalars (constants are scalars in this IR); does not fold ops
//! that depend on the batch size (`size_of`), and evaluates with the reference
//! interpreter so folded values are exactly what the graph would compute.

use std::collections::HashMap;

use crate::interp;
use crate::ir::{Graph, Op};

pub fn run(g: &mut Graph) -> bool {
    let mut changed = false;
    for id in g.topo_order() {
        let node = g.node(id);
        if !matches!(node.op, Op::Unary { .. } | Op::Binary { .. }) {
            continue;
        }
        let ins = g.inputs(id);
        if !ins.iter().all(|i| matches!(g.node(*i).op, Op::Const { .. })) {
            continue;
        }
        // Evaluate this one node on its constant operands.
        let mut sub = Graph::new();
        let args: Vec<_> = ins.iter().map(|i| sub.add_typed(g.node(*i).op.clone(), g.ty(*i).clone(), &[])).collect();
        let Ok(out) = sub.add(node.op.clone(), &args) else { continue };
        let Ok(vals) = interp::run(&sub, &HashMap::new()) else { continue };
        let value = vals[&out].data[0];
        let c = g.add_typed(Op::Const { value }, node.ty.clone(), &[]);
        g.replace_uses(id, c);
        g.remove(id);
        changed = true;
    }
    changed
}
