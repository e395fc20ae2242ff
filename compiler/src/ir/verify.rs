//! Verification: every node's stored type is what its op gives its operands,
//! the graph is acyclic, and every output exists. A failure is a compiler bug
//! and names the node.

use super::{infer, Graph, Op};

/// The first inconsistency found, as a message naming the node.
pub fn verify(g: &Graph) -> Result<(), String> {
    let order = g.topo_order();
    if order.len() != g.len() {
        return Err("compiler bug: the graph has a cycle".into());
    }
    let (_, num) = super::print::numbering(g);
    for id in &order {
        let n = g.node(*id);
        if matches!(n.op, Op::Input { .. }) {
            if !g.inputs(*id).is_empty() {
                return Err(format!("compiler bug: input %{} has operands", num[id]));
            }
            continue;
        }
        let ins = g.inputs(*id);
        let tys: Vec<_> = ins.iter().map(|i| g.ty(*i)).collect();
        match infer(&n.op, &tys) {
            Ok(t) if t == n.ty => {}
            Ok(t) => {
                return Err(format!(
                    "compiler bug: %{} ({}) is typed {} but its operands give {t}",
                    num[id],
                    n.op.name(),
                    n.ty
                ))
            }
            Err(e) => return Err(format!("compiler bug: %{} ({}): {e}", num[id], n.op.name())),
        }
    }
    for (name, id) in &g.outputs {
        if !num.contains_key(id) {
            return Err(format!("compiler bug: output {name} names a removed node"));
        }
    }
    Ok(())
}
