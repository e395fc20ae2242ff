//! A compiled training step allocates nothing of its own: after the first
//! step at a batch size (which makes that size's layout), steps only call
//! kernels over memory that already exists. The one exception is inside the
//! `gemm` crate, which allocates its packing buffers on every call (one
//! allocation single-threaded, three or four when it splits the work between
//! threads) and offers no way to pass them in; the test allows four per call. Counted through
//! the global allocator, in a process of its own (threads included).

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use modelc::exec::{Batch, Compiled, Executor};
use modelc_compiler::step::StepConfig;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn steps_allocate(spec: &str, batch: usize) -> (usize, usize) {
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
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for s in 4..=13 {
        exec.train_step(&b, 1e-3, s, 0).expect("step");
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before, exec.gemm_calls(batch))
}

#[test]
fn compiled_steps_allocate_only_inside_gemm() {
    for (spec, batch) in [("specs/mnist_mlp.model", 64), ("specs/lenet5.model", 64), ("specs/mlp_large.model", 32)] {
        let (n, gemms) = steps_allocate(spec, batch);
        assert!(
            n <= 10 * 4 * gemms,
            "{spec}: {n} allocations in 10 steps at batch {batch}, more than the gemm crate's {} for {gemms} calls a step",
            10 * 4 * gemms
        );
        println!("{spec}: {n} allocations in 10 steps at batch {batch} ({gemms} gemm calls a step)");
    }
}
