//! The CUDA backend: a fused graph's kernels on an NVIDIA GPU, the CPU
//! backend's sibling over the same kernel stage. Elementwise and
//! data-movement kernels are the PTX renderer's entries
//! ([`super::ptx::module`], `.target` from the device), loaded once per
//! program; matmuls are cuBLAS calls (pedantic f32, no TF32; bf16 tensor
//! cores with f32 accumulation under `precision bf16`); values
//! live in one device arena per program laid out by the kernel stage's
//! memory plan, inputs in their own device buffers. [`plan`] turns the
//! kernels into launches at a batch size (no CUDA needed, so the tests
//! emulate it); [`Program`] resolves them to device addresses and queues
//! them, in order, on the device's one stream.
//!
//! Everything a program does goes through that stream (a non-blocking one,
//! which cuBLAS uses too): allocations are zeroed on it, batch inputs are
//! queued on it from page-locked staging memory (other uploads are copied
//! and waited for), reads wait for it. The
//! first run at a batch size launches every kernel (and CUDA loads them);
//! the second is captured into a CUDA graph, which later runs replay in
//! one launch (cuBLAS has its workspace up front for that). A step then
//! costs the host the batch's copies, one graph launch and the reads of
//! the loss and metrics; `MODELC_CUDA_GRAPH=0` launches every kernel every
//! run instead, and a profile ([`Program::start_profile`]) times each
//! launch with CUDA events.
//!
//! CUDA is loaded at run time (cudarc's dynamic loading): building and
//! testing need no CUDA, and [`Device::open`] on a machine without a driver,
//! cuBLAS or GPU returns an error saying which, never a panic.

pub mod plan;

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{result as blas_result, sys as blas_sys, CudaBlas};
use cudarc::driver::{result as drv, sys, CudaContext};

use crate::gradcheck::concrete;
use crate::ir::verify::VerifiedGraph;
use crate::ir::{Graph, NodeId, Op, Shape};
use crate::kernel::fusion::{self, Kernel};
use crate::kernel::layout;
use plan::{Addr, Launch, Mem, Plan};

/// cuBLAS's workspace: given up front, so that its calls can be captured
/// in a CUDA graph (a call that allocated its own could not).
const BLAS_WORKSPACE: usize = 32 << 20;

/// One GPU: its context (the primary one), one stream everything runs on in
/// order, cuBLAS on that stream with its workspace.
pub struct Device {
    // cuBLAS goes before the stream and the context it uses.
    blas: CudaBlas,
    workspace: sys::CUdeviceptr,
    stream: Arc<cudarc::driver::CudaStream>,
    ctx: Arc<CudaContext>,
    /// "NVIDIA H200".
    pub name: String,
    /// Compute capability as 10·major + minor (90 for Hopper).
    pub sm: u32,
    multiprocessors: u32,
}

fn drv_err(what: &str, e: drv::DriverError) -> String {
    let hint = match e.0 {
        sys::cudaError_enum::CUDA_ERROR_LAUNCH_FAILED | sys::cudaError_enum::CUDA_ERROR_ILLEGAL_INSTRUCTION => {
            " (a kernel stopped: an index out of range, such as a label or token id past its classes, stops a GPU kernel)"
        }
        sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY => " (the GPU's memory is full)",
        _ => "",
    };
    format!("{what}: {e}{hint}")
}

impl Device {
    /// The first GPU, or why there is none: no driver library, no cuBLAS,
    /// no device.
    pub fn open() -> Result<Arc<Device>, String> {
        // SAFETY: probing only tries to load the libraries.
        if !unsafe { sys::is_culib_present() } {
            return Err("no CUDA driver: libcuda.so was not found (modelc loads it at run time; \
                        install NVIDIA's driver, or add its folder to LD_LIBRARY_PATH)"
                .into());
        }
        // SAFETY: as above.
        if !unsafe { blas_sys::is_culib_present() } {
            return Err("no cuBLAS: libcublas.so (CUDA 12 or 13) was not found; install it (the PyPI package \
                        nvidia-cublas-cu12 has it) and add its folder to LD_LIBRARY_PATH"
                .into());
        }
        drv::init().map_err(|e| drv_err("initializing CUDA", e))?;
        let count = drv::device::get_count().map_err(|e| drv_err("counting GPUs", e))?;
        if count < 1 {
            return Err("the CUDA driver found no GPU".into());
        }
        let ctx = CudaContext::new(0).map_err(|e| drv_err("opening GPU 0", e))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| drv_err("reading the compute capability", e))?;
        if major < 7 {
            return Err(format!("GPU 0 has compute capability {major}.{minor}; modelc's PTX needs 7.0 or later"));
        }
        let name = ctx.name().map_err(|e| drv_err("reading the GPU's name", e))?;
        let multiprocessors = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| drv_err("reading the multiprocessor count", e))? as u32;
        let stream = ctx.new_stream().map_err(|e| drv_err("making a stream", e))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("starting cuBLAS: {e}"))?;
        // SAFETY: a plain allocation, handed to cuBLAS and freed on drop.
        let workspace =
            unsafe { drv::malloc_sync(BLAS_WORKSPACE) }.map_err(|e| drv_err("allocating cuBLAS's workspace", e))?;
        // Full f32 products, as the CPU and the interpreter compute them.
        // SAFETY: a valid handle and workspace (freed if cuBLAS refuses it).
        let set = unsafe {
            blas_sys::cublasSetMathMode(*blas.handle(), blas_sys::cublasMath_t::CUBLAS_PEDANTIC_MATH)
                .result()
                .map_err(|e| format!("setting cuBLAS's math mode: {e}"))
                .and_then(|_| {
                    blas_sys::cublasSetWorkspace_v2(*blas.handle(), workspace as *mut c_void, BLAS_WORKSPACE)
                        .result()
                        .map_err(|e| format!("setting cuBLAS's workspace: {e}"))
                })
        };
        if let Err(e) = set {
            // SAFETY: allocated above, used by nothing.
            let _ = unsafe { drv::free_sync(workspace) };
            return Err(e);
        }
        Ok(Arc::new(Device { blas, workspace, stream, ctx, name, sm: (major * 10 + minor) as u32, multiprocessors }))
    }

    fn stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    fn bind(&self) -> Result<(), String> {
        self.ctx.bind_to_thread().map_err(|e| drv_err("binding the CUDA context", e))
    }

    /// Waits for everything queued.
    pub fn synchronize(&self) -> Result<(), String> {
        self.bind()?;
        // SAFETY: the device's own stream.
        unsafe { sys::cuStreamSynchronize(self.stream()) }.result().map_err(|e| drv_err("running on the GPU", e))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.bind().is_ok() {
            // SAFETY: allocated once in `open`; cuBLAS is done with it once
            // the stream is idle.
            unsafe {
                let _ = sys::cuStreamSynchronize(self.stream());
                let _ = drv::free_sync(self.workspace);
            }
        }
    }
}

/// Floats in device memory (zeroed when made), freed on drop.
pub struct Buffer {
    ptr: sys::CUdeviceptr,
    len: usize,
    dev: Arc<Device>,
}

impl Buffer {
    pub fn new(dev: &Arc<Device>, len: usize) -> Result<Buffer, String> {
        dev.bind()?;
        let bytes = len.max(1) * 4;
        // SAFETY: a plain allocation, zeroed before use.
        let ptr = unsafe { drv::malloc_sync(bytes) }.map_err(|e| drv_err(&format!("allocating {bytes} bytes"), e))?;
        let b = Buffer { ptr, len, dev: dev.clone() };
        // On the device's stream, waited for: a plain cuMemsetD32 would run
        // on the legacy default stream, which the device's non-blocking
        // stream does not wait for, and could zero the memory after the
        // first kernels wrote it (a large arena did: char_gpt's loss was
        // infinite at its first step).
        // SAFETY: `len` floats at `ptr`.
        unsafe { sys::cuMemsetD32Async(ptr, 0, len.max(1), dev.stream()) }
            .result()
            .map_err(|e| drv_err("zeroing", e))?;
        dev.synchronize()?;
        Ok(b)
    }

    /// A buffer holding `values`.
    pub fn from(dev: &Arc<Device>, values: &[f32]) -> Result<Buffer, String> {
        let mut b = Buffer::new(dev, values.len())?;
        b.upload(values)?;
        Ok(b)
    }

    /// A buffer holding device addresses (cuBLAS's pointer arrays).
    fn from_addresses(dev: &Arc<Device>, values: &[u64]) -> Result<Buffer, String> {
        let b = Buffer::new(dev, 2 * values.len())?;
        dev.bind()?;
        // SAFETY: 8·len bytes fit at `ptr`; waited for before `values` goes.
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(b.ptr, values.as_ptr() as *const c_void, 8 * values.len(), dev.stream())
                .result()
                .map_err(|e| drv_err("copying to the GPU", e))?;
        }
        dev.synchronize()?;
        Ok(b)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Copies `values` to the start of the buffer (waits for earlier work).
    pub fn upload(&mut self, values: &[f32]) -> Result<(), String> {
        upload(&self.dev, self.ptr, self.len, values)
    }

    /// The first `len` floats (waits for earlier work).
    pub fn download(&self, len: usize) -> Result<Vec<f32>, String> {
        download(&self.dev, self.ptr, len.min(self.len))
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if self.dev.synchronize().is_ok() {
            // SAFETY: allocated by `malloc_sync`, freed once, after every
            // use queued on the device's stream.
            let _ = unsafe { drv::free_sync(self.ptr) };
        }
    }
}

/// Copies `values` to `ptr` in stream order and waits for the copy (the
/// host memory is the caller's).
fn upload(dev: &Device, ptr: u64, room: usize, values: &[f32]) -> Result<(), String> {
    if values.len() > room {
        return Err(format!("{} values for a device buffer of {room}", values.len()));
    }
    dev.bind()?;
    // SAFETY: `values.len()` floats fit at `ptr`; the copy is waited for
    // before `values` can go.
    unsafe {
        sys::cuMemcpyHtoDAsync_v2(ptr, values.as_ptr() as *const c_void, 4 * values.len(), dev.stream())
            .result()
            .map_err(|e| drv_err("copying to the GPU", e))?;
    }
    dev.synchronize()
}

/// `len` floats at `ptr`, after everything queued before.
fn download(dev: &Device, ptr: u64, len: usize) -> Result<Vec<f32>, String> {
    let mut out = vec![0f32; len];
    download_into(dev, ptr, &mut out)?;
    Ok(out)
}

fn download_into(dev: &Device, ptr: u64, out: &mut [f32]) -> Result<(), String> {
    dev.bind()?;
    // SAFETY: `out.len()` floats at `ptr`; waited for before returning.
    unsafe {
        sys::cuMemcpyDtoHAsync_v2(out.as_mut_ptr() as *mut c_void, ptr, 4 * out.len(), dev.stream())
            .result()
            .map_err(|e| drv_err("running the step on the GPU", e))?;
    }
    dev.synchronize().map_err(|e| e.replace("running on the GPU", "running the step on the GPU"))
}

/// Page-locked host memory, which copies to the device without staging.
struct Pinned {
    ptr: *mut f32,
    len: usize,
    dev: Arc<Device>,
}

impl Pinned {
    fn new(dev: &Arc<Device>, len: usize) -> Result<Pinned, String> {
        dev.bind()?;
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: an allocation of `len` floats, freed on drop.
        unsafe { sys::cuMemHostAlloc(&mut p, 4 * len.max(1), 0) }
            .result()
            .map_err(|e| drv_err("allocating page-locked memory", e))?;
        Ok(Pinned { ptr: p as *mut f32, len, dev: dev.clone() })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if self.dev.synchronize().is_ok() {
            // SAFETY: allocated by cuMemHostAlloc; no copy from it is in
            // flight once the stream is idle.
            let _ = unsafe { sys::cuMemFreeHost(self.ptr as *mut c_void) };
        }
    }
}

/// The loaded module of a program's PTX.
struct Module(sys::CUmodule, Arc<Device>);

impl Drop for Module {
    fn drop(&mut self) {
        if self.1.bind().is_ok() {
            // SAFETY: loaded once, unloaded once, after every launch (the
            // program's buffers and layouts go first).
            let _ = unsafe { drv::module::unload(self.0) };
        }
    }
}

enum Storage {
    /// The program's own buffer, and the page-locked memory its values
    /// are staged in.
    Owned(Buffer, Option<Pinned>),
    Bound(u64, usize),
}

struct Input {
    node: NodeId,
    shape: Shape,
    storage: Storage,
}

/// A launch with device addresses.
enum Ready {
    Entry { f: sys::CUfunction, params: Vec<u64>, grid: u32 },
    Fill { ptr: u64, len: usize, bits: u32 },
    Gemm(Vec<ReadyBlas>),
    Copy { from: u64, to: u64, len: usize },
}

struct ReadyBlas {
    call: plan::Blas,
    a: u64,
    b: u64,
    c: u64,
    /// A call over pointer arrays: the As, then the Bs, then the Cs.
    arrays: Option<Buffer>,
}

/// A captured run, replayed by one launch.
struct CudaGraph(sys::CUgraphExec, Arc<Device>);

impl Drop for CudaGraph {
    fn drop(&mut self) {
        if self.1.bind().is_ok() {
            // SAFETY: instantiated once, destroyed once, when no replay is
            // in flight (layouts go after a synchronizing read or at drop).
            unsafe {
                let _ = sys::cuStreamSynchronize(self.1.stream());
                let _ = sys::cuGraphExecDestroy(self.0);
            }
        }
    }
}

/// A program's launches at one batch size.
struct Layout {
    ready: Vec<Ready>,
    /// Named outputs: device address and element count.
    outputs: HashMap<String, (u64, usize)>,
    /// The launches captured as a CUDA graph (from the second run on).
    graph: Option<CudaGraph>,
    runs: u64,
    /// Per launch, the kernel it belongs to (the kernel count for
    /// copy-backs), for the profile.
    kernel_of: Vec<usize>,
    _sizes: Buffer,
    _scratch: Buffer,
}

/// Time per kernel from CUDA events around each launch, when profiling.
#[derive(Clone, Default)]
struct Spent {
    ms: f64,
    runs: u64,
}

/// Whether runs are captured into CUDA graphs by default: yes unless
/// `MODELC_CUDA_GRAPH=0` (for comparing; the profile never captures).
fn graphs_enabled() -> bool {
    std::env::var("MODELC_CUDA_GRAPH").map_or(true, |v| v != "0")
}

/// A fused graph compiled for a GPU (see the module docs).
pub struct Program {
    layouts: HashMap<usize, Layout>,
    arena: Option<Buffer>,
    inputs: HashMap<String, Input>,
    consts: HashMap<NodeId, Buffer>,
    functions: HashMap<usize, sys::CUfunction>,
    /// The entry that adds a gemm kernel's products ([`super::ptx::SUM_MATS`]).
    sum_mats: sys::CUfunction,
    _module: Module,
    g: Graph,
    kernels: Vec<Kernel>,
    entries: Vec<Result<String, String>>,
    feedback: layout::Feedback,
    capacity: usize,
    /// Per kernel, when profiling ([`Program::start_profile`]).
    profile: Option<Vec<Spent>>,
    /// Whether runs are captured into CUDA graphs.
    graphs: bool,
    /// Matrix products on bf16 tensor cores (f32 accumulation and outputs).
    bf16: bool,
    dev: Arc<Device>,
}

fn elements(shape: &Shape, batch: usize) -> usize {
    concrete(shape, batch).iter().product()
}

impl Program {
    /// Renders `g`'s kernels for `dev` and loads them. Inputs start as zeros.
    pub fn new(dev: &Arc<Device>, g: VerifiedGraph) -> Result<Program, String> {
        let g = g.into_graph();
        let kernels = fusion::fuse(&g);
        // PTX 7.8 names targets up to sm_90; the driver compiles sm_90 PTX
        // for later GPUs.
        let (text, entries) = super::ptx::module(&g, &kernels, dev.sm.min(90));
        dev.bind()?;
        let c = std::ffi::CString::new(text).map_err(|_| "the PTX holds a NUL byte")?;
        // SAFETY: a NUL-terminated PTX module.
        let module = unsafe { drv::module::load_data(c.as_ptr() as *const c_void) }
            .map_err(|e| drv_err("loading the PTX module", e))?;
        let module = Module(module, dev.clone());
        let mut functions = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            if let Ok(name) = e {
                let cname = std::ffi::CString::new(name.as_str()).expect("entry names are plain");
                // SAFETY: the module is loaded and holds the entry.
                let f = unsafe { drv::module::get_function(module.0, cname) }
                    .map_err(|e| drv_err(&format!("finding entry {name}"), e))?;
                functions.insert(i, f);
            }
        }
        let cname = std::ffi::CString::new(super::ptx::SUM_MATS).expect("a plain name");
        // SAFETY: every module holds this entry.
        let sum_mats = unsafe { drv::module::get_function(module.0, cname) }
            .map_err(|e| drv_err(&format!("finding entry {}", super::ptx::SUM_MATS), e))?;
        let mut inputs = HashMap::new();
        let mut consts = HashMap::new();
        for id in g.ids() {
            match &g.node(id).op {
                Op::Input { name, .. } => {
                    let shape = g.ty(id).shape.clone();
                    let storage = Storage::Owned(Buffer::new(dev, elements(&shape, 1))?, None);
                    inputs.insert(name.clone(), Input { node: id, shape, storage });
                }
                Op::Const { value } => {
                    consts.insert(id, Buffer::from(dev, &[*value as f32])?);
                }
                _ => {}
            }
        }
        let pairs: Vec<(NodeId, NodeId)> = g
            .outputs
            .iter()
            .filter_map(|(name, id)| Some((*id, inputs.get(name.strip_prefix("new.")?)?.node)))
            .collect();
        let feedback = layout::feedback(&g, &kernels, &pairs);
        // Every kernel has its launch or building the plan says which not.
        plan::plan(&g, &kernels, &entries, &feedback, 1)?;
        Ok(Program {
            layouts: HashMap::new(),
            arena: None,
            inputs,
            consts,
            functions,
            sum_mats,
            _module: module,
            g,
            kernels,
            entries,
            feedback,
            capacity: 1,
            profile: None,
            graphs: graphs_enabled(),
            bf16: false,
            dev: dev.clone(),
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.g
    }

    pub fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// Input names with their shapes.
    pub fn input_shapes(&self) -> Vec<(String, Shape)> {
        let mut v: Vec<(String, Shape)> = self.inputs.iter().map(|(k, i)| (k.clone(), i.shape.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn has_input(&self, name: &str) -> bool {
        self.inputs.contains_key(name)
    }

    /// Makes input `name` live in `len` floats of device memory at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be a device allocation of this program's device holding
    /// `len` floats, valid for as long as the program exists and not used
    /// by anything else while it runs.
    pub unsafe fn bind(&mut self, name: &str, ptr: u64, len: usize) -> Result<(), String> {
        let input = self.inputs.get_mut(name).ok_or_else(|| format!("the program has no input `{name}`"))?;
        if input.shape.has_batch() || elements(&input.shape, 1) != len {
            return Err(format!("input `{name}` of shape {} cannot live in {len} floats", input.shape));
        }
        input.storage = Storage::Bound(ptr, len);
        self.layouts.clear();
        Ok(())
    }

    /// Makes input buffers hold at least `batch` samples.
    fn reserve(&mut self, batch: usize) -> Result<(), String> {
        if batch <= self.capacity {
            return Ok(());
        }
        for input in self.inputs.values_mut() {
            if let Storage::Owned(b, staging) = &mut input.storage {
                let len = elements(&input.shape, batch);
                if len > b.len() {
                    *b = Buffer::new(&self.dev, len)?;
                    *staging = None;
                }
            }
        }
        self.capacity = batch;
        self.layouts.clear();
        Ok(())
    }

    /// Copies `values` into input `name` for a run at `batch`.
    pub fn upload(&mut self, name: &str, batch: usize, values: &[f32]) -> Result<(), String> {
        self.reserve(batch)?;
        let dev = self.dev.clone();
        let input = self.inputs.get_mut(name).ok_or_else(|| format!("the program has no input `{name}`"))?;
        let len = elements(&input.shape, batch);
        if values.len() != len {
            return Err(format!("input `{name}`: {} values for a batch of {batch} that needs {len}", values.len()));
        }
        match &mut input.storage {
            Storage::Owned(b, staging) => {
                if staging.as_ref().is_none_or(|p| p.len < b.len()) {
                    *staging = Some(Pinned::new(&dev, b.len())?);
                }
                let p = staging.as_ref().expect("made above");
                // The last copy from this memory is done (already so when
                // the last run's outputs were read: then this waits for
                // nothing).
                dev.synchronize()?;
                // SAFETY: `p` holds at least `len` floats, none in flight.
                unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), p.ptr, len) };
                dev.bind()?;
                // SAFETY: `len` floats at both ends.
                unsafe {
                    sys::cuMemcpyHtoDAsync_v2(b.ptr(), p.ptr as *const c_void, 4 * len, dev.stream())
                        .result()
                        .map_err(|e| drv_err("copying to the GPU", e))?;
                }
                // Queued, not waited for: the run that reads it follows in
                // the same stream.
                Ok(())
            }
            Storage::Bound(p, n) => upload(&dev, *p, *n, values),
        }
    }

    fn input_ptr(&self, id: NodeId) -> u64 {
        let Op::Input { name, .. } = &self.g.node(id).op else { unreachable!("an input") };
        match &self.inputs[name].storage {
            Storage::Owned(b, _) => b.ptr(),
            Storage::Bound(p, _) => *p,
        }
    }

    /// The launches at `batch`, as data (what [`Program::run`] runs).
    pub fn plan(&self, batch: usize) -> Result<Plan, String> {
        plan::plan(&self.g, &self.kernels, &self.entries, &self.feedback, batch)
    }

    fn layout(&mut self, batch: usize) -> Result<(), String> {
        self.reserve(batch)?;
        if self.layouts.contains_key(&batch) {
            return Ok(());
        }
        let plan = self.plan(batch)?;
        // Fills belong to the entry after them.
        let mut kernel_of = vec![self.kernels.len(); plan.launches.len()];
        let mut next = self.kernels.len();
        for (i, l) in plan.launches.iter().enumerate().rev() {
            match l {
                Launch::Entry { kernel, .. } | Launch::Gemm { kernel, .. } | Launch::SumMats { kernel, .. } => {
                    next = *kernel
                }
                Launch::CopyBack { .. } => next = self.kernels.len(),
                Launch::Fill { .. } => {}
            }
            kernel_of[i] = next;
        }
        let floats = (plan.arena_bytes / 4) as usize;
        if self.arena.as_ref().is_none_or(|a| a.len() < floats) {
            self.layouts.clear();
            self.arena = None;
            self.arena = Some(Buffer::new(&self.dev, floats)?);
        }
        let sizes = Buffer::from(&self.dev, &plan.sizes)?;
        let scratch = Buffer::new(&self.dev, plan.scratch_floats)?;
        let arena = self.arena.as_ref().expect("made above").ptr();
        let at = |a: Addr| -> u64 {
            let base = match a.mem {
                Mem::Arena => arena,
                Mem::Input(x) => self.input_ptr(x),
                Mem::Const(c) => self.consts[&c].ptr(),
                Mem::Size(i) => sizes.ptr() + 4 * i as u64,
                Mem::Scratch => scratch.ptr(),
                Mem::Null => return 0,
            };
            base + 4 * a.offset as u64
        };
        let most = self.dev.multiprocessors.max(1) * 16;
        let ready = plan
            .launches
            .iter()
            .map(|l| -> Result<Ready, String> {
                Ok(match l {
                    Launch::Entry { kernel, args, count, threads, .. } => {
                        let mut params: Vec<u64> = args.iter().map(|a| at(*a)).collect();
                        params.push(*count);
                        let blocks = threads.div_ceil(super::ptx::BLOCK as u64).clamp(1, most as u64) as u32;
                        Ready::Entry { f: self.functions[kernel], params, grid: blocks }
                    }
                    Launch::Fill { at: a, len, value } => Ready::Fill { ptr: at(*a), len: *len, bits: value.to_bits() },
                    Launch::Gemm { calls, .. } => Ready::Gemm(
                        calls
                            .iter()
                            .map(|c| {
                                let (a, b, cc) = (at(c.a), at(c.b), at(c.c));
                                let arrays = if c.list.is_empty() {
                                    None
                                } else {
                                    let mut v: Vec<u64> = c.list.iter().map(|o| a + 4 * o.0 as u64).collect();
                                    v.extend(c.list.iter().map(|o| b + 4 * o.1 as u64));
                                    v.extend(c.list.iter().map(|o| cc + 4 * o.2 as u64));
                                    Some(Buffer::from_addresses(&self.dev, &v))
                                };
                                Ok(ReadyBlas { call: c.clone(), a, b, c: cc, arrays: arrays.transpose()? })
                            })
                            .collect::<Result<Vec<_>, String>>()?,
                    ),
                    Launch::CopyBack { from, to, len } => Ready::Copy { from: at(*from), to: at(*to), len: *len },
                    Launch::SumMats { from, to, count, len, .. } => {
                        let blocks = (*len as u64).div_ceil(super::ptx::BLOCK as u64).clamp(1, most as u64) as u32;
                        let packed = ((*count as u64) << 32) | *len as u64;
                        Ready::Entry { f: self.sum_mats, params: vec![at(*from), at(*to), packed], grid: blocks }
                    }
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let outputs = plan.outputs.iter().map(|(name, a, n)| (name.clone(), (at(*a), *n))).collect();
        let layout = Layout { ready, outputs, graph: None, runs: 0, kernel_of, _sizes: sizes, _scratch: scratch };
        self.layouts.insert(batch, layout);
        Ok(())
    }

    /// Queues a run on `batch` samples (inputs uploaded for that batch).
    /// Errors of the kernels themselves surface at the next read. The first
    /// run at a batch size launches every kernel; the second captures them
    /// into a CUDA graph, which every later run replays in one launch.
    pub fn run(&mut self, batch: usize) -> Result<(), String> {
        self.layout(batch)?;
        self.dev.bind()?;
        let stream = self.dev.stream();
        let handle = *self.dev.blas.handle();
        // cuBLAS picks its kernels when called (or captured): the math
        // mode of this program's products first.
        let mode = if self.bf16 {
            blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH
        } else {
            blas_sys::cublasMath_t::CUBLAS_PEDANTIC_MATH
        };
        // SAFETY: the device's handle.
        unsafe { blas_sys::cublasSetMathMode(handle, mode) }
            .result()
            .map_err(|e| format!("setting cuBLAS's math mode: {e}"))?;
        let bf16 = self.bf16;
        let layout = self.layouts.get_mut(&batch).expect("made above");
        layout.runs += 1;
        if let Some(spent) = &mut self.profile {
            // The first run at a batch size loads every kernel it uses
            // (CUDA loads modules lazily, cuBLAS's too): not timed.
            if layout.runs > 1 {
                return enqueue_timed(&layout.ready, stream, handle, bf16, &layout.kernel_of, spent);
            }
            return enqueue(&layout.ready, stream, handle, bf16);
        }
        if let Some(g) = &layout.graph {
            // SAFETY: an instantiated graph of this layout's launches.
            return unsafe { sys::cuGraphLaunch(g.0, stream) }.result().map_err(|e| drv_err("launching the step", e));
        }
        if layout.runs < 2 || !self.graphs {
            return enqueue(&layout.ready, stream, handle, bf16);
        }
        // SAFETY: capture on this thread of launches on the device's stream.
        unsafe { sys::cuStreamBeginCapture_v2(stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) }
            .result()
            .map_err(|e| drv_err("capturing the step", e))?;
        let queued = enqueue(&layout.ready, stream, handle, bf16);
        let mut graph: sys::CUgraph = std::ptr::null_mut();
        // SAFETY: ends the capture begun above, whatever happened inside.
        let ended = unsafe { sys::cuStreamEndCapture(stream, &mut graph) }.result();
        if let Err(e) = queued {
            if ended.is_ok() && !graph.is_null() {
                // SAFETY: captured above, never instantiated.
                let _ = unsafe { sys::cuGraphDestroy(graph) };
            }
            return Err(e);
        }
        ended.map_err(|e| drv_err("capturing the step", e))?;
        let mut exec: sys::CUgraphExec = std::ptr::null_mut();
        // SAFETY: a captured graph, instantiated once, then destroyed (the
        // executable graph is independent of it).
        let made = unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0) }.result();
        // SAFETY: as above.
        let _ = unsafe { sys::cuGraphDestroy(graph) };
        made.map_err(|e| drv_err("instantiating the step's graph", e))?;
        let g = CudaGraph(exec, self.dev.clone());
        // SAFETY: as above.
        unsafe { sys::cuGraphLaunch(g.0, stream) }.result().map_err(|e| drv_err("launching the step", e))?;
        layout.graph = Some(g);
        Ok(())
    }

    /// Multiplies matrices with inputs rounded to bfloat16 on the tensor
    /// cores, accumulating and writing f32 (cuBLAS's
    /// `CUBLAS_COMPUTE_32F_FAST_16BF`), instead of in pedantic f32.
    /// Everything else stays f32, in memory too.
    pub fn set_bf16(&mut self, on: bool) {
        self.bf16 = on;
        for l in self.layouts.values_mut() {
            // Captured with the other mode: launched again, then recaptured.
            l.graph = None;
            l.runs = 0;
        }
    }

    /// Captures runs into CUDA graphs (the default) or launches every
    /// kernel every run.
    pub fn use_graphs(&mut self, on: bool) {
        self.graphs = on;
        for l in self.layouts.values_mut() {
            l.graph = None;
            l.runs = 0;
        }
    }

    /// Whether the runs at `batch` replay a captured CUDA graph.
    pub fn replays_a_graph(&self, batch: usize) -> bool {
        self.layouts.get(&batch).is_some_and(|l| l.graph.is_some())
    }

    /// Starts timing every launch (CUDA events around each; runs are no
    /// longer captured into graphs while profiling, and the first run at
    /// each batch size, which loads the kernels, is not timed).
    pub fn start_profile(&mut self) -> Result<(), String> {
        let mut v = 0;
        // SAFETY: writes one int.
        unsafe { sys::cuDriverGetVersion(&mut v) }.result().map_err(|e| drv_err("reading the driver's version", e))?;
        if v < 12080 {
            return Err(format!(
                "the profile needs a CUDA 12.8 driver or later (cuEventElapsedTime_v2); this one is {}.{}",
                v / 1000,
                v % 1000 / 10
            ));
        }
        self.profile = Some(vec![Spent::default(); self.kernels.len() + 1]);
        Ok(())
    }

    /// Kernels by GPU time since `start_profile`, most first: (kernel index,
    /// what it is, milliseconds, runs). Fills are counted with their
    /// kernel; copy-backs under the last index.
    pub fn profile(&self) -> Vec<(usize, String, f64, u64)> {
        let Some(spent) = &self.profile else { return Vec::new() };
        let mut rows: Vec<(usize, String, f64, u64)> = spent
            .iter()
            .enumerate()
            .filter(|(_, s)| s.runs > 0)
            .map(|(i, s)| {
                let what = match self.kernels.get(i) {
                    Some(k) => {
                        let ops: Vec<String> = k.nodes.iter().map(|n| self.g.node(*n).op.name()).collect();
                        format!("{:?} {}", k.kind, ops.join(" "))
                    }
                    None => "copy-backs".into(),
                };
                (i, what, s.ms, s.runs)
            })
            .collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        rows
    }

    /// Output `name` of the last run at `batch` (waits for it).
    pub fn output(&self, name: &str, batch: usize) -> Result<Vec<f32>, String> {
        let (ptr, n) = self
            .layouts
            .get(&batch)
            .and_then(|l| l.outputs.get(name))
            .ok_or_else(|| format!("no output `{name}` at batch {batch}"))?;
        download(&self.dev, *ptr, *n)
    }

    /// Whether the graph has output `name`.
    pub fn has_output(&self, name: &str) -> bool {
        self.g.outputs.iter().any(|(k, _)| k == name)
    }
}

/// Queues `ready` on `stream`.
fn enqueue(ready: &[Ready], stream: sys::CUstream, handle: blas_sys::cublasHandle_t, bf16: bool) -> Result<(), String> {
    ready.iter().try_for_each(|r| enqueue_one(r, stream, handle, bf16))
}

fn enqueue_one(r: &Ready, stream: sys::CUstream, handle: blas_sys::cublasHandle_t, bf16: bool) -> Result<(), String> {
    match r {
        Ready::Entry { f, params, grid } => {
            let mut p: Vec<*mut c_void> = params.iter().map(|v| v as *const u64 as *mut c_void).collect();
            // SAFETY: the entry takes these u64 parameters (pointers into
            // live buffers, then the count).
            unsafe { drv::launch_kernel(*f, (*grid, 1, 1), (super::ptx::BLOCK, 1, 1), 0, stream, &mut p) }
                .map_err(|e| drv_err("launching a kernel", e))
        }
        Ready::Fill { ptr, len, bits } => {
            // SAFETY: `len` floats at `ptr`.
            unsafe { sys::cuMemsetD32Async(*ptr, *bits, *len, stream) }
                .result()
                .map_err(|e| drv_err("filling a buffer", e))
        }
        Ready::Gemm(calls) => calls.iter().try_for_each(|c| if bf16 { gemm_bf16(handle, c) } else { gemm(handle, c) }),
        Ready::Copy { from, to, len } => {
            // SAFETY: `len` floats at both, not overlapping.
            unsafe { sys::cuMemcpyDtoDAsync_v2(*to, *from, *len * 4, stream) }
                .result()
                .map_err(|e| drv_err("copying back", e))
        }
    }
}

/// Queues `ready` with an event pair around each launch, waits, and adds
/// the times to the launches' kernels.
fn enqueue_timed(
    ready: &[Ready],
    stream: sys::CUstream,
    handle: blas_sys::cublasHandle_t,
    bf16: bool,
    kernel_of: &[usize],
    spent: &mut [Spent],
) -> Result<(), String> {
    let event = || -> Result<sys::CUevent, String> {
        let mut e: sys::CUevent = std::ptr::null_mut();
        // SAFETY: a new event, destroyed below.
        unsafe { sys::cuEventCreate(&mut e, 0) }.result().map_err(|e| drv_err("making an event", e))?;
        Ok(e)
    };
    let mut events = Vec::with_capacity(ready.len() + 1);
    events.push(event()?);
    // SAFETY: events recorded on the device's stream.
    unsafe { sys::cuEventRecord(events[0], stream) }.result().map_err(|e| drv_err("recording an event", e))?;
    for r in ready {
        enqueue_one(r, stream, handle, bf16)?;
        let e = event()?;
        // SAFETY: as above.
        unsafe { sys::cuEventRecord(e, stream) }.result().map_err(|e| drv_err("recording an event", e))?;
        events.push(e);
    }
    // SAFETY: the device's stream.
    unsafe { sys::cuStreamSynchronize(stream) }.result().map_err(|e| drv_err("running the step on the GPU", e))?;
    let mut counted = vec![false; spent.len()];
    for (i, k) in kernel_of.iter().enumerate().take(ready.len()) {
        let mut ms = 0f32;
        // SAFETY: both events recorded and complete.
        unsafe { sys::cuEventElapsedTime_v2(&mut ms, events[i], events[i + 1]) }
            .result()
            .map_err(|e| drv_err("reading an event", e))?;
        spent[*k].ms += ms as f64;
        if !counted[*k] {
            spent[*k].runs += 1;
            counted[*k] = true;
        }
    }
    for e in events {
        // SAFETY: made above, used no more.
        let _ = unsafe { sys::cuEventDestroy_v2(e) };
    }
    Ok(())
}

/// A product as `gemm` computes it, on bf16 tensor cores: f32 operands
/// rounded to bfloat16 inside cuBLAS, f32 accumulation and output.
fn gemm_bf16(handle: blas_sys::cublasHandle_t, r: &ReadyBlas) -> Result<(), String> {
    use blas_sys::cudaDataType::CUDA_R_32F as F32;
    let c = &r.call;
    let op =
        |t: bool| if t { blas_sys::cublasOperation_t::CUBLAS_OP_T } else { blas_sys::cublasOperation_t::CUBLAS_OP_N };
    let (alpha, beta) = (1f32, c.beta);
    let (pa, pb) = (&alpha as *const f32 as *const c_void, &beta as *const f32 as *const c_void);
    let compute = blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF;
    let algo = blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT;
    // SAFETY: as `gemm`.
    let status = unsafe {
        if let Some(arrays) = &r.arrays {
            let n = c.count as u64;
            let base = arrays.ptr();
            blas_sys::cublasGemmBatchedEx(
                handle,
                op(c.ta),
                op(c.tb),
                c.m,
                c.n,
                c.k,
                pa,
                base as *const *const c_void,
                F32,
                c.lda,
                (base + 8 * n) as *const *const c_void,
                F32,
                c.ldb,
                pb,
                (base + 16 * n) as *const *mut c_void,
                F32,
                c.ldc,
                c.count,
                compute,
                algo,
            )
        } else {
            blas_sys::cublasGemmStridedBatchedEx(
                handle,
                op(c.ta),
                op(c.tb),
                c.m,
                c.n,
                c.k,
                pa,
                r.a as *const c_void,
                F32,
                c.lda,
                c.stride_a,
                r.b as *const c_void,
                F32,
                c.ldb,
                c.stride_b,
                pb,
                r.c as *mut c_void,
                F32,
                c.ldc,
                c.stride_c,
                c.count,
                compute,
                algo,
            )
        }
    };
    status.result().map_err(|e| format!("cuBLAS gemm in bf16 ({}×{}×{}, {} calls): {e}", c.m, c.n, c.k, c.count))
}

fn gemm(handle: blas_sys::cublasHandle_t, r: &ReadyBlas) -> Result<(), String> {
    let c = &r.call;
    let op =
        |t: bool| if t { blas_sys::cublasOperation_t::CUBLAS_OP_T } else { blas_sys::cublasOperation_t::CUBLAS_OP_N };
    let (alpha, beta) = (1f32, c.beta);
    // SAFETY: the plan's dimensions and strides keep every access inside
    // the operands' buffers; α and β live on the host for the call.
    let res = unsafe {
        if let Some(arrays) = &r.arrays {
            let n = c.count as u64;
            let base = arrays.ptr();
            blas_sys::cublasSgemmBatched(
                handle,
                op(c.ta),
                op(c.tb),
                c.m,
                c.n,
                c.k,
                &alpha,
                base as *const *const f32,
                c.lda,
                (base + 8 * n) as *const *const f32,
                c.ldb,
                &beta,
                (base + 16 * n) as *const *mut f32,
                c.ldc,
                c.count,
            )
            .result()
        } else if c.count == 1 {
            blas_result::sgemm(
                handle,
                op(c.ta),
                op(c.tb),
                c.m,
                c.n,
                c.k,
                &alpha,
                r.a as *const f32,
                c.lda,
                r.b as *const f32,
                c.ldb,
                &beta,
                r.c as *mut f32,
                c.ldc,
            )
        } else {
            blas_result::sgemm_strided_batched(
                handle,
                op(c.ta),
                op(c.tb),
                c.m,
                c.n,
                c.k,
                &alpha,
                r.a as *const f32,
                c.lda,
                c.stride_a,
                r.b as *const f32,
                c.ldb,
                c.stride_b,
                &beta,
                r.c as *mut f32,
                c.ldc,
                c.stride_c,
                c.count,
            )
        }
    };
    res.map_err(|e| format!("cuBLAS sgemm ({}×{}×{}, {} calls): {e}", c.m, c.n, c.k, c.count))
}
