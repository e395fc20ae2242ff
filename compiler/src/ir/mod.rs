//! The graph IR: a small closed set of primitive ops over tensors whose shapes
//! are known up to the symbolic batch `N`.
//!
//! A [`Graph`] wraps a petgraph `StableDiGraph`, so deleting a node never
//! renumbers the others, and hands out typed [`NodeId`]s. Operands are edges
//! weighted by their position. Every node carries its op, its type (inferred
//! by [`infer`] when the node is added, so a graph is well-typed by
//! construction) and an optional label (a parameter name, a layer path).

pub mod decode;
pub mod lower;
pub mod print;
pub mod verify;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::Serialize;

pub use crate::check::types::{Dim, Shape};

/// A node of a [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(NodeIndex<u32>);

impl NodeId {
    pub fn index(self) -> usize {
        self.0.index()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    F32,
    I32,
}

/// A node's type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Ty {
    pub dtype: DType,
    pub shape: Shape,
}

impl Ty {
    pub fn f32(shape: Shape) -> Ty {
        Ty { dtype: DType::F32, shape }
    }

    pub fn scalar() -> Ty {
        Ty::f32(Shape::scalar())
    }
}

impl std::fmt::Display for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = match self.dtype {
            DType::F32 => "f32",
            DType::I32 => "i32",
        };
        write!(f, "{d}{}", self.shape)
    }
}

/// What a graph input is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A batch of data fed to the model.
    Data,
    /// A batch of targets.
    Target,
    /// A trainable or frozen parameter.
    Param,
    /// Optimizer state.
    State,
    /// A scalar set per step by the runtime (learning rate, step, seed).
    Scalar,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Recip,
    Tanh,
    Erf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// Ties go to the second operand: `max(x, 0)` has gradient 0 at `x = 0`.
    Max,
    /// Ties go to the second operand.
    Min,
    /// 1 where `a > b`, else 0. No gradient.
    Greater,
    /// 1 where `a == b`, else 0. No gradient.
    Equal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReduceOp {
    Sum,
    /// Ties share the gradient equally.
    Max,
}

/// A primitive operation. Operand counts and meanings are in the comments;
/// [`infer`] is the authority on shapes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Op {
    /// A graph input (no operands).
    Input { name: String, role: Role },
    /// A scalar constant (no operands).
    Const { value: f64 },
    /// The causal attention mask `[t, t]`: 0 on and below the diagonal, -inf above.
    CausalMask { t: u64 },
    /// (x) elementwise.
    Unary { op: UnaryOp },
    /// (a, b) elementwise with NumPy broadcasting.
    Binary { op: BinaryOp },
    /// (x) reduced over `axes`, which are kept with size 1.
    Reduce { op: ReduceOp, axes: Vec<usize> },
    /// (x) index of the maximum along `axis` (kept with size 1), as f32; the first on ties.
    #[serde(rename = "argmax")]
    ArgMax { axis: usize },
    /// (x) the runtime size of `axis`, as an f32 scalar.
    SizeOf { axis: usize },
    /// (x) same elements, new shape.
    Reshape { shape: Shape },
    /// (x) axes reordered: output axis i is input axis `perm[i]`.
    Permute { perm: Vec<usize> },
    /// (x, like) x broadcast to the shape of `like` (whose batch size it
    /// takes at run time).
    Expand,
    /// (x) `start..end` of `axis`.
    Slice { axis: usize, start: u64, end: u64 },
    /// (x) zeros added before and after along `axis`.
    Pad { axis: usize, before: u64, after: u64 },
    /// (a, b, …) joined along `axis`.
    Concat { axis: usize },
    /// (a, b): `[…, m, k] × […, k, n] → […, m, n]`, leading dims broadcast.
    /// `ta`/`tb` read an operand with its last two axes swapped (no copy: a
    /// GEMM takes the transposition as strides).
    #[serde(rename = "matmul")]
    MatMul { ta: bool, tb: bool },
    /// (x `[N, C, H, W]`) → `[N, C·kh·kw, oh·ow]`, rows ordered (c, i, j).
    #[serde(rename = "im2col")]
    Im2Col { kernel: (u64, u64), stride: (u64, u64), padding: (u64, u64) },
    /// (x `[N, C, H, W]`) → `[N, C, oh, ow]`: the maximum of each window (no
    /// padding). Its gradient shares `dy` equally among a window's ties, as
    /// `reduce_max` does.
    #[serde(rename = "maxpool")]
    MaxPool { size: (u64, u64), stride: (u64, u64) },
    /// (x, y = maxpool(x), dy) → dx `[N, C, H, W]`: each window's `dy` shared
    /// equally by the positions where `x` equals the window's maximum;
    /// overlapping windows add.
    #[serde(rename = "maxpool_grad")]
    MaxPoolGrad { size: (u64, u64), stride: (u64, u64) },
    /// (cols) → `[N, C, H, W]`: the adjoint of Im2Col (overlaps summed).
    #[serde(rename = "col2im")]
    Col2Im { kernel: (u64, u64), stride: (u64, u64), padding: (u64, u64), channels: u64, image: (u64, u64) },
    /// (table `[V, D]`, indices i32 `[…]`) → `[…, D]`.
    Gather,
    /// (indices i32 `[…]`, src `[…, D]`) → `[rows, D]`, rows summed by index.
    ScatterAdd { rows: u64 },
    /// (labels i32 `[…]`) → f32 `[…, classes]`.
    OneHot { classes: u64 },
    /// (x) identity forward, no gradient.
    StopGradient,
    /// (x, y, d) → y, whose gradient with respect to x is `dy·d` (y and d
    /// get none): an activation whose derivative d the forward pass
    /// computes beside y, from x, so that the backward pass reads one value
    /// (a view of y, like a stop-gradient).
    WithGrad,
    /// (x, seed scalar) → a mask of x's shape: 0 with probability `rate`, else
    /// `1 / (1 - rate)`, from a counter-based hash of (seed, salt, index).
    DropoutMask { rate: f64, salt: u64 },
}

impl Op {
    pub fn name(&self) -> String {
        match self {
            Op::Input { .. } => "input".into(),
            Op::Const { .. } => "const".into(),
            Op::CausalMask { .. } => "causal_mask".into(),
            Op::Unary { op } => format!("{op:?}").to_lowercase(),
            Op::Binary { op } => format!("{op:?}").to_lowercase(),
            Op::Reduce { op, .. } => format!("reduce_{}", format!("{op:?}").to_lowercase()),
            Op::ArgMax { .. } => "argmax".into(),
            Op::SizeOf { .. } => "size_of".into(),
            Op::Reshape { .. } => "reshape".into(),
            Op::Permute { .. } => "permute".into(),
            Op::Expand => "expand".into(),
            Op::Slice { .. } => "slice".into(),
            Op::Pad { .. } => "pad".into(),
            Op::Concat { .. } => "concat".into(),
            Op::MatMul { .. } => "matmul".into(),
            Op::Im2Col { .. } => "im2col".into(),
            Op::Col2Im { .. } => "col2im".into(),
            Op::MaxPool { .. } => "maxpool".into(),
            Op::MaxPoolGrad { .. } => "maxpool_grad".into(),
            Op::Gather => "gather".into(),
            Op::ScatterAdd { .. } => "scatter_add".into(),
            Op::OneHot { .. } => "one_hot".into(),
            Op::StopGradient => "stop_gradient".into(),
            Op::WithGrad => "with_grad".into(),
            Op::DropoutMask { .. } => "dropout_mask".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub ty: Ty,
    /// A parameter's name or the layer path the node came from.
    pub label: Option<String>,
}

/// A computation graph with named outputs.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    g: StableDiGraph<Node, u8>,
    pub outputs: Vec<(String, NodeId)>,
}

/// A node could not be typed: an internal error of whoever built it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("compiler bug: cannot type `{op}` on ({inputs}): {reason}")]
pub struct TypeError {
    pub op: String,
    pub inputs: String,
    pub reason: String,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node, inferring its type from its operands.
    pub fn add(&mut self, op: Op, inputs: &[NodeId]) -> Result<NodeId, TypeError> {
        let tys: Vec<&Ty> = inputs.iter().map(|i| &self.g[i.0].ty).collect();
        let ty = infer(&op, &tys).map_err(|reason| TypeError {
            op: op.name(),
            inputs: tys.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
            reason,
        })?;
        Ok(self.add_typed(op, ty, inputs))
    }

    /// Adds a node with a given type (leaves, and rebuilding verified graphs).
    pub fn add_typed(&mut self, op: Op, ty: Ty, inputs: &[NodeId]) -> NodeId {
        let id = NodeId(self.g.add_node(Node { op, ty, label: None }));
        for (k, i) in inputs.iter().enumerate() {
            self.g.add_edge(i.0, id.0, k as u8);
        }
        id
    }

    pub fn input(&mut self, name: &str, role: Role, ty: Ty) -> NodeId {
        let id = self.add_typed(Op::Input { name: name.to_string(), role }, ty, &[]);
        self.set_label(id, name);
        id
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id.0]
    }

    pub fn ty(&self, id: NodeId) -> &Ty {
        &self.g[id.0].ty
    }

    pub fn set_label(&mut self, id: NodeId, label: &str) {
        self.g[id.0].label = Some(label.to_string());
    }

    /// Operands in order.
    pub fn inputs(&self, id: NodeId) -> Vec<NodeId> {
        let mut e: Vec<(u8, NodeId)> =
            self.g.edges_directed(id.0, Direction::Incoming).map(|e| (*e.weight(), NodeId(e.source()))).collect();
        e.sort();
        e.into_iter().map(|(_, n)| n).collect()
    }

    /// Nodes that use `id`.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.g.neighbors_directed(id.0, Direction::Outgoing).map(NodeId).collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.g.node_indices().map(NodeId)
    }

    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }

    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
    }

    /// Graph inputs of a role, in insertion order.
    pub fn inputs_of(&self, role: Role) -> Vec<(String, NodeId)> {
        self.ids()
            .filter_map(|id| match &self.node(id).op {
                Op::Input { name, role: r } if *r == role => Some((name.clone(), id)),
                _ => None,
            })
            .collect()
    }

    /// Nodes in a deterministic topological order: operands first, ties
    /// broken by insertion order.
    pub fn topo_order(&self) -> Vec<NodeId> {
        let mut indegree: std::collections::BTreeMap<NodeId, usize> =
            self.ids().map(|id| (id, self.inputs(id).len())).collect();
        let mut ready: std::collections::BTreeSet<NodeId> =
            indegree.iter().filter(|(_, d)| **d == 0).map(|(id, _)| *id).collect();
        let mut order = Vec::with_capacity(self.len());
        while let Some(id) = ready.pop_first() {
            order.push(id);
            for e in self.g.edges_directed(id.0, Direction::Outgoing) {
                let t = NodeId(e.target());
                if let Some(d) = indegree.get_mut(&t) {
                    *d -= 1;
                    if *d == 0 {
                        ready.insert(t);
                    }
                }
            }
        }
        order
    }

    /// Replaces node `old` by a new node `op(inputs)` of type `ty`: the new
    /// node takes `old`'s label and uses, and `old` is removed (a pass's
    /// rewrite of one node). Returns the new node.
    pub fn replace_with(&mut self, old: NodeId, op: Op, ty: Ty, inputs: &[NodeId]) -> NodeId {
        let new = self.add_typed(op, ty, inputs);
        if let Some(l) = self.node(old).label.clone() {
            self.set_label(new, &l);
        }
        self.replace_uses(old, new);
        self.remove(old);
        new
    }

    /// Redirects every use of `old` (and outputs naming it) to `new`.
    pub fn replace_uses(&mut self, old: NodeId, new: NodeId) {
        let uses: Vec<(NodeId, u8, petgraph::stable_graph::EdgeIndex<u32>)> = self
            .g
            .edges_directed(old.0, Direction::Outgoing)
            .map(|e| (NodeId(e.target()), *e.weight(), e.id()))
            .collect();
        for (target, slot, edge) in uses {
            self.g.remove_edge(edge);
            self.g.add_edge(new.0, target.0, slot);
        }
        for (_, o) in self.outputs.iter_mut() {
            if *o == old {
                *o = new;
            }
        }
    }

    pub fn remove(&mut self, id: NodeId) {
        self.g.remove_node(id.0);
    }
}

/// The type of `op` applied to operands of types `inputs`.
pub fn infer(op: &Op, inputs: &[&Ty]) -> Result<Ty, String> {
    let arity = |n: usize| {
        if inputs.len() == n {
            Ok(())
        } else {
            Err(format!("expected {n} operand(s), got {}", inputs.len()))
        }
    };
    let x = inputs.first().copied();
    let sh = |i: usize| &inputs[i].shape;
    match op {
        Op::Input { .. } => Err("inputs are added with a type".into()),
        Op::Const { .. } => {
            arity(0)?;
            Ok(Ty::scalar())
        }
        Op::CausalMask { t } => {
            arity(0)?;
            Ok(Ty::f32(Shape(vec![Dim::Fixed(*t), Dim::Fixed(*t)])))
        }
        Op::Unary { .. } | Op::StopGradient => {
            arity(1)?;
            Ok(Ty::f32(sh(0).clone()))
        }
        Op::WithGrad => {
            arity(3)?;
            if sh(1) != sh(0) || sh(2) != sh(0) {
                return Err("with_grad needs (x, y, d) of one shape".into());
            }
            Ok(Ty::f32(sh(0).clone()))
        }
        Op::Binary { .. } => {
            arity(2)?;
            let s = sh(0).broadcast(sh(1)).ok_or_else(|| format!("{} and {} do not broadcast", sh(0), sh(1)))?;
            Ok(Ty::f32(s))
        }
        Op::Reduce { axes, .. } => {
            arity(1)?;
            let mut d = sh(0).0.clone();
            for a in axes {
                *d.get_mut(*a).ok_or("axis out of range")? = Dim::Fixed(1);
            }
            Ok(Ty::f32(Shape(d)))
        }
        Op::ArgMax { axis } => {
            arity(1)?;
            let mut d = sh(0).0.clone();
            *d.get_mut(*axis).ok_or("axis out of range")? = Dim::Fixed(1);
            Ok(Ty::f32(Shape(d)))
        }
        Op::SizeOf { axis } => {
            arity(1)?;
            if *axis >= sh(0).rank() {
                return Err("axis out of range".into());
            }
            Ok(Ty::scalar())
        }
        Op::Reshape { shape } => {
            arity(1)?;
            let (a, b) = (sh(0), shape);
            let batch = |s: &Shape| s.0.iter().filter(|d| **d == Dim::Batch).count();
            if batch(a) != batch(b) || a.sample_elements() != b.sample_elements() {
                return Err(format!("cannot reshape {a} to {b}"));
            }
            Ok(Ty { dtype: x.map(|t| t.dtype).unwrap_or(DType::F32), shape: shape.clone() })
        }
        Op::Permute { perm } => {
            arity(1)?;
            let d = &sh(0).0;
            let mut seen = vec![false; d.len()];
            if perm.len() != d.len() || perm.iter().any(|p| *p >= d.len() || std::mem::replace(&mut seen[*p], true)) {
                return Err(format!("bad permutation {perm:?}"));
            }
            Ok(Ty { dtype: inputs[0].dtype, shape: Shape(perm.iter().map(|p| d[*p]).collect()) })
        }
        Op::Expand => {
            arity(2)?;
            match sh(0).broadcast(sh(1)) {
                Some(s) if &s == sh(1) => Ok(Ty::f32(s)),
                _ => Err(format!("cannot expand {} to {}", sh(0), sh(1))),
            }
        }
        Op::Slice { axis, start, end } => {
            arity(1)?;
            let mut d = sh(0).0.clone();
            match d.get(*axis) {
                Some(Dim::Fixed(n)) if start < end && end <= n => d[*axis] = Dim::Fixed(end - start),
                _ => return Err("bad slice".into()),
            }
            Ok(Ty { dtype: inputs[0].dtype, shape: Shape(d) })
        }
        Op::Pad { axis, before, after } => {
            arity(1)?;
            let mut d = sh(0).0.clone();
            match d.get(*axis) {
                Some(Dim::Fixed(n)) => d[*axis] = Dim::Fixed(n + before + after),
                _ => return Err("bad pad axis".into()),
            }
            Ok(Ty::f32(Shape(d)))
        }
        Op::Concat { axis } => {
            if inputs.len() < 2 {
                return Err("concat needs two or more operands".into());
            }
            let mut d = sh(0).0.clone();
            let mut total = 0;
            for t in inputs {
                let e = &t.shape.0;
                if e.len() != d.len() || e.iter().zip(&d).enumerate().any(|(k, (a, b))| k != *axis && a != b) {
                    return Err("concat operands differ".into());
                }
                match e.get(*axis) {
                    Some(Dim::Fixed(n)) => total += n,
                    _ => return Err("bad concat axis".into()),
                }
            }
            d[*axis] = Dim::Fixed(total);
            Ok(Ty::f32(Shape(d)))
        }
        Op::MatMul { ta, tb } => {
            arity(2)?;
            let (a, b) = (&sh(0).0, &sh(1).0);
            if a.len() < 2 || b.len() < 2 {
                return Err("matmul operands need rank 2 or more".into());
            }
            let (mut m, mut k1) = (a[a.len() - 2], a[a.len() - 1]);
            let (mut k2, mut n) = (b[b.len() - 2], b[b.len() - 1]);
            if *ta {
                std::mem::swap(&mut m, &mut k1);
            }
            if *tb {
                std::mem::swap(&mut k2, &mut n);
            }
            if k1 != k2 {
                return Err(format!("inner dimensions {k1} and {k2} differ"));
            }
            let lead = Shape(a[..a.len() - 2].to_vec())
                .broadcast(&Shape(b[..b.len() - 2].to_vec()))
                .ok_or("leading dimensions do not broadcast")?;
            let mut d = lead.0;
            d.push(m);
            d.push(n);
            Ok(Ty::f32(Shape(d)))
        }
        Op::Im2Col { kernel, stride, padding } => {
            arity(1)?;
            let [Dim::Batch, Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)] = sh(0).0.as_slice() else {
                return Err("im2col needs [N, C, H, W]".into());
            };
            let oh = (h + 2 * padding.0).checked_sub(kernel.0).ok_or("kernel too large")? / stride.0 + 1;
            let ow = (w + 2 * padding.1).checked_sub(kernel.1).ok_or("kernel too large")? / stride.1 + 1;
            Ok(Ty::f32(Shape::batched(&[c * kernel.0 * kernel.1, oh * ow])))
        }
        Op::MaxPool { size, stride } => {
            arity(1)?;
            let [Dim::Batch, Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)] = sh(0).0.as_slice() else {
                return Err("maxpool needs [N, C, H, W]".into());
            };
            let oh = h.checked_sub(size.0).ok_or("window too large")? / stride.0 + 1;
            let ow = w.checked_sub(size.1).ok_or("window too large")? / stride.1 + 1;
            Ok(Ty::f32(Shape::batched(&[*c, oh, ow])))
        }
        Op::MaxPoolGrad { size, stride } => {
            arity(3)?;
            let y = infer(&Op::MaxPool { size: *size, stride: *stride }, &[inputs[0]])?;
            if sh(1) != &y.shape || sh(2) != &y.shape {
                return Err("maxpool_grad needs (x, maxpool(x), dy)".into());
            }
            Ok(inputs[0].clone())
        }
        Op::Col2Im { kernel, stride, padding, channels, image } => {
            arity(1)?;
            let oh = (image.0 + 2 * padding.0 - kernel.0) / stride.0 + 1;
            let ow = (image.1 + 2 * padding.1 - kernel.1) / stride.1 + 1;
            if sh(0) != &Shape::batched(&[channels * kernel.0 * kernel.1, oh * ow]) {
                return Err("col2im operand does not match the image".into());
            }
            Ok(Ty::f32(Shape::batched(&[*channels, image.0, image.1])))
        }
        Op::Gather => {
            arity(2)?;
            let (t, i) = (inputs[0], inputs[1]);
            if t.shape.rank() != 2 || i.dtype != DType::I32 {
                return Err("gather needs a [V, D] table and i32 indices".into());
            }
            let mut d = i.shape.0.clone();
            d.push(t.shape.0[1]);
            Ok(Ty::f32(Shape(d)))
        }
        Op::ScatterAdd { rows } => {
            arity(2)?;
            let (i, s) = (inputs[0], inputs[1]);
            let mut lead = s.shape.0.clone();
            let d = lead.pop().ok_or("scatter source needs rank 1 or more")?;
            if i.dtype != DType::I32 || i.shape.0 != lead {
                return Err("scatter indices do not match the source".into());
            }
            Ok(Ty::f32(Shape(vec![Dim::Fixed(*rows), d])))
        }
        Op::OneHot { classes } => {
            arity(1)?;
            let mut d = sh(0).0.clone();
            d.push(Dim::Fixed(*classes));
            Ok(Ty::f32(Shape(d)))
        }
        Op::DropoutMask { .. } => {
            arity(2)?;
            if inputs[1].shape.rank() != 0 {
                return Err("the seed must be a scalar".into());
            }
            Ok(Ty::f32(sh(0).clone()))
        }
    }
}
