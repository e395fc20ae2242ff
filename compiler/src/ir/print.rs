//! The canonical text form of a graph: nodes in deterministic topological
//! order, renumbered `%0, %1, …` (never petgraph indices), one per line with
//! its op, attributes, operands, type and label; then the outputs. The same
//! text serves snapshots and `modelc graph --format text`.

use std::collections::HashMap;
use std::fmt::Write;

use super::{Graph, NodeId, Op};

/// Renumbers nodes in topological order.
pub fn numbering(g: &Graph) -> (Vec<NodeId>, HashMap<NodeId, usize>) {
    let order = g.topo_order();
    let num = order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    (order, num)
}

/// The op with its attributes: `reduce_sum[axes=1]`, `input param "fc1.weight"`.
pub fn op_text(op: &Op) -> String {
    match op {
        Op::Input { name, role } => format!("input {} {name:?}", format!("{role:?}").to_lowercase()),
        Op::Const { value } => format!("const {value}"),
        Op::CausalMask { t } => format!("causal_mask[t={t}]"),
        Op::Reduce { axes, .. } => format!("{}[axes={}]", op.name(), join(axes)),
        Op::ArgMax { axis } | Op::SizeOf { axis } => format!("{}[axis={axis}]", op.name()),
        Op::Reshape { shape } => format!("reshape[{shape}]"),
        Op::Permute { perm } => format!("permute[{}]", join(perm)),
        Op::Slice { axis, start, end } => format!("slice[axis={axis}, {start}..{end}]"),
        Op::Pad { axis, before, after } => format!("pad[axis={axis}, {before}, {after}]"),
        Op::Concat { axis } => format!("concat[axis={axis}]"),
        Op::Im2Col { kernel, stride, padding } => {
            format!(
                "im2col[kernel={}x{}, stride={}x{}, padding={}x{}]",
                kernel.0, kernel.1, stride.0, stride.1, padding.0, padding.1
            )
        }
        Op::MaxPool { size, stride } | Op::MaxPoolGrad { size, stride } => {
            format!("{}[size={}x{}, stride={}x{}]", op.name(), size.0, size.1, stride.0, stride.1)
        }
        Op::Col2Im { kernel, stride, padding, channels, image } => format!(
            "col2im[kernel={}x{}, stride={}x{}, padding={}x{}, image={}x{}x{}]",
            kernel.0, kernel.1, stride.0, stride.1, padding.0, padding.1, channels, image.0, image.1
        ),
        Op::MatMul { ta, tb } if *ta || *tb => {
            format!("matmul[{}{}]", if *ta { "aᵀ" } else { "a" }, if *tb { "bᵀ" } else { "b" })
        }
        Op::ScatterAdd { rows } => format!("scatter_add[rows={rows}]"),
        Op::OneHot { classes } => format!("one_hot[classes={classes}]"),
        Op::DropoutMask { rate, salt } => format!("dropout_mask[rate={rate}, salt={salt}]"),
        _ => op.name(),
    }
}

fn join(v: &[usize]) -> String {
    v.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

/// The whole graph as text.
pub fn text(g: &Graph) -> String {
    let (order, num) = numbering(g);
    let mut out = String::new();
    for id in &order {
        let n = g.node(*id);
        let args: Vec<String> = g.inputs(*id).iter().map(|i| format!("%{}", num[i])).collect();
        let args = if args.is_empty() { String::new() } else { format!(" {}", args.join(", ")) };
        let label = match (&n.label, &n.op) {
            (Some(l), op) if !matches!(op, Op::Input { .. }) => format!("  # {l}"),
            _ => String::new(),
        };
        let _ = writeln!(out, "%{} = {}{args} : {}{label}", num[id], op_text(&n.op), n.ty);
    }
    for (name, id) in &g.outputs {
        let _ = writeln!(out, "output {name} = %{}", num[id]);
    }
    out
}

/// Graphviz dot.
pub fn dot(g: &Graph) -> String {
    let (order, num) = numbering(g);
    let mut out = String::from("digraph model {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n");
    for id in &order {
        let n = g.node(*id);
        let label = format!("%{} {}\\n{}", num[id], op_text(&n.op).replace('"', "\\\""), n.ty);
        let _ = writeln!(out, "  n{} [label=\"{label}\"];", num[id]);
        for i in g.inputs(*id) {
            let _ = writeln!(out, "  n{} -> n{};", num[&i], num[id]);
        }
    }
    for (name, id) in &g.outputs {
        let _ = writeln!(out, "  \"{name}\" [shape=ellipse];\n  n{} -> \"{name}\";", num[id]);
    }
    out.push_str("}\n");
    out
}

/// Mermaid flowchart.
pub fn mermaid(g: &Graph) -> String {
    let (order, num) = numbering(g);
    let mut out = String::from("flowchart TD\n");
    for id in &order {
        let n = g.node(*id);
        let label = format!("%{} {}<br/>{}", num[id], op_text(&n.op), n.ty).replace('"', "#quot;");
        let _ = writeln!(out, "  n{}[\"{label}\"]", num[id]);
        for i in g.inputs(*id) {
            let _ = writeln!(out, "  n{} --> n{}", num[&i], num[id]);
        }
    }
    for (k, (name, id)) in g.outputs.iter().enumerate() {
        let _ = writeln!(out, "  out{k}([\"{name}\"])\n  n{} --> out{k}", num[id]);
    }
    out
}

#[derive(serde::Serialize)]
struct YamlNode {
    id: usize,
    #[serde(flatten)]
    op: Op,
    inputs: Vec<usize>,
    ty: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
}

#[derive(serde::Serialize)]
struct YamlGraph {
    nodes: Vec<YamlNode>,
    outputs: Vec<(String, usize)>,
}

/// YAML: the same nodes as the text form, as data.
pub fn yaml(g: &Graph) -> String {
    let (order, num) = numbering(g);
    let nodes = order
        .iter()
        .map(|id| {
            let n = g.node(*id);
            YamlNode {
                id: num[id],
                op: n.op.clone(),
                inputs: g.inputs(*id).iter().map(|i| num[i]).collect(),
                ty: n.ty.to_string(),
                label: n.label.clone(),
            }
        })
        .collect();
    let outputs = g.outputs.iter().map(|(n, id)| (n.clone(), num[id])).collect();
    serde_yaml::to_string(&YamlGraph { nodes, outputs }).unwrap_or_else(|e| format!("# cannot write YAML: {e}\n"))
}
