//! Dead-code elimination: removes every node that no output depends on.
//!
//! Does not remove graph inputs, even unused ones: they are the graph's
//! interface (the runtime feeds every parameter), and an unused input costs
//! nothing.

use std::collections::HashSet;

use crate::ir::{Graph, Op};

pub fn run(g: &mut Graph) -> bool {
    let mut live: HashSet<_> = g.outputs.iter().map(|(_, id)| *id).collect();
    let mut stack: Vec<_> = live.iter().copied().collect();
    while let Some(id) = stack.pop() {
        for i in g.inputs(id) {
            if live.insert(i) {
                stack.push(i);
            }
        }
    }
    let dead: Vec<_> = g.ids().filter(|id| !live.contains(id) && !matches!(g.node(*id).op, Op::Input { .. })).collect();
    for id in &dead {
        g.remove(*id);
    }
    !dead.is_empty()
}
