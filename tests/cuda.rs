//! The CUDA backend, in two halves.
//!
//! Without a GPU: a step's launch plan (`backend::cuda::plan`) runs in an
//! emulator, every PTX entry by the PTX emulator of `tests/ptx.rs` and every
//! cuBLAS call by a reference of cuBLAS's own column-major contract (which
//! also checks the leading dimensions cuBLAS would refuse), over one
//! emulated arena and input buffers; the step's outputs must match the
//! reference interpreter. This checks the wiring the GPU runs: arena
//! offsets, views, fills, feedback in place or copied back, and the
//! row-major-to-column-major operand swap of every matmul.
//!
//! With a GPU (`Device::open` succeeds): every spec's steps on the GPU
//! against the interpreter, as `tests/compiled.rs` checks the CPU. Where
//! there is none the test prints why and passes, unless
//! `MODELC_REQUIRE_CUDA=1`, where that is a failure.

use std::collections::HashMap;
use std::path::Path;

use modelc_compiler::backend::cuda::plan::{self, Addr, Blas, Launch, Mem};
use modelc_compiler::backend::{cuda, ptx};
use modelc_compiler::gradcheck::{concrete, random_inputs};
use modelc_compiler::interp;
use modelc_compiler::ir::{Graph, Op};
use modelc_compiler::kernel::fusion::fuse;
use modelc_compiler::kernel::layout;

use crate::compiled::{compare_on, model_and_config};
use crate::ptx::Emu;

/// Emulated device memory: one vector per buffer.
struct Memory(HashMap<Mem, Vec<f32>>);

impl Memory {
    fn read(&self, a: Addr, len: usize) -> Vec<f32> {
        let b = &self.0[&a.mem];
        assert!(a.offset + len <= b.len(), "{:?}: {len} floats at {} past its {}", a.mem, a.offset, b.len());
        b[a.offset..a.offset + len].to_vec()
    }
    fn write(&mut self, a: Addr, v: &[f32]) {
        let b = self.0.get_mut(&a.mem).expect("a buffer");
        assert!(a.offset + v.len() <= b.len(), "{:?}: write past the end", a.mem);
        b[a.offset..a.offset + v.len()].copy_from_slice(v);
    }
}

/// cuBLAS's sgemm (strided batched when `count` > 1), column-major:
/// C = op(A)·op(B) + β·C, with its checks on the leading dimensions.
fn sgemm(mem: &mut Memory, c: &Blas) {
    let (m, n, k) = (c.m as usize, c.n as usize, c.k as usize);
    let (ra, rb) = (if c.ta { k } else { m }, if c.tb { n } else { k });
    assert!(c.lda as usize >= ra.max(1), "lda {} < {ra}: {c:?}", c.lda);
    assert!(c.ldb as usize >= rb.max(1), "ldb {} < {rb}: {c:?}", c.ldb);
    assert!(c.ldc as usize >= m.max(1), "ldc {} < {m}: {c:?}", c.ldc);
    if !c.list.is_empty() {
        assert_eq!(c.list.len(), c.count as usize, "{c:?}");
    }
    for i in 0..c.count as i64 {
        let (oa, ob, oc) = match c.list.get(i as usize) {
            Some(o) => *o,
            None => ((i * c.stride_a) as usize, (i * c.stride_b) as usize, (i * c.stride_c) as usize),
        };
        let a = mem.0[&c.a.mem].clone();
        let b = mem.0[&c.b.mem].clone();
        let (a0, b0, c0) = (c.a.offset + oa, c.b.offset + ob, c.c.offset + oc);
        let out = mem.0.get_mut(&c.c.mem).expect("a buffer");
        for col in 0..n {
            for row in 0..m {
                let mut s = 0f64;
                for p in 0..k {
                    let x = if c.ta { a[a0 + p + row * c.lda as usize] } else { a[a0 + row + p * c.lda as usize] };
                    let y = if c.tb { b[b0 + col + p * c.ldb as usize] } else { b[b0 + p + col * c.ldb as usize] };
                    s += x as f64 * y as f64;
                }
                let at = c0 + row + col * c.ldc as usize;
                // β = 0 does not read C (cuBLAS's contract).
                out[at] = if c.beta == 0.0 { s as f32 } else { (s + c.beta as f64 * out[at] as f64) as f32 };
            }
        }
    }
}

/// Runs `g`'s plan at `batch` on `inputs` in the emulator; the named
/// outputs.
fn emulate(g: &Graph, batch: usize, inputs: &HashMap<String, interp::Tensor>) -> HashMap<String, Vec<f32>> {
    let kernels = fuse(g);
    let (_, entries) = ptx::module(g, &kernels, 90);
    let pairs: Vec<_> = g
        .outputs
        .iter()
        .filter_map(|(name, id)| {
            let x = name.strip_prefix("new.")?;
            let input = g.ids().find(|i| matches!(&g.node(*i).op, Op::Input { name, .. } if name == x))?;
            Some((*id, input))
        })
        .collect();
    let feedback = layout::feedback(g, &kernels, &pairs);
    let p = plan::plan(g, &kernels, &entries, &feedback, batch).expect("plans");
    let mut mem = Memory(HashMap::new());
    mem.0.insert(Mem::Arena, vec![f32::NAN; (p.arena_bytes / 4) as usize]);
    mem.0.insert(Mem::Scratch, vec![f32::NAN; p.scratch_floats]);
    for (i, v) in p.sizes.iter().enumerate() {
        mem.0.insert(Mem::Size(i), vec![*v]);
    }
    for id in g.ids() {
        match &g.node(id).op {
            Op::Input { name, .. } => {
                mem.0.insert(Mem::Input(id), inputs[name].data.iter().map(|v| *v as f32).collect());
            }
            Op::Const { value } => {
                mem.0.insert(Mem::Const(id), vec![*value as f32]);
            }
            _ => {}
        }
    }
    let elems = |id| concrete(&g.ty(id).shape, batch).iter().product::<usize>();
    for l in &p.launches {
        match l {
            Launch::Fill { at, len, value } => mem.write(*at, &vec![*value; *len]),
            Launch::Gemm { calls, .. } => calls.iter().for_each(|c| sgemm(&mut mem, c)),
            Launch::SumMats { from, to, count, len, .. } => {
                let mut bufs = vec![mem.read(*from, count * len), vec![f32::NAN; *len]];
                Emu::new(&ptx::sum_mats()).run(&mut bufs, ((*count as u64) << 32) | *len as u64, 2, 3);
                mem.write(*to, &bufs[1]);
            }
            Launch::CopyBack { from, to, len } => {
                let v = mem.read(*from, *len);
                mem.write(*to, &v);
            }
            Launch::Entry { kernel, args, count, .. } => {
                let k = &kernels[*kernel];
                let text = ptx::render(g, k, &format!("k{kernel}")).expect("renders");
                let values: Vec<_> = k.reads.iter().chain(&k.writes).copied().collect();
                let mut bufs: Vec<Vec<f32>> = values.iter().zip(args).map(|(v, a)| mem.read(*a, elems(*v))).collect();
                Emu::new(&text).run(&mut bufs, *count, 2, 3);
                for (j, w) in k.writes.iter().enumerate() {
                    let _ = w;
                    let slot = k.reads.len() + j;
                    mem.write(args[slot], &bufs[slot]);
                }
            }
        }
    }
    p.outputs.iter().map(|(name, a, len)| (name.clone(), mem.read(*a, *len))).collect()
}

/// Every spec and zoo model file, sorted.
fn all_specs() -> Vec<String> {
    let mut specs: Vec<String> = Vec::new();
    for dir in ["specs", "tests/zoo"] {
        for e in std::fs::read_dir(dir).expect(dir).flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "model") {
                specs.push(p.to_string_lossy().into_owned());
            }
        }
    }
    specs.sort();
    specs
}

/// Whether `spec` checks clean and trains (a train block or a finetune).
fn trains(spec: &str) -> bool {
    let (_, program, errors) = crate::check_spec(Path::new(spec));
    errors.is_empty() && !(program.trains.is_empty() && program.finetunes.is_empty())
}

/// The GPU, or None after printing why the test is skipped (a failure
/// instead under `MODELC_REQUIRE_CUDA`).
fn gpu() -> Option<std::sync::Arc<cuda::Device>> {
    match cuda::Device::open() {
        Ok(d) => Some(d),
        Err(why) => {
            assert!(std::env::var_os("MODELC_REQUIRE_CUDA").is_none(), "MODELC_REQUIRE_CUDA is set, but: {why}");
            println!("skipped: no GPU to run on ({why})");
            None
        }
    }
}

/// max |a − b| / max |b|.
fn normwise(a: &[f32], b: &[f64]) -> f64 {
    let diff = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

fn emulated_step_matches(spec: &str, batch: usize) {
    let (model, cfg, _) = model_and_config(spec);
    let g = modelc_compiler::pipeline::train_step(&model, &cfg).expect("builds").into_graph();
    let inputs = random_inputs(&g, batch, &mut modelc_compiler::rng::Rng::new(5));
    let want = interp::outputs(&g, &inputs).expect("interprets");
    let got = emulate(&g, batch, &inputs);
    let mut worst = 0f64;
    for (name, w) in &want {
        let a = &got[name];
        assert_eq!(a.len(), w.data.len(), "{spec}: `{name}`");
        // As tests/compiled.rs: Adam's update of an element whose gradient
        // is rounding noise has no sign; such elements are left out of the
        // parameters' check (the moments, linear in the gradient, are all
        // checked).
        let (a, b): (Vec<f32>, Vec<f64>) = match want.get(&format!("{name}.exp_avg")) {
            Some(m) => {
                let top = m.data.iter().fold(0f64, |t, x| t.max(x.abs()));
                a.iter()
                    .zip(&w.data)
                    .zip(&m.data)
                    .filter(|(_, m)| m.abs() > 1e-3 * top)
                    .map(|((x, y), _)| (*x, *y))
                    .unzip()
            }
            None => (a.clone(), w.data.clone()),
        };
        let e = normwise(&a, &b);
        assert!(e <= 1e-4, "{spec} at batch {batch}: output `{name}` differs by {e:e} (normwise)");
        worst = worst.max(e);
    }
    println!("{spec} at batch {batch}: {} outputs, worst {worst:.1e} (normwise)", want.len());
}

/// Every spec's and zoo model's step, emulated, against the interpreter.
#[test]
fn emulated_cuda_steps_match_the_interpreter() {
    let mut ran = 0;
    for spec in all_specs().iter().filter(|s| trains(s)) {
        // char_gpt's full size at one sequence (its emulation is the slowest).
        let batch = if spec.ends_with("/char_gpt.model") {
            1
        } else if spec.contains("char_gpt") || spec.contains("attention") {
            2
        } else {
            3
        };
        emulated_step_matches(spec, batch);
        ran += 1;
    }
    assert!(ran >= 28, "only {ran} specs ran");
}

/// The operand swap of every kind of matmul the IR has: plain, either
/// operand transposed, batched with a shared or a batched right operand,
/// summed over the batch, and permuted outputs (attention's heads; one with
/// its matrices transposed). A permute that leaves neither of the
/// product's axes contiguous cannot be a cuBLAS output: the plan refuses it
/// naming the kernel.
#[test]
fn every_gemm_layout_maps_to_cublas() {
    use modelc_compiler::ir::{Dim, Role, Shape, Ty};
    let mut g = Graph::new();
    let x = g.input("x", Role::Data, Ty::f32(Shape::batched(&[5, 3])));
    let w = g.input("w", Role::Param, Ty::f32(Shape(vec![Dim::Fixed(4), Dim::Fixed(3)])));
    let v = g.input("v", Role::Param, Ty::f32(Shape(vec![Dim::Fixed(3), Dim::Fixed(4)])));
    let y = g.input("y", Role::Data, Ty::f32(Shape::batched(&[5, 4])));
    let z = g.input("z", Role::Data, Ty::f32(Shape::batched(&[3, 4])));
    let u = g.input("u", Role::Data, Ty::f32(Shape::batched(&[4, 5])));
    let mut outs = vec![
        g.add(Op::MatMul { ta: false, tb: true }, &[x, w]).expect("x·wᵀ"),
        g.add(Op::MatMul { ta: false, tb: false }, &[x, v]).expect("x·v"),
        g.add(Op::MatMul { ta: true, tb: false }, &[x, y]).expect("xᵀ·y"),
        g.add(Op::MatMul { ta: true, tb: true }, &[x, u]).expect("xᵀ·uᵀ"),
        g.add(Op::MatMul { ta: false, tb: false }, &[x, z]).expect("x·z"),
    ];
    let xy = g.add(Op::MatMul { ta: true, tb: false }, &[x, y]).expect("xᵀ·y");
    outs.push(g.add(Op::Reduce { op: modelc_compiler::ir::ReduceOp::Sum, axes: vec![0] }, &[xy]).expect("a sum"));
    let yx = g.add(Op::MatMul { ta: false, tb: true }, &[y, z]).expect("y·zᵀ");
    outs.push(g.add(Op::Reduce { op: modelc_compiler::ir::ReduceOp::Sum, axes: vec![0] }, &[yx]).expect("a sum"));
    let xz = g.add(Op::MatMul { ta: false, tb: false }, &[x, z]).expect("x·z");
    outs.push(g.add(Op::Permute { perm: vec![1, 0, 2] }, &[xz]).expect("a permute"));
    let xz2 = g.add(Op::MatMul { ta: false, tb: false }, &[x, z]).expect("x·z");
    outs.push(g.add(Op::Permute { perm: vec![0, 2, 1] }, &[xz2]).expect("a permute"));
    for (i, o) in outs.into_iter().enumerate() {
        g.outputs.push((format!("o{i}"), o));
    }
    let g = modelc_compiler::ir::verify::verify(g).expect("verifies").into_graph();
    {
        let mut h = g.clone();
        let xz3 = h.add(Op::MatMul { ta: false, tb: false }, &[x, z]).expect("x·z");
        let p = h.add(Op::Permute { perm: vec![2, 1, 0] }, &[xz3]).expect("a permute");
        h.outputs.push(("strided".into(), p));
        let kernels = fuse(&h);
        let (_, entries) = ptx::module(&h, &kernels, 90);
        let fb = layout::feedback(&h, &kernels, &[]);
        let why = plan::plan(&h, &kernels, &entries, &fb, 3).expect_err("no unit stride");
        assert!(why.contains("cannot run on CUDA") && why.contains("no unit stride"), "{why}");
    }
    for batch in [1, 3] {
        let inputs = random_inputs(&g, batch, &mut modelc_compiler::rng::Rng::new(9));
        let want = interp::outputs(&g, &inputs).expect("interprets");
        let got = emulate(&g, batch, &inputs);
        for (name, w) in &want {
            let e = normwise(&got[name], &w.data);
            assert!(e <= 1e-5, "`{name}` at batch {batch} differs by {e:e}");
        }
    }
}

/// The GPU, when there is one: every spec's steps against the interpreter.
#[test]
fn cuda_steps_match_the_interpreter() {
    let Some(dev) = gpu() else { return };
    println!("running on {} (sm_{})", dev.name, dev.sm);
    // In f32 (a spec's `precision bf16` too: bf16 products are checked by
    // `cuda_bf16_products_round_to_bf16` and by training to accuracy).
    let make: &crate::compiled::Make = &|model, cfg, init| {
        let mut cfg = cfg.clone();
        cfg.bf16 = false;
        Ok(Box::new(modelc::exec::Cuda::new(model, &cfg, init)?) as Box<dyn modelc::exec::Executor>)
    };
    for spec in all_specs().iter().filter(|s| trains(s)) {
        // char_gpt's full size is slow in the interpreter: batch 1.
        let n = if spec.ends_with("char_gpt.model") { 1 } else { 3 };
        compare_on(spec, n, 3, make);
    }
    compare_on("specs/lenet5.model", 64, 2, make);
    compare_on("specs/char_gpt_tiny.model", 64, 2, make);
}

/// A buffer's zeroing is ordered before what is queued after it: 256 MB
/// made and written at once read back as written (zeroed on the legacy
/// default stream, which the device's stream does not wait for, the zeros
/// landed after the first kernels: char_gpt's loss was infinite).
#[test]
fn cuda_buffers_are_zeroed_before_later_work() {
    let Some(dev) = gpu() else { return };
    let n = 1 << 26;
    let values: Vec<f32> = (0..n).map(|i| (i % 7 + 1) as f32).collect();
    for _ in 0..3 {
        let b = cuda::Buffer::from(&dev, &values).expect("a buffer");
        let back = b.download(n).expect("reads");
        let wrong = back.iter().zip(&values).filter(|(a, b)| a != b).count();
        assert_eq!(wrong, 0, "{wrong} of {n} floats were not what was written");
    }
}

/// Steps replayed from a captured CUDA graph compute what launching every
/// kernel does: five steps' losses to 1e-5, the parameters after them to
/// 1e-3 normwise (sums by atomic adds are not in a fixed order), leaving
/// out, as `compare_on` does, the elements whose Adam moment is rounding
/// noise (Adam's first steps turn its sign into a whole step).
#[test]
fn cuda_graph_replays_match_launches() {
    use modelc::exec::{Batch, Cuda, Executor};
    if gpu().is_none() {
        return;
    }
    for (spec, n) in [("specs/lenet5.model", 64), ("specs/char_gpt_tiny.model", 16), ("specs/mnist_mlp.model", 64)] {
        let (model, cfg, lr) = model_and_config(spec);
        let init = modelc::init::init(&model, 3).expect("init");
        let run = |graphs: bool| {
            let mut c = Cuda::new(&model, &cfg, &init).expect("compiles");
            c.use_graphs(graphs);
            let losses: Vec<f64> = (1..=5u64)
                .map(|s| {
                    let (x, y) = crate::compiled::batch(&model, n, s);
                    c.train_step(&Batch { n, features: &x, labels: &y }, lr, s, 7).expect("step").loss
                })
                .collect();
            assert_eq!(c.replays_a_graph(n), graphs, "{spec}");
            (losses, c.parameters(), c.state())
        };
        let ((la, pa, sa), (lb, pb, _)) = (run(true), run(false));
        for (a, b) in la.iter().zip(&lb) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1e-3), "{spec}: loss {a} replayed, {b} launched");
        }
        for (name, (_, a)) in &pa {
            // As `compare_on`: elements whose Adam moment is rounding noise
            // have no sign to agree on.
            let b = &pb[name].1;
            let (a, b): (Vec<f32>, Vec<f32>) = match sa.get(&format!("{name}.exp_avg")) {
                Some((_, m)) => {
                    let top = m.iter().fold(0f32, |t, x| t.max(x.abs()));
                    a.iter().zip(b).zip(m).filter(|(_, m)| m.abs() > 1e-3 * top).map(|((x, y), _)| (*x, *y)).unzip()
                }
                None => (a.clone(), b.clone()),
            };
            let e = crate::compiled::normwise(&a, &b);
            assert!(e <= 1e-3, "{spec}: `{name}` differs by {e:e} after five steps");
        }
        println!("{spec}: five steps replayed from a graph match launching every kernel");
    }
}

/// `precision bf16` on the CPU trains in f32 and says so.
#[test]
fn bf16_on_the_cpu_says_it_runs_f32() {
    let out = std::env::temp_dir().join(format!("modelc-bf16-cpu-{}", std::process::id()));
    let out_s = out.to_string_lossy().to_string();
    let args = ["train", "specs/lenet5_bf16.model", "--limit", "128", "--test-limit", "32", "--set", "epochs=1"];
    let (code, stdout, err) = crate::modelc(&[&args[..], &["--out", &out_s]].concat());
    let _ = std::fs::remove_dir_all(&out);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("`precision bf16` applies on a GPU (--device cuda); this run is f32 throughout"),
        "{stdout}"
    );
    assert!(stdout.contains("compiled CPU code (Cranelift + gemm, f32)"), "{stdout}");
}

/// Without a GPU, `--device cuda` is an error that says what is missing,
/// before anything is written.
#[test]
fn device_cuda_without_a_gpu_is_a_clear_error() {
    let Err(why) = cuda::Device::open() else {
        println!("skipped: this machine has a GPU");
        return;
    };
    let out = std::env::temp_dir().join(format!("modelc-no-gpu-{}", std::process::id()));
    let out_s = out.to_string_lossy().to_string();
    let (code, _, err) = crate::modelc(&["train", "specs/xor.model", "--device", "cuda", "--out", &out_s]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&why), "the error names what is missing: {err}");
    assert!(!out.join("log.jsonl").exists(), "nothing is written");
    let _ = std::fs::remove_dir_all(&out);
}

/// `precision bf16` multiplies on the tensor cores: the first steps' losses
/// move off the f32 ones by bf16's rounding (they differ, by under 2%).
#[test]
fn cuda_bf16_products_round_to_bf16() {
    use modelc::exec::{Batch, Cuda, Executor};
    if gpu().is_none() {
        return;
    }
    // LeNet-5: strided-batched and summed products; char_gpt_tiny: the
    // pointer-array calls of attention's heads too.
    for (spec, n) in [("specs/lenet5.model", 64), ("specs/char_gpt_tiny.model", 16)] {
        let (model, mut cfg, lr) = model_and_config(spec);
        let init = modelc::init::init(&model, 3).expect("init");
        let losses = |cfg: &modelc_compiler::step::StepConfig| -> Vec<f64> {
            let mut c = Cuda::new(&model, cfg, &init).expect("compiles");
            (1..=3u64)
                .map(|s| {
                    let (x, y) = crate::compiled::batch(&model, n, s);
                    c.train_step(&Batch { n, features: &x, labels: &y }, lr, s, 7).expect("step").loss
                })
                .collect()
        };
        cfg.bf16 = false;
        let f32s = losses(&cfg);
        cfg.bf16 = true;
        let bf16s = losses(&cfg);
        for (a, b) in bf16s.iter().zip(&f32s) {
            let rel = (a - b).abs() / b.abs();
            assert!(rel > 0.0 && rel < 2e-2, "{spec}: bf16 loss {a} against f32 {b}: relative {rel:e}");
        }
        println!("{spec}, three steps: bf16 losses {bf16s:?}, f32 {f32s:?}");
    }
}
