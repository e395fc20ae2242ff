//! The PTX renderer: every kernel of every spec (specs/ and the zoo) but
//! gemms (cuBLAS calls) renders, and NVIDIA's `ptxas` assembles each module for sm_80 and
//! sm_90 (no GPU needed). ptxas comes from the PyPI package
//! `nvidia-cuda-nvcc-cu12`; the test finds it through `MODELC_PTXAS`, then
//! `PATH`. Without it the assembly half is skipped with the reason printed,
//! unless `MODELC_REQUIRE_PTXAS=1` (CI sets it), where that is a failure.
//! One module (xor's) is snapshot-tested. And since no GPU may be at hand,
//! an emulator of the PTX subset the renderer writes runs every rendered
//! kernel of nine specs against the reference interpreter.

use std::path::{Path, PathBuf};
use std::process::Command;

use modelc_compiler::kernel::fusion::{fuse, KernelKind};
use modelc_compiler::step::StepConfig;

fn ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MODELC_PTXAS") {
        return Some(PathBuf::from(p));
    }
    let ok = Command::new("ptxas").arg("--version").output().is_ok_and(|o| o.status.success());
    ok.then(|| PathBuf::from("ptxas"))
}

fn specs() -> Vec<PathBuf> {
    let mut v = Vec::new();
    for dir in ["specs", "tests/zoo"] {
        for e in std::fs::read_dir(dir).expect(dir).flatten() {
            if e.path().extension().is_some_and(|x| x == "model") {
                v.push(e.path());
            }
        }
    }
    v.sort();
    v
}

/// The module of `spec`'s optimized training step, and (rendered, expected)
/// counts: every kernel but gemms (cuBLAS calls).
fn module(spec: &Path, sm: u32) -> (String, usize, usize) {
    let (_, program, errors) = crate::check_spec(spec);
    assert!(errors.is_empty(), "{}: {errors:?}", spec.display());
    let (model, cfg) = match program.finetunes.first() {
        Some(f) => (f.model.clone(), StepConfig::from_train(&f.stages[0]).expect("optimizer")),
        None => {
            let t = program.trains.last().expect("a train block");
            (program.model(&t.model).expect("model").clone(), StepConfig::from_train(t).expect("optimizer"))
        }
    };
    let g = modelc_compiler::pipeline::train_step(&model, &cfg).expect("builds");
    let kernels = fuse(&g);
    let (text, each) = modelc_compiler::backend::ptx::module(&g, &kernels, sm);
    let expected = kernels.iter().filter(|k| k.kind != KernelKind::Gemm).count();
    (text, each.iter().filter(|r| r.is_ok()).count(), expected)
}

#[test]
fn every_kernel_renders_and_ptxas_assembles_it() {
    let assembler = ptxas();
    let required = std::env::var("MODELC_REQUIRE_PTXAS").is_ok_and(|v| v == "1");
    match &assembler {
        None if required => panic!("MODELC_REQUIRE_PTXAS=1 but ptxas was not found (MODELC_PTXAS or PATH)"),
        None => println!(
            "skipped: assembling with ptxas (not found: `pip install nvidia-cuda-nvcc-cu12` and set MODELC_PTXAS to its bin/ptxas); rendering is still checked"
        ),
        Some(p) => println!("assembling with {}", p.display()),
    }
    let dir = std::env::temp_dir().join(format!("modelc-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut jobs = Vec::new();
    let (mut total, mut modules) = (0, 0);
    for spec in specs() {
        for sm in [80, 90] {
            let (text, rendered, elementwise) = module(&spec, sm);
            assert_eq!(rendered, elementwise, "{}: every kernel but gemms renders", spec.display());
            assert!(text.is_ascii(), "{}: ptxas reads ASCII", spec.display());
            total += rendered;
            modules += 1;
            let name = spec.file_stem().expect("a name").to_string_lossy().into_owned();
            let file = dir.join(format!("{name}.sm_{sm}.ptx"));
            std::fs::write(&file, text).expect("write");
            jobs.push((spec.clone(), sm, file));
        }
    }
    if let Some(ptxas) = &assembler {
        // Two at a time (this machine has two cores).
        let halves = jobs.split_at(jobs.len() / 2);
        let run = |part: &[(PathBuf, u32, PathBuf)]| -> Vec<String> {
            part.iter()
                .filter_map(|(spec, sm, file)| {
                    let out = Command::new(ptxas)
                        .args(["--gpu-name", &format!("sm_{sm}"), "-o"])
                        .arg(file.with_extension("cubin"))
                        .arg(file)
                        .output()
                        .expect("ptxas runs");
                    (!out.status.success())
                        .then(|| format!("{} sm_{sm}: {}", spec.display(), String::from_utf8_lossy(&out.stderr)))
                })
                .collect()
        };
        let failures: Vec<String> = std::thread::scope(|s| {
            let a = s.spawn(|| run(halves.0));
            let mut b = run(halves.1);
            b.extend(a.join().expect("thread"));
            b
        });
        assert!(failures.is_empty(), "ptxas refused:\n{}", failures.join("\n"));
        println!("ptxas assembled {modules} modules ({total} kernels) for sm_80 and sm_90");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// xor's whole training step as PTX (reviewed by hand: grid-stride loops,
/// sigmoid's exp, the loss's log, the reductions, the SGD update).
#[test]
fn xor_module_snapshot() {
    let (text, rendered, elementwise) = module(Path::new("specs/xor.model"), 80);
    assert_eq!(rendered, elementwise);
    insta::assert_snapshot!("ptx_xor_sm80", text);
}

// ---------------------------------------------------------------- an emulator of the PTX we emit

/// A sequential emulator of the PTX subset the renderer writes, so that
/// every rendered kernel is run and compared with the reference
/// interpreter on a machine without a GPU. Threads run one after another
/// (each through its whole grid-stride loop); f32 arithmetic is Rust's
/// (IEEE round-to-nearest, as `.rn`); `max`/`min` return the non-NaN
/// operand as PTX's do. Memory: a pointer is (buffer + 1) << 40 | byte
/// offset. An instruction it does not know is a test failure.
/// One instruction: its guard (negated?, predicate), opcode, operands.
type Instruction = (Option<(bool, String)>, String, Vec<String>);

pub(crate) struct Emu {
    lines: Vec<Instruction>,
    labels: std::collections::HashMap<String, usize>,
    params: Vec<String>,
}

impl Emu {
    pub(crate) fn new(entry: &str) -> Emu {
        let (mut lines, mut labels, mut params) = (Vec::new(), std::collections::HashMap::new(), Vec::new());
        for raw in entry.lines() {
            let l = raw.trim();
            if let Some(p) = l.strip_prefix(".param .u64 ") {
                params.push(p.trim_end_matches(',').to_string());
                continue;
            }
            if l.is_empty() || l.starts_with("//") || l.starts_with('.') || l == "{" || l == "}" || l == ")" {
                continue;
            }
            if let Some(label) = l.strip_suffix(':') {
                labels.insert(label.to_string(), lines.len());
                continue;
            }
            let l = l.trim_end_matches(';');
            let (pred, rest) = match l.strip_prefix('@') {
                Some(r) => {
                    let (p, rest) = r.split_once(' ').expect("a predicated instruction");
                    let (neg, p) = p.strip_prefix('!').map_or((false, p), |p| (true, p));
                    (Some((neg, p.to_string())), rest)
                }
                None => (None, l),
            };
            let (op, args) = rest.split_once(' ').unwrap_or((rest, ""));
            let args: Vec<String> = args.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
            lines.push((pred, op.to_string(), args));
        }
        Emu { lines, labels, params }
    }

    /// Runs the entry on `bufs` (operands in parameter order) over `n`
    /// elements with `blocks` × `threads` threads.
    pub(crate) fn run(&self, bufs: &mut [Vec<f32>], n: u64, blocks: u64, threads: u64) {
        for block in 0..blocks {
            for thread in 0..threads {
                self.thread(bufs, n, (block, threads, thread, blocks));
            }
        }
    }

    fn thread(&self, bufs: &mut [Vec<f32>], n: u64, (ctaid, ntid, tid, nctaid): (u64, u64, u64, u64)) {
        let mut reg: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        let val = |reg: &std::collections::HashMap<&str, u64>, a: &str| -> u64 {
            match a {
                "%ctaid.x" => ctaid,
                "%ntid.x" => ntid,
                "%tid.x" => tid,
                "%nctaid.x" => nctaid,
                _ if a.starts_with('%') => *reg.get(a).unwrap_or_else(|| panic!("register {a} read before written")),
                _ if a.starts_with("0f") => u32::from_str_radix(&a[2..], 16).expect("f32 literal") as u64,
                _ if a.starts_with("0x") => u64::from_str_radix(&a[2..], 16).expect("hex literal"),
                _ => a.parse::<i64>().map(|v| v as u64).unwrap_or_else(|_| a.parse::<u64>().expect("an integer")),
            }
        };
        let f = |v: u64| f32::from_bits(v as u32);
        let fb = |x: f32| x.to_bits() as u64;
        let addr = |reg: &std::collections::HashMap<&str, u64>, a: &str| -> (usize, usize) {
            let p = val(reg, a.trim_start_matches('[').trim_end_matches(']'));
            (((p >> 40) - 1) as usize, ((p & ((1 << 40) - 1)) / 4) as usize)
        };
        let mut pc = 0;
        let mut steps = 0u64;
        while pc < self.lines.len() {
            steps += 1;
            assert!(steps < 50_000_000, "the kernel does not finish");
            let (pred, op, a) = &self.lines[pc];
            pc += 1;
            if let Some((neg, p)) = pred {
                if (val(&reg, p) != 0) == *neg {
                    continue;
                }
            }
            let v = |i: usize| val(&reg, &a[i]);
            let out: Option<u64> = match op.as_str() {
                "ret" => return,
                "bra" | "bra.uni" => {
                    pc = self.labels[&a[0]];
                    None
                }
                "ld.param.u64" => {
                    let name = a[1].trim_start_matches('[').trim_end_matches(']');
                    let i = self.params.iter().position(|p| p == name).expect("a parameter");
                    Some(if i < bufs.len() { ((i as u64) + 1) << 40 } else { n })
                }
                "ld.global.f32" | "ld.global.u32" => {
                    let (b, i) = addr(&reg, &a[1]);
                    Some(fb(bufs[b][i]))
                }
                "st.global.f32" => {
                    let (b, i) = addr(&reg, &a[0]);
                    bufs[b][i] = f(v(1));
                    None
                }
                "red.global.add.f32" => {
                    let (b, i) = addr(&reg, &a[0]);
                    bufs[b][i] += f(v(1));
                    None
                }
                "atom.global.cas.b32" => {
                    let (b, i) = addr(&reg, &a[1]);
                    let old = fb(bufs[b][i]);
                    if old == v(2) {
                        bufs[b][i] = f(v(3));
                    }
                    Some(old)
                }
                "cvta.to.global.u64" | "mov.u32" | "mov.u64" | "mov.f32" | "mov.b32" => Some(v(1)),
                "mul.wide.u32" => Some((v(1) as u32 as u64) * (v(2) as u32 as u64)),
                "cvt.u64.u32" => Some(v(1) as u32 as u64),
                "add.u64" => Some(v(1).wrapping_add(v(2))),
                "div.u64" => Some(v(1) / v(2)),
                "rem.u64" => Some(v(1) % v(2)),
                "mul.lo.u64" => Some(v(1).wrapping_mul(v(2))),
                "mad.lo.u64" => Some(v(1).wrapping_mul(v(2)).wrapping_add(v(3))),
                "shr.u64" => Some(v(1) >> v(2)),
                "xor.b64" => Some(v(1) ^ v(2)),
                "and.b64" => Some(v(1) & v(2)),
                "trap" => panic!("the kernel trapped (an index out of range)"),
                // Each thread runs as a warp of its own (lane 0 alone): the
                // warp-combining path of a reduction runs only on a GPU
                // (tests/cuda.rs), the per-lane path here.
                "activemask.b32" => Some(1),
                "sub.u64" => Some(v(1).wrapping_sub(v(2))),
                "min.u64" => Some(v(1).min(v(2))),
                "setp.eq.u64" => Some((v(1) == v(2)) as u64),
                "setp.neu.f32" => Some((f(v(1)) != f(v(2))) as u64),
                "or.pred" => Some(((v(1) != 0) || (v(2) != 0)) as u64),
                "selp.b64" => Some(if v(3) != 0 { v(1) } else { v(2) }),
                "cvt.rn.f32.u64" => Some(fb(v(1) as f32)),
                "setp.ge.u64" => Some((v(1) >= v(2)) as u64),
                "setp.lt.u64" => Some((v(1) < v(2)) as u64),
                "setp.gt.u64" => Some((v(1) > v(2)) as u64),
                "setp.eq.u32" => Some((v(1) as u32 == v(2) as u32) as u64),
                "setp.ne.u32" => Some((v(1) as u32 != v(2) as u32) as u64),
                "add.rn.f32" => Some(fb(f(v(1)) + f(v(2)))),
                "sub.rn.f32" => Some(fb(f(v(1)) - f(v(2)))),
                "mul.rn.f32" => Some(fb(f(v(1)) * f(v(2)))),
                "div.rn.f32" => Some(fb(f(v(1)) / f(v(2)))),
                "fma.rn.f32" => Some(fb(f(v(1)).mul_add(f(v(2)), f(v(3))))),
                "max.f32" => Some(fb(f(v(1)).max(f(v(2))))),
                "min.f32" => Some(fb(f(v(1)).min(f(v(2))))),
                "neg.f32" => Some(fb(-f(v(1)))),
                "abs.f32" => Some(fb(f(v(1)).abs())),
                "sqrt.rn.f32" => Some(fb(f(v(1)).sqrt())),
                "rcp.rn.f32" => Some(fb(1.0 / f(v(1)))),
                "setp.lt.f32" => Some((f(v(1)) < f(v(2))) as u64),
                "setp.gt.f32" => Some((f(v(1)) > f(v(2))) as u64),
                "setp.eq.f32" => Some((f(v(1)) == f(v(2))) as u64),
                "setp.nan.f32" => Some((f(v(1)).is_nan() || f(v(2)).is_nan()) as u64),
                "setp.ltu.f32" => Some(
                    (f(v(1)).partial_cmp(&f(v(2))) != Some(std::cmp::Ordering::Greater) && f(v(1)) != f(v(2))) as u64,
                ),
                "setp.gtu.f32" => {
                    Some((f(v(1)).partial_cmp(&f(v(2))) != Some(std::cmp::Ordering::Less) && f(v(1)) != f(v(2))) as u64)
                }
                "selp.f32" | "selp.b32" => Some(if v(3) != 0 { v(1) } else { v(2) }),
                "cvt.rni.f32.f32" => Some(fb(f(v(1)).round_ties_even())),
                "cvt.rni.s32.f32" => Some(f(v(1)).round_ties_even() as i32 as u32 as u64),
                "cvt.rn.f32.s32" => Some(fb(v(1) as u32 as i32 as f32)),
                "cvt.rzi.u64.f32" => Some(f(v(1)) as u64),
                "add.s32" => Some((v(1) as u32 as i32).wrapping_add(v(2) as u32 as i32) as u32 as u64),
                "shl.b32" => Some(((v(1) as u32) << v(2)) as u64),
                "shr.u32" => Some(((v(1) as u32) >> v(2)) as u64),
                "and.b32" => Some((v(1) as u32 & v(2) as u32) as u64),
                "or.b32" => Some((v(1) as u32 | v(2) as u32) as u64),
                other => panic!("the emulator does not know `{other}`"),
            };
            if let Some(x) = out {
                reg.insert(a[0].as_str(), x);
            }
        }
    }
}

/// Every rendered kernel of these specs, run by the emulator on the
/// interpreter's values of its reads, writes what the interpreter computes
/// (1e-5 relative): broadcasts and loop nests, reductions (sum and max),
/// exp/ln/tanh/erf, dropout masks, causal masks, optimizer updates.
#[test]
fn rendered_kernels_compute_what_the_interpreter_does() {
    use modelc_compiler::gradcheck::{concrete, random_inputs};
    use modelc_compiler::interp;
    use modelc_compiler::ir::Op;
    use modelc_compiler::kernel::loops::{loop_shape, reduction_identity};
    let specs = [
        "specs/xor.model",
        "specs/mnist_mlp.model",
        "specs/lenet5.model",
        "specs/char_gpt_tiny.model",
        "tests/zoo/attention_tiny.model",
        "tests/zoo/dropout_mask.model",
        "tests/zoo/conv_options.model",
        "tests/zoo/adamw_clip.model",
        "tests/zoo/edge_shapes.model",
    ];
    let (mut ran, mut ops) = (0, std::collections::BTreeSet::new());
    let mut graphs: Vec<(String, modelc_compiler::ir::Graph)> = specs
        .iter()
        .map(|spec| {
            let (_, program, errors) = crate::check_spec(Path::new(spec));
            assert!(errors.is_empty(), "{spec}");
            let t = program.trains.last().expect("a train block");
            let model = program.model(&t.model).expect("model");
            let cfg = StepConfig::from_train(t).expect("optimizer");
            (spec.to_string(), modelc_compiler::pipeline::train_step(model, &cfg).expect("builds").into_graph())
        })
        .collect();
    // A pad no spec's step keeps (the gradients of an attention layer's
    // slices tile their axis and become a concat, `passes::pad_sum`).
    {
        use modelc_compiler::ir::{Graph, Role, Shape, Ty};
        let mut g = Graph::new();
        let x = g.input("x", Role::Data, Ty::f32(Shape::batched(&[3, 5])));
        let y = g.add(Op::Pad { axis: 2, before: 2, after: 4 }, &[x]).expect("types");
        g.outputs.push(("y".into(), y));
        graphs.push(("pad".into(), modelc_compiler::ir::verify::verify(g).expect("verifies").into_graph()));
    }
    for (spec, g) in graphs {
        let kernels = fuse(&g);
        let batch = 2;
        let inputs = random_inputs(&g, batch, &mut modelc_compiler::rng::Rng::new(3));
        let values = interp::run(&g, &inputs).expect("runs");
        for (i, k) in kernels.iter().enumerate() {
            let Ok(entry) = modelc_compiler::backend::ptx::render(&g, k, &format!("k{i}")) else { continue };
            let mut bufs: Vec<Vec<f32>> =
                k.reads.iter().map(|r| values[r].data.iter().map(|v| *v as f32).collect()).collect();
            for w in &k.writes {
                bufs.push(vec![0.0; concrete(&g.ty(*w).shape, batch).iter().product()]);
            }
            if let Some((r, v)) = reduction_identity(&g, k) {
                let j = k.reads.len() + k.writes.iter().position(|w| *w == r).expect("written");
                bufs[j].fill(v);
            }
            // Elementwise kernels take the loop's length, copy kernels the batch.
            let n = match k.kind {
                KernelKind::Copy => batch as u64,
                _ => concrete(&loop_shape(&g, k).expect("a loop"), batch).iter().product::<usize>() as u64,
            };
            Emu::new(&entry).run(&mut bufs, n, 2, 3);
            for (j, w) in k.writes.iter().enumerate() {
                let got = &bufs[k.reads.len() + j];
                for (e, (a, b)) in got.iter().zip(&values[w].data).enumerate() {
                    let ok =
                        *a as f64 == *b || (*a as f64 - b).abs() <= 1e-5 * b.abs() + 1e-6 || (a.is_nan() && b.is_nan());
                    assert!(ok, "{spec}: kernel {i} writing {} element {e}: {a} vs {b}", g.node(*w).op.name());
                }
            }
            for id in &k.nodes {
                ops.insert(match &g.node(*id).op {
                    Op::Unary { op } => format!("{op:?}"),
                    Op::Binary { op } => format!("{op:?}"),
                    other => other.name(),
                });
            }
            ran += 1;
        }
    }
    println!("ran {ran} rendered kernels; ops covered: {ops:?}");
    for op in [
        "Exp",
        "Log",
        "Tanh",
        "Erf",
        "dropout_mask",
        "causal_mask",
        "reduce_sum",
        "reduce_max",
        "Max",
        "Div",
        "permute",
        "slice",
        "pad",
        "concat",
        "one_hot",
        "gather",
        "scatter_add",
        "argmax",
        "im2col",
        "col2im",
        "maxpool",
        "maxpool_grad",
    ] {
        assert!(ops.iter().any(|o| o.as_str() == op), "no rendered kernel used {op}: {ops:?}");
    }
}
