//! The reference interpreter: plain, obviously correct f64 execution of any
//! graph at any stage. It is the oracle every backend is tested against, not
//! a product path: it favours clarity over speed and allocates freely.

use std::collections::HashMap;

use crate::ir::{BinaryOp, Dim, Graph, NodeId, Op, ReduceOp, UnaryOp};

/// A dense row-major f64 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor data does not match its shape");
        Tensor { shape, data }
    }

    pub fn scalar(v: f64) -> Tensor {
        Tensor { shape: vec![], data: vec![v] }
    }

    pub fn zeros(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor { shape, data: vec![0.0; n] }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn strides(shape: &[usize]) -> Vec<usize> {
        let mut s = vec![1; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * shape[i + 1];
        }
        s
    }
}

/// Values of every node after a run.
pub type Values = HashMap<NodeId, Tensor>;

/// Runs `g` on `inputs` (by input name). Returns every node's value.
pub fn run(g: &Graph, inputs: &HashMap<String, Tensor>) -> Result<Values, String> {
    let mut vals: Values = HashMap::new();
    for id in g.topo_order() {
        let node = g.node(id);
        let args: Vec<&Tensor> = g.inputs(id).iter().map(|i| &vals[i]).collect();
        let v = eval(&node.op, &args, inputs).map_err(|e| format!("{} ({}): {e}", node.op.name(), node.ty))?;
        // Fixed dimensions of the result must agree with the node's type.
        let ty = &node.ty.shape.0;
        if ty.len() != v.shape.len()
            || ty.iter().zip(&v.shape).any(|(d, n)| matches!(d, Dim::Fixed(k) if *k as usize != *n))
        {
            return Err(format!("{}: computed shape {:?} does not match type {}", node.op.name(), v.shape, node.ty));
        }
        vals.insert(id, v);
    }
    Ok(vals)
}

/// Runs `g` and returns its named outputs.
pub fn outputs(g: &Graph, inputs: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>, String> {
    let vals = run(g, inputs)?;
    Ok(g.outputs.iter().map(|(n, id)| (n.clone(), vals[id].clone())).collect())
}

fn eval(op: &Op, a: &[&Tensor], inputs: &HashMap<String, Tensor>) -> Result<Tensor, String> {
    Ok(match op {
        Op::Input { name, .. } => inputs.get(name).cloned().ok_or_else(|| format!("no value for input `{name}`"))?,
        Op::Const { value } => Tensor::scalar(*value),
        Op::CausalMask { t } => {
            let t = *t as usize;
            let data = (0..t * t).map(|k| if k % t > k / t { f64::NEG_INFINITY } else { 0.0 }).collect();
            Tensor::new(vec![t, t], data)
        }
        Op::Unary { op } => {
            let f: fn(f64) -> f64 = match op {
                UnaryOp::Neg => |x| -x,
                UnaryOp::Exp => f64::exp,
                UnaryOp::Log => f64::ln,
                UnaryOp::Sqrt => f64::sqrt,
                UnaryOp::Recip => |x| 1.0 / x,
                UnaryOp::Tanh => f64::tanh,
                UnaryOp::Erf => erf,
            };
            Tensor { shape: a[0].shape.clone(), data: a[0].data.iter().map(|x| f(*x)).collect() }
        }
        Op::StopGradient => a[0].clone(),
        Op::WithGrad => a[1].clone(),
        Op::Binary { op } => {
            let f: fn(f64, f64) -> f64 = match op {
                BinaryOp::Add => |x, y| x + y,
                BinaryOp::Sub => |x, y| x - y,
                BinaryOp::Mul => |x, y| x * y,
                BinaryOp::Div => |x, y| x / y,
                BinaryOp::Max => |x, y| if x > y { x } else { y },
                BinaryOp::Min => |x, y| if x < y { x } else { y },
                BinaryOp::Greater => |x, y| f64::from(u8::from(x > y)),
                BinaryOp::Equal => |x, y| f64::from(u8::from(x == y)),
            };
            broadcast_binary(a[0], a[1], f)?
        }
        Op::Reduce { op, axes } => reduce(a[0], axes, *op),
        Op::ArgMax { axis } => argmax(a[0], *axis),
        Op::SizeOf { axis } => Tensor::scalar(a[0].shape[*axis] as f64),
        Op::Reshape { shape } => {
            // The batch, if any, is whatever the fixed dimensions leave over.
            let fixed: usize =
                shape.0.iter().filter_map(|d| if let Dim::Fixed(n) = d { Some(*n as usize) } else { None }).product();
            let n = a[0].len() / fixed.max(1);
            let dims: Vec<usize> =
                shape.0.iter().map(|d| if let Dim::Fixed(k) = d { *k as usize } else { n }).collect();
            if dims.iter().product::<usize>() != a[0].len() {
                return Err(format!("cannot reshape {:?} to {dims:?}", a[0].shape));
            }
            Tensor { shape: dims, data: a[0].data.clone() }
        }
        Op::Permute { perm } => permute(a[0], perm),
        Op::Expand => broadcast_to(a[0], &a[1].shape)?,
        Op::Slice { axis, start, end } => slice(a[0], *axis, *start as usize, *end as usize),
        Op::Pad { axis, before, after } => pad(a[0], *axis, *before as usize, *after as usize),
        Op::Concat { axis } => concat(a, *axis),
        Op::MatMul { ta, tb } => {
            // Transposed operands are read by swapping their last two axes.
            let swap = |t: &Tensor| {
                let r = t.shape.len();
                let mut perm: Vec<usize> = (0..r).collect();
                perm.swap(r - 2, r - 1);
                permute(t, &perm)
            };
            let x = if *ta { swap(a[0]) } else { a[0].clone() };
            let y = if *tb { swap(a[1]) } else { a[1].clone() };
            matmul(&x, &y)?
        }
        Op::Im2Col { kernel, stride, padding } => im2col(a[0], *kernel, *stride, *padding),
        Op::Col2Im { kernel, stride, padding, channels, image } => {
            col2im(a[0], *kernel, *stride, *padding, *channels, *image)
        }
        Op::MaxPool { size, stride } => maxpool(a[0], *size, *stride),
        Op::MaxPoolGrad { size, stride } => maxpool_grad(a[0], a[1], a[2], *size, *stride),
        Op::Gather => {
            let (t, idx) = (a[0], a[1]);
            let (v, d) = (t.shape[0], t.shape[1]);
            let mut data = Vec::with_capacity(idx.len() * d);
            for i in &idx.data {
                let r = *i as usize;
                if *i < 0.0 || r >= v {
                    return Err(format!("index {i} out of range for {v} rows"));
                }
                data.extend_from_slice(&t.data[r * d..(r + 1) * d]);
            }
            let mut shape = idx.shape.clone();
            shape.push(d);
            Tensor::new(shape, data)
        }
        Op::ScatterAdd { rows } => {
            let (idx, src) = (a[0], a[1]);
            let d = *src.shape.last().unwrap_or(&1);
            let mut out = Tensor::zeros(vec![*rows as usize, d]);
            for (k, i) in idx.data.iter().enumerate() {
                let r = *i as usize;
                for j in 0..d {
                    out.data[r * d + j] += src.data[k * d + j];
                }
            }
            out
        }
        Op::OneHot { classes } => {
            let k = *classes as usize;
            let mut out = Tensor::zeros([a[0].shape.clone(), vec![k]].concat());
            for (i, c) in a[0].data.iter().enumerate() {
                if *c < 0.0 || *c as usize >= k {
                    return Err(format!("label {c} out of range for {k} classes"));
                }
                out.data[i * k + *c as usize] = 1.0;
            }
            out
        }
        Op::DropoutMask { rate, salt } => {
            let seed = a[1].data[0] as u64;
            let keep = crate::kernel::consts::dropout_keep(*rate);
            let data = (0..a[0].len())
                .map(|i| if dropout_uniform(seed, *salt, i as u64) < *rate { 0.0 } else { keep })
                .collect();
            Tensor { shape: a[0].shape.clone(), data }
        }
    })
}

/// The uniform number in [0, 1) that decides whether element `index` is
/// dropped: splitmix64 of the seed, salt and index. Backends use the same.
pub fn dropout_uniform(seed: u64, salt: u64, index: u64) -> f64 {
    crate::kernel::consts::dropout_bits(seed, salt, index) as f64 / (1u64 << 53) as f64
}

/// erf to double precision (Abramowitz–Stegun 7.1.26 is too coarse for an
/// oracle; this uses the series for small |x| and a continued fraction beyond).
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let ax = x.abs();
    let r = if ax < 2.5 {
        // Maclaurin series: 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1))
        let mut sum: f64 = 0.0;
        let mut term = ax;
        let x2 = ax * ax;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs().max(1e-300) {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x2 / n;
            if n > 200.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc by Lentz's continued fraction.
        let x2 = ax * ax;
        let tiny = 1e-300;
        let mut f = ax;
        let mut c = ax;
        let mut d = 0.0;
        for k in 1..300 {
            let an = k as f64 / 2.0;
            d = ax + an * d;
            d = if d.abs() < tiny { tiny } else { d };
            c = ax + an / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        let erfc = (-x2).exp() / (f * std::f64::consts::PI.sqrt());
        1.0 - erfc
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let x = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
            let y = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
            match (x, y) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                _ => Err(format!("shapes {a:?} and {b:?} do not broadcast")),
            }
        })
        .collect()
}

/// Index into `t` for a multi-index of the broadcast output.
fn source_offset(t: &[usize], strides: &[usize], out_index: &[usize]) -> usize {
    let off = out_index.len() - t.len();
    t.iter().enumerate().map(|(i, n)| if *n == 1 { 0 } else { out_index[i + off] * strides[i] }).sum()
}

fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize])) {
    let total: usize = shape.iter().product();
    let mut idx = vec![0; shape.len()];
    for _ in 0..total {
        f(&idx);
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

fn broadcast_binary(a: &Tensor, b: &Tensor, f: fn(f64, f64) -> f64) -> Result<Tensor, String> {
    let shape = broadcast_shape(&a.shape, &b.shape)?;
    let (sa, sb) = (Tensor::strides(&a.shape), Tensor::strides(&b.shape));
    let mut data = Vec::with_capacity(shape.iter().product());
    for_each_index(&shape, |i| {
        data.push(f(a.data[source_offset(&a.shape, &sa, i)], b.data[source_offset(&b.shape, &sb, i)]))
    });
    Ok(Tensor { shape, data })
}

fn broadcast_to(a: &Tensor, target: &[usize]) -> Result<Tensor, String> {
    let shape = broadcast_shape(&a.shape, target)?;
    if shape != target {
        return Err(format!("cannot expand {:?} to {target:?}", a.shape));
    }
    let sa = Tensor::strides(&a.shape);
    let mut data = Vec::with_capacity(shape.iter().product());
    for_each_index(&shape, |i| data.push(a.data[source_offset(&a.shape, &sa, i)]));
    Ok(Tensor { shape, data })
}

fn reduce(a: &Tensor, axes: &[usize], op: ReduceOp) -> Tensor {
    let mut shape = a.shape.clone();
    for ax in axes {
        shape[*ax] = 1;
    }
    let init = match op {
        ReduceOp::Sum => 0.0,
        ReduceOp::Max => f64::NEG_INFINITY,
    };
    let mut out = Tensor { data: vec![init; shape.iter().product()], shape: shape.clone() };
    let so = Tensor::strides(&shape);
    let mut k = 0;
    for_each_index(&a.shape, |i| {
        let o: usize = i.iter().enumerate().map(|(d, x)| if axes.contains(&d) { 0 } else { x * so[d] }).sum();
        let v = a.data[k];
        k += 1;
        match op {
            ReduceOp::Sum => out.data[o] += v,
            ReduceOp::Max => {
                if v > out.data[o] || v.is_nan() {
                    out.data[o] = v;
                }
            }
        }
    });
    out
}

fn argmax(a: &Tensor, axis: usize) -> Tensor {
    let mut shape = a.shape.clone();
    let n = shape[axis];
    shape[axis] = 1;
    let inner: usize = a.shape[axis + 1..].iter().product();
    let outer: usize = a.shape[..axis].iter().product();
    let mut data = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let mut best = 0;
            for k in 1..n {
                if a.data[(o * n + k) * inner + i] > a.data[(o * n + best) * inner + i] {
                    best = k;
                }
            }
            data.push(best as f64);
        }
    }
    Tensor { shape, data }
}

fn permute(a: &Tensor, perm: &[usize]) -> Tensor {
    let shape: Vec<usize> = perm.iter().map(|p| a.shape[*p]).collect();
    let sa = Tensor::strides(&a.shape);
    let mut data = Vec::with_capacity(a.len());
    for_each_index(&shape, |i| data.push(a.data[perm.iter().enumerate().map(|(k, p)| i[k] * sa[*p]).sum::<usize>()]));
    Tensor { shape, data }
}

fn slice(a: &Tensor, axis: usize, start: usize, end: usize) -> Tensor {
    let mut shape = a.shape.clone();
    shape[axis] = end - start;
    let sa = Tensor::strides(&a.shape);
    let mut data = Vec::with_capacity(shape.iter().product());
    for_each_index(&shape, |i| {
        data.push(
            a.data[i.iter().enumerate().map(|(k, x)| (if k == axis { x + start } else { *x }) * sa[k]).sum::<usize>()],
        )
    });
    Tensor { shape, data }
}

fn pad(a: &Tensor, axis: usize, before: usize, after: usize) -> Tensor {
    let mut shape = a.shape.clone();
    shape[axis] += before + after;
    let so = Tensor::strides(&shape);
    let mut out = Tensor::zeros(shape);
    let mut k = 0;
    for_each_index(&a.shape, |i| {
        let o: usize = i.iter().enumerate().map(|(d, x)| (if d == axis { x + before } else { *x }) * so[d]).sum();
        out.data[o] = a.data[k];
        k += 1;
    });
    out
}

fn concat(parts: &[&Tensor], axis: usize) -> Tensor {
    let mut out = parts[0].clone();
    let mut offset = parts[0].shape[axis];
    let total: usize = parts.iter().map(|p| p.shape[axis]).sum();
    out = pad(&out, axis, 0, total - offset);
    for p in &parts[1..] {
        let padded = pad(p, axis, offset, total - offset - p.shape[axis]);
        for (o, v) in out.data.iter_mut().zip(&padded.data) {
            *o += v;
        }
        offset += p.shape[axis];
    }
    out
}

fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let (m, k) = (a.shape[ra - 2], a.shape[ra - 1]);
    let (k2, n) = (b.shape[rb - 2], b.shape[rb - 1]);
    if k != k2 {
        return Err(format!("matmul {:?} × {:?}", a.shape, b.shape));
    }
    let lead = broadcast_shape(&a.shape[..ra - 2], &b.shape[..rb - 2])?;
    let mut shape = lead.clone();
    shape.extend([m, n]);
    let mut data = Vec::with_capacity(shape.iter().product());
    let (la, lb) = (&a.shape[..ra - 2], &b.shape[..rb - 2]);
    let (sla, slb) = (Tensor::strides(la), Tensor::strides(lb));
    let lead_shape = if lead.is_empty() { vec![] } else { lead.clone() };
    let mut body = |i: &[usize]| {
        let oa = source_offset(la, &sla, i) * m * k;
        let ob = source_offset(lb, &slb, i) * k * n;
        for r in 0..m {
            for c in 0..n {
                let mut s = 0.0;
                for j in 0..k {
                    s += a.data[oa + r * k + j] * b.data[ob + j * n + c];
                }
                data.push(s);
            }
        }
    };
    if lead_shape.is_empty() {
        body(&[]);
    } else {
        for_each_index(&lead_shape, body);
    }
    Ok(Tensor { shape, data })
}

/// Calls `f(image index, column index)` for every pair im2col copies: the
/// one loop nest of im2col (which copies) and col2im (which adds back).
#[allow(clippy::too_many_arguments)]
fn for_each_window(
    n: usize,
    c: usize,
    (h, w): (usize, usize),
    kernel: (u64, u64),
    stride: (u64, u64),
    pad: (u64, u64),
    mut f: impl FnMut(usize, usize),
) {
    let (kh, kw, sh, sw) = (kernel.0 as usize, kernel.1 as usize, stride.0 as usize, stride.1 as usize);
    let (ph, pw) = (pad.0 as isize, pad.1 as isize);
    let oh = (h + 2 * pad.0 as usize - kh) / sh + 1;
    let ow = (w + 2 * pad.1 as usize - kw) / sw + 1;
    let rows = c * kh * kw;
    for b in 0..n {
        for ch in 0..c {
            for i in 0..kh {
                for j in 0..kw {
                    let row = (ch * kh + i) * kw + j;
                    for y in 0..oh {
                        for x in 0..ow {
                            let (iy, ix) = ((y * sh + i) as isize - ph, (x * sw + j) as isize - pw);
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                let image = ((b * c + ch) * h + iy as usize) * w + ix as usize;
                                f(image, (b * rows + row) * oh * ow + y * ow + x);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Calls `f(output index, input indices of its window)` for every window of
/// a max pooling over `[n, c, h, w]`.
fn for_each_pool_window(shape: &[usize], size: (u64, u64), stride: (u64, u64), mut f: impl FnMut(usize, &[usize])) {
    let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let (kh, kw, sh, sw) = (size.0 as usize, size.1 as usize, stride.0 as usize, stride.1 as usize);
    let (oh, ow) = ((h - kh) / sh + 1, (w - kw) / sw + 1);
    let mut window = Vec::with_capacity(kh * kw);
    for plane in 0..n * c {
        for y in 0..oh {
            for x in 0..ow {
                window.clear();
                for i in 0..kh {
                    for j in 0..kw {
                        window.push((plane * h + y * sh + i) * w + x * sw + j);
                    }
                }
                f((plane * oh + y) * ow + x, &window);
            }
        }
    }
}

fn maxpool(x: &Tensor, size: (u64, u64), stride: (u64, u64)) -> Tensor {
    let s = &x.shape;
    let (oh, ow) = ((s[2] - size.0 as usize) / stride.0 as usize + 1, (s[3] - size.1 as usize) / stride.1 as usize + 1);
    let mut out = Tensor::zeros(vec![s[0], s[1], oh, ow]);
    for_each_pool_window(s, size, stride, |o, window| {
        // As reduce_max: a larger value or a NaN wins.
        out.data[o] =
            window.iter().map(|i| x.data[*i]).fold(f64::NEG_INFINITY, |m, v| if v > m || v.is_nan() { v } else { m });
    });
    out
}

fn maxpool_grad(x: &Tensor, y: &Tensor, dy: &Tensor, size: (u64, u64), stride: (u64, u64)) -> Tensor {
    let mut dx = Tensor::zeros(x.shape.clone());
    for_each_pool_window(&x.shape, size, stride, |o, window| {
        let ties = window.iter().filter(|i| x.data[**i] == y.data[o]).count();
        for i in window.iter().filter(|i| x.data[**i] == y.data[o]) {
            dx.data[*i] += dy.data[o] / ties as f64;
        }
    });
    dx
}

fn im2col(x: &Tensor, kernel: (u64, u64), stride: (u64, u64), pad: (u64, u64)) -> Tensor {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let oh = (h + 2 * pad.0 as usize - kernel.0 as usize) / stride.0 as usize + 1;
    let ow = (w + 2 * pad.1 as usize - kernel.1 as usize) / stride.1 as usize + 1;
    let mut out = Tensor::zeros(vec![n, c * (kernel.0 * kernel.1) as usize, oh * ow]);
    for_each_window(n, c, (h, w), kernel, stride, pad, |image, col| out.data[col] = x.data[image]);
    out
}

fn col2im(
    cols: &Tensor,
    kernel: (u64, u64),
    stride: (u64, u64),
    pad: (u64, u64),
    channels: u64,
    image: (u64, u64),
) -> Tensor {
    let n = cols.shape[0];
    let (c, h, w) = (channels as usize, image.0 as usize, image.1 as usize);
    let mut out = Tensor::zeros(vec![n, c, h, w]);
    for_each_window(n, c, (h, w), kernel, stride, pad, |image, col| out.data[image] += cols.data[col]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // Values from Abramowitz & Stegun, table 7.1.
        for (x, e) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
        ] {
            assert!((erf(x) - e).abs() < 1e-15, "erf({x}) = {} not {e}", erf(x));
            assert!((erf(-x) + e).abs() < 1e-15);
        }
    }

    #[test]
    fn dropout_uniform_is_deterministic_and_spread() {
        let u: Vec<f64> = (0..10_000).map(|i| dropout_uniform(7, 1, i)).collect();
        assert_eq!(u[17], dropout_uniform(7, 1, 17));
        let mean = u.iter().sum::<f64>() / u.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        assert!(u.iter().all(|x| (0.0..1.0).contains(x)));
    }

    #[test]
    fn im2col_and_col2im_are_adjoint() {
        // <im2col(x), y> == <x, col2im(y)> for random x, y.
        let x = Tensor::new(vec![2, 3, 5, 4], (0..120).map(|i| ((i * 37 % 11) as f64) - 5.0).collect());
        let cols = im2col(&x, (3, 2), (2, 1), (1, 0));
        let y = Tensor::new(cols.shape.clone(), (0..cols.len()).map(|i| ((i * 13 % 7) as f64) - 3.0).collect());
        let back = col2im(&y, (3, 2), (2, 1), (1, 0), 3, (5, 4));
        let lhs: f64 = cols.data.iter().zip(&y.data).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.data.iter().zip(&back.data).map(|(a, b)| a * b).sum();
        assert_eq!(lhs, rhs);
    }
}
