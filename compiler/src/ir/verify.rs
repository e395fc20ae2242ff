//! Verification: every node's stored type is what its op gives its operands,
//! the graph is acyclic, and every output exists. A failure is a compiler bug
//! and names the node.
//!
//! [`verify`] returns a [`VerifiedGraph`], the token a backend requires
//! (`backend::cpu::Program::new` takes nothing else): a graph no one
//! verified cannot be compiled. [`check`] verifies a graph its caller goes
//! on changing (tests after each pass, gradcheck).

use super::{infer, Graph, Op};

/// A graph [`verify`] accepted. `verify` is its only constructor; it gives
/// the graph to read (`Deref`) but not to change, so what a backend gets
/// is what was verified. [`VerifiedGraph::into_graph`] gives the graph back
/// and the proof up.
#[derive(Clone, Debug)]
pub struct VerifiedGraph(Graph);

impl std::ops::Deref for VerifiedGraph {
    type Target = Graph;
    fn deref(&self) -> &Graph {
        &self.0
    }
}

impl VerifiedGraph {
    pub fn into_graph(self) -> Graph {
        self.0
    }
}

/// Verifies `g` and wraps it as the token backends take.
pub fn verify(g: Graph) -> Result<VerifiedGraph, String> {
    check(&g)?;
    Ok(VerifiedGraph(g))
}

/// The first inconsistency found, as a message naming the node.
pub fn check(g: &Graph) -> Result<(), String> {
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
