//! The PTX renderer: every elementwise kernel of every spec (specs/ and the
//! zoo) renders, and NVIDIA's `ptxas` assembles each module for sm_80 and
//! sm_90 (no GPU needed). ptxas comes from the PyPI package
//! `nvidia-cuda-nvcc-cu12`; the test finds it through `MODELC_PTXAS`, then
//! `PATH`. Without it the assembly half is skipped with the reason printed,
//! unless `MODELC_REQUIRE_PTXAS=1` (CI sets it), where that is a failure.
//! One module (xor's) is snapshot-tested.

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

/// The module of `spec`'s optimized training step, and (rendered, elementwise) counts.
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
    let elementwise = kernels.iter().filter(|k| k.kind == KernelKind::Elementwise).count();
    (text, each.iter().filter(|r| r.is_ok()).count(), elementwise)
}

#[test]
fn every_elementwise_kernel_renders_and_ptxas_assembles_it() {
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
            assert_eq!(rendered, elementwise, "{}: every elementwise kernel renders", spec.display());
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
