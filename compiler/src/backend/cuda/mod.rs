//! The CUDA backend: a fused graph's kernels on an NVIDIA GPU, the CPU
//! backend's sibling over the same kernel stage. Elementwise and
//! data-movement kernels are the PTX renderer's entries
//! ([`super::ptx::module`], `.target` from the device), loaded once per
//! program; matmuls are cuBLAS `sgemm` calls (pure f32: no TF32); values
//! live in one device arena per program laid out by the kernel stage's
//! memory plan, inputs in their own device buffers. [`plan`] turns the
//! kernels into launches at a batch size (no CUDA needed, so the tests
//! emulate it); [`Program`] resolves them to device addresses and runs
//! them on the context's default stream, in order.
//!
//! CUDA is loaded at run time (cudarc's dynamic loading): building and
//! testing need no CUDA, and [`Device::open`] on a machine without a driver,
//! cuBLAS or GPU returns an error saying which, never a panic.
//!
//! What a step costs on the host: one launch per kernel (one `sgemm` call,
//! or one strided-batched call, per gemm kernel in most graphs), the batch
//! uploaded before, and whatever outputs the caller reads after.

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

/// One GPU: its context (the primary one), cuBLAS on the default stream.
pub struct Device {
    ctx: Arc<CudaContext>,
    blas: CudaBlas,
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
        let blas = CudaBlas::new(ctx.default_stream()).map_err(|e| format!("starting cuBLAS: {e}"))?;
        // Full f32 products, as the CPU and the interpreter compute them.
        // SAFETY: a valid handle.
        unsafe { blas_sys::cublasSetMathMode(*blas.handle(), blas_sys::cublasMath_t::CUBLAS_PEDANTIC_MATH) }
            .result()
            .map_err(|e| format!("setting cuBLAS's math mode: {e}"))?;
        Ok(Arc::new(Device { ctx, blas, name, sm: (major * 10 + minor) as u32, multiprocessors }))
    }

    fn bind(&self) -> Result<(), String> {
        self.ctx.bind_to_thread().map_err(|e| drv_err("binding the CUDA context", e))
    }

    /// Waits for everything queued.
    pub fn synchronize(&self) -> Result<(), String> {
        self.bind()?;
        self.ctx.synchronize().map_err(|e| drv_err("running on the GPU", e))
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
        // SAFETY: `len` floats at `ptr`.
        unsafe { sys::cuMemsetD32_v2(ptr, 0, len.max(1)) }.result().map_err(|e| drv_err("zeroing", e))?;
        Ok(b)
    }

    /// A buffer holding `values`.
    pub fn from(dev: &Arc<Device>, values: &[f32]) -> Result<Buffer, String> {
        let mut b = Buffer::new(dev, values.len())?;
        b.upload(values)?;
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
        if self.dev.bind().is_ok() {
            // SAFETY: allocated by `malloc_sync`, freed once.
            let _ = unsafe { drv::free_sync(self.ptr) };
        }
    }
}

fn upload(dev: &Device, ptr: u64, room: usize, values: &[f32]) -> Result<(), String> {
    if values.len() > room {
        return Err(format!("{} values for a device buffer of {room}", values.len()));
    }
    dev.bind()?;
    // SAFETY: `values.len()` floats fit at `ptr`; a synchronous copy.
    unsafe { drv::memcpy_htod_sync(ptr, values) }.map_err(|e| drv_err("copying to the GPU", e))
}

fn download(dev: &Device, ptr: u64, len: usize) -> Result<Vec<f32>, String> {
    dev.bind()?;
    let mut out = vec![0f32; len];
    // SAFETY: `len` floats at `ptr`; a synchronous copy after queued work.
    unsafe { drv::memcpy_dtoh_sync(&mut out, ptr) }.map_err(|e| drv_err("running the step on the GPU", e))?;
    Ok(out)
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
    Owned(Buffer),
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
}

/// A program's launches at one batch size.
struct Layout {
    ready: Vec<Ready>,
    /// Named outputs: device address and element count.
    outputs: HashMap<String, (u64, usize)>,
    _sizes: Buffer,
}

/// A fused graph compiled for a GPU (see the module docs).
pub struct Program {
    layouts: HashMap<usize, Layout>,
    arena: Option<Buffer>,
    inputs: HashMap<String, Input>,
    consts: HashMap<NodeId, Buffer>,
    functions: HashMap<usize, sys::CUfunction>,
    _module: Module,
    g: Graph,
    kernels: Vec<Kernel>,
    entries: Vec<Result<String, String>>,
    feedback: layout::Feedback,
    capacity: usize,
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
        let (text, entries) = super::ptx::module(&g, &kernels, dev.sm);
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
        let mut inputs = HashMap::new();
        let mut consts = HashMap::new();
        for id in g.ids() {
            match &g.node(id).op {
                Op::Input { name, .. } => {
                    let shape = g.ty(id).shape.clone();
                    let storage = Storage::Owned(Buffer::new(dev, elements(&shape, 1))?);
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
            _module: module,
            g,
            kernels,
            entries,
            feedback,
            capacity: 1,
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
            if let Storage::Owned(b) = &mut input.storage {
                let len = elements(&input.shape, batch);
                if len > b.len() {
                    *b = Buffer::new(&self.dev, len)?;
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
        let input = self.inputs.get(name).ok_or_else(|| format!("the program has no input `{name}`"))?;
        let len = elements(&input.shape, batch);
        if values.len() != len {
            return Err(format!("input `{name}`: {} values for a batch of {batch} that needs {len}", values.len()));
        }
        let (ptr, room) = match &input.storage {
            Storage::Owned(b) => (b.ptr(), b.len()),
            Storage::Bound(p, n) => (*p, *n),
        };
        upload(&self.dev, ptr, room, values)
    }

    fn input_ptr(&self, id: NodeId) -> u64 {
        let Op::Input { name, .. } = &self.g.node(id).op else { unreachable!("an input") };
        match &self.inputs[name].storage {
            Storage::Owned(b) => b.ptr(),
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
        let floats = (plan.arena_bytes / 4) as usize;
        if self.arena.as_ref().is_none_or(|a| a.len() < floats) {
            self.layouts.clear();
            self.arena = None;
            self.arena = Some(Buffer::new(&self.dev, floats)?);
        }
        let sizes = Buffer::from(&self.dev, &plan.sizes)?;
        let arena = self.arena.as_ref().expect("made above").ptr();
        let at = |a: Addr| -> u64 {
            let base = match a.mem {
                Mem::Arena => arena,
                Mem::Input(x) => self.input_ptr(x),
                Mem::Const(c) => self.consts[&c].ptr(),
                Mem::Size(i) => sizes.ptr() + 4 * i as u64,
                Mem::Null => return 0,
            };
            base + 4 * a.offset as u64
        };
        let most = self.dev.multiprocessors.max(1) * 16;
        let ready = plan
            .launches
            .iter()
            .map(|l| match l {
                Launch::Entry { kernel, args, count, threads, .. } => {
                    let mut params: Vec<u64> = args.iter().map(|a| at(*a)).collect();
                    params.push(*count);
                    let blocks = threads.div_ceil(super::ptx::BLOCK as u64).clamp(1, most as u64) as u32;
                    Ready::Entry { f: self.functions[kernel], params, grid: blocks }
                }
                Launch::Fill { at: a, len, value } => Ready::Fill { ptr: at(*a), len: *len, bits: value.to_bits() },
                Launch::Gemm { calls, .. } => Ready::Gemm(
                    calls.iter().map(|c| ReadyBlas { call: c.clone(), a: at(c.a), b: at(c.b), c: at(c.c) }).collect(),
                ),
                Launch::CopyBack { from, to, len } => Ready::Copy { from: at(*from), to: at(*to), len: *len },
            })
            .collect();
        let outputs = plan.outputs.iter().map(|(name, a, n)| (name.clone(), (at(*a), *n))).collect();
        self.layouts.insert(batch, Layout { ready, outputs, _sizes: sizes });
        Ok(())
    }

    /// Queues a run on `batch` samples (inputs uploaded for that batch).
    /// Errors of the kernels themselves surface at the next read.
    pub fn run(&mut self, batch: usize) -> Result<(), String> {
        self.layout(batch)?;
        self.dev.bind()?;
        let stream: sys::CUstream = std::ptr::null_mut();
        let handle = *self.dev.blas.handle();
        for r in &self.layouts[&batch].ready {
            match r {
                Ready::Entry { f, params, grid } => {
                    let mut p: Vec<*mut c_void> = params.iter().map(|v| v as *const u64 as *mut c_void).collect();
                    // SAFETY: the entry takes these u64 parameters (pointers
                    // into live buffers, then the count).
                    unsafe { drv::launch_kernel(*f, (*grid, 1, 1), (super::ptx::BLOCK, 1, 1), 0, stream, &mut p) }
                        .map_err(|e| drv_err("launching a kernel", e))?;
                }
                Ready::Fill { ptr, len, bits } => {
                    // SAFETY: `len` floats at `ptr`.
                    unsafe { sys::cuMemsetD32Async(*ptr, *bits, *len, stream) }
                        .result()
                        .map_err(|e| drv_err("filling a buffer", e))?;
                }
                Ready::Gemm(calls) => {
                    for c in calls {
                        gemm(handle, c)?;
                    }
                }
                Ready::Copy { from, to, len } => {
                    // SAFETY: `len` floats at both, not overlapping.
                    unsafe { sys::cuMemcpyDtoDAsync_v2(*to, *from, *len * 4, stream) }
                        .result()
                        .map_err(|e| drv_err("copying back", e))?;
                }
            }
        }
        Ok(())
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

fn gemm(handle: blas_sys::cublasHandle_t, r: &ReadyBlas) -> Result<(), String> {
    let c = &r.call;
    let op =
        |t: bool| if t { blas_sys::cublasOperation_t::CUBLAS_OP_T } else { blas_sys::cublasOperation_t::CUBLAS_OP_N };
    let (alpha, beta) = (1f32, c.beta);
    // SAFETY: the plan's dimensions and strides keep every access inside
    // the operands' buffers; α and β live on the host for the call.
    let res = unsafe {
        if c.count == 1 {
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
