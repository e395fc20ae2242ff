//! Memory planning: one arena for every value a kernel writes, offsets chosen
//! by liveness so that buffers whose lifetimes do not overlap share memory.
//!
//! A value lives from the kernel that writes it to the last kernel that reads
//! it (graph outputs to the end). Reshapes and stop-gradients alias their
//! operand's buffer.
//! Greedy first-fit, largest buffers first (the heuristic of TFLite's and
//! XLA's planners). An elementwise kernel may write in place over an operand
//! of the same size that dies in that kernel (every element is read before it
//! is written at the same index). Inputs (parameters, batch, state) live
//! outside the arena (owned by the program or bound by the caller) and are
//! not planned.
//!
//! Sizes depend on the batch: the plan is made for one batch size.

use std::collections::HashMap;

use serde::Serialize;

use super::fusion::{Kernel, KernelKind};
use crate::ir::{Dim, Graph, NodeId, Op};

#[derive(Clone, Debug, Serialize)]
pub struct Buffer {
    /// The value's node number in the canonical text form.
    pub value: usize,
    pub offset: u64,
    pub bytes: u64,
    /// First and last kernel (by index) during which it must stay.
    pub live: (usize, usize),
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub batch: u64,
    pub buffers: Vec<Buffer>,
    /// The arena's size: the peak of memory in use.
    pub arena_bytes: u64,
    /// What the values would take without any reuse.
    pub unplanned_bytes: u64,
    /// The byte offset of every value a kernel writes (values written in
    /// place share their donor's offset).
    #[serde(skip)]
    pub offsets: HashMap<NodeId, u64>,
}

fn bytes(g: &Graph, id: NodeId, batch: u64) -> u64 {
    let elems: u64 = g.ty(id).shape.0.iter().map(|d| if let Dim::Fixed(n) = d { *n } else { batch }).product();
    elems * 4
}

/// Plans the arena for `kernels` of `g` at batch size `batch`.
pub fn plan(g: &Graph, kernels: &[Kernel], batch: u64) -> Plan {
    let (_, num) = crate::ir::print::numbering(g);
    // The buffer a value lives in: its own, or (reshape) its operand's.
    let mut root: HashMap<NodeId, NodeId> = HashMap::new();
    for id in g.topo_order() {
        if let Some(src) = super::layout::viewed(g, id) {
            root.insert(id, *root.get(&src).unwrap_or(&src));
        }
    }
    let rooted = |id: NodeId| *root.get(&id).unwrap_or(&id);
    let mut written: HashMap<NodeId, usize> = HashMap::new();
    for (k, kernel) in kernels.iter().enumerate() {
        for w in &kernel.writes {
            written.insert(*w, k);
        }
    }
    let end = kernels.len();
    let mut last: HashMap<NodeId, usize> = written.iter().map(|(id, k)| (*id, *k)).collect();
    for (k, kernel) in kernels.iter().enumerate() {
        for r in &kernel.reads {
            let r = rooted(*r);
            if let Some(l) = last.get_mut(&r) {
                *l = (*l).max(k);
            }
        }
    }
    for (_, o) in &g.outputs {
        if let Some(l) = last.get_mut(&rooted(*o)) {
            *l = end;
        }
    }
    // In place: an elementwise kernel's output may take the storage of an
    // operand of the same size whose storage dies in that kernel. Storage is
    // followed through earlier in-place writes.
    let mut storage: HashMap<NodeId, NodeId> = HashMap::new();
    let store = |storage: &HashMap<NodeId, NodeId>, v: NodeId| {
        let mut s = rooted(v);
        while let Some(n) = storage.get(&s) {
            s = *n;
        }
        s
    };
    for (k, kernel) in kernels.iter().enumerate() {
        if kernel.kind != KernelKind::Elementwise {
            continue;
        }
        let mut donated = Vec::new();
        for w in &kernel.writes {
            // A reduction's output is written while its row is still being
            // read: never in place.
            if matches!(g.node(*w).op, Op::Reduce { .. }) {
                continue;
            }
            let donor = kernel.reads.iter().map(|r| store(&storage, *r)).find(|d| {
                written.contains_key(d)
                    && last.get(d) == Some(&k)
                    && bytes(g, *d, batch) == bytes(g, *w, batch)
                    && !donated.contains(d)
            });
            if let Some(d) = donor {
                donated.push(d);
                storage.insert(*w, d);
                let lw = last[w];
                if let Some(l) = last.get_mut(&d) {
                    *l = lw;
                }
            }
        }
    }
    // Buffers: every written value with storage of its own, largest first.
    let mut values: Vec<NodeId> = written.keys().copied().filter(|v| !storage.contains_key(v)).collect();
    values.sort_by_key(|v| (std::cmp::Reverse(bytes(g, *v, batch)), num[v]));
    let mut placed: Vec<(u64, u64, usize, usize)> = Vec::new();
    let mut buffers = Vec::new();
    let mut own: HashMap<NodeId, u64> = HashMap::new();
    for v in values {
        let size = bytes(g, v, batch).max(4);
        let (start, stop) = (written[&v], last[&v]);
        let mut overlapping: Vec<(u64, u64)> =
            placed.iter().filter(|p| p.2 <= stop && start <= p.3).map(|p| (p.0, p.0 + p.1)).collect();
        overlapping.sort();
        let mut offset = 0;
        for (lo, hi) in overlapping {
            if offset + size <= lo {
                break;
            }
            offset = offset.max(hi);
        }
        placed.push((offset, size, start, stop));
        own.insert(v, offset);
        buffers.push(Buffer { value: num[&v], offset, bytes: size, live: (start, stop) });
    }
    buffers.sort_by_key(|b| b.value);
    let arena = placed.iter().map(|p| p.0 + p.1).max().unwrap_or(0);
    let unplanned = written.keys().map(|v| bytes(g, *v, batch)).sum();
    let offsets = written.keys().map(|v| (*v, own[&store(&storage, *v)])).collect();
    Plan { batch, buffers, arena_bytes: arena, unplanned_bytes: unplanned, offsets }
}
