//! A compiled training step allocates nothing of its own: after the first
//! step at a batch size (which makes that size's layout), steps only call
//! kernels over memory that already exists. The one exception is inside the
//! `gemm` crate, which allocates its packing buffers on every call (one
//! allocation single-threaded, three or four when it splits the work between
//! threads) and offers no way to pass them in. Counted through the global
//! allocator, in a process of its own (threads included), apart: an
//! allocation while a gemm kernel runs (`GEMMS_IN_FLIGHT`) is the crate's,
//! at most four a call; any other is ours, and there must be none.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use modelc::exec::{Batch, Compiled, Executor};
use modelc_compiler::backend::cpu::GEMMS_IN_FLIGHT;
use modelc_compiler::step::StepConfig;

struct Counting;

/// Allocations outside gemm kernels (ours) and inside them (the crate's).
static OURS: AtomicUsize = AtomicUsize::new(0);
static GEMMS: AtomicUsize = AtomicUsize::new(0);

fn count() {
    if GEMMS_IN_FLIGHT.load(Ordering::SeqCst) > 0 {
        GEMMS.fetch_add(1, Ordering::Relaxed);
    } else {
        OURS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator, counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// (ours, the gemm crate's, gemm calls a step) over ten steps.
fn steps_allocate(spec: &str, batch: usize, extra: bool) -> (usize, usize, usize) {
    let (_, program, errors) = modelc_compiler::check_path(Path::new(spec)).expect("readable");
    assert!(errors.is_empty());
    let info = &program.trains[0];
    let model = program.model(&info.model).expect("model");
    let cfg = StepConfig::from_train(info).expect("optimizer");
    let mut exec = Compiled::new(model, &cfg, &modelc::init::init(model, 1).expect("init")).expect("compiles");
    let width = model.nodes[model.inputs[0]].ty.shape.sample_elements() as usize;
    let x: Vec<f32> = (0..batch * width).map(|i| (i % 7) as f32 / 7.0).collect();
    let y: Vec<f32> = (0..batch).map(|i| (i % 10) as f32).collect();
    let b = Batch { n: batch, features: &x, labels: &y };
    // The first steps make the layout (and warm the thread pool up).
    for s in 1..=3 {
        exec.train_step(&b, 1e-3, s, 0).expect("step");
    }
    let (ours, theirs) = (OURS.load(Ordering::SeqCst), GEMMS.load(Ordering::SeqCst));
    for s in 4..=13 {
        exec.train_step(&b, 1e-3, s, 0).expect("step");
        if extra {
            // One allocation of our own, as a step that allocated would make.
            std::hint::black_box(vec![0u8; 16]);
        }
    }
    (OURS.load(Ordering::SeqCst) - ours, GEMMS.load(Ordering::SeqCst) - theirs, exec.gemm_calls(batch))
}

/// One test, so that no other test's allocations run beside the counted
/// steps.
#[test]
fn compiled_steps_allocate_only_inside_gemm() {
    for (spec, batch) in [("specs/mnist_mlp.model", 64), ("specs/lenet5.model", 64), ("specs/mlp_large.model", 32)] {
        let (ours, theirs, gemms) = steps_allocate(spec, batch, false);
        assert_eq!(ours, 0, "{spec}: {ours} allocations of the executor's own in 10 steps at batch {batch}");
        assert!(
            theirs <= 10 * 4 * gemms,
            "{spec}: {theirs} allocations in 10 steps at batch {batch}, more than the gemm crate's {} for {gemms} calls a step",
            10 * 4 * gemms
        );
        println!("{spec}: 0 allocations of ours, {theirs} in the gemm crate in 10 steps at batch {batch} ({gemms} gemm calls a step)");
    }
    // The count can fail: one allocation of ours a step is seen.
    let (ours, _, _) = steps_allocate("specs/mnist_mlp.model", 64, true);
    assert_eq!(ours, 10, "ten allocations outside gemm were made and {ours} counted");
}
