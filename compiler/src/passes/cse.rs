//! Common-subexpression elimination: two nodes with the same op (attributes
//! included) on the same operands become one.
//!
//! Every op is pure (dropout masks are a function of their seed input), so
//! any duplicate may merge. Inputs never merge: two inputs are two values.
//! Does not reorder operands of commutative ops (`a + b` and `b + a` stay two
//! nodes).

use std::collections::HashMap;

use crate::ir::{Graph, Op};

pub fn run(g: &mut Graph) -> bool {
    let mut seen: HashMap<(String, Vec<usize>), crate::ir::NodeId> = HashMap::new();
    let mut changed = false;
    for id in g.topo_order() {
        let node = g.node(id);
        if matches!(node.op, Op::Input { .. }) {
            continue;
        }
        // Debug of an f64 is its shortest round-trip text: equal keys, equal values.
        let key = (format!("{:?}", node.op), g.inputs(id).iter().map(|i| i.index()).collect());
        match seen.get(&key) {
            Some(first) => {
                let first = *first;
                g.replace_uses(id, first);
                g.remove(id);
                changed = true;
            }
            None => {
                seen.insert(key, id);
            }
        }
    }
    changed
}
