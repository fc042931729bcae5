//! io_uring: a request is followed from `io_uring_submit_req` to
//! `io_uring_complete`, keyed by its address, and charged to the thread that
//! submitted it, whichever context completes it (an io-wq worker, an
//! interrupt, the submitter's own task work).

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{map, tracepoint},
    maps::{Array, HashMap},
    programs::TracePointContext,
    EbpfContext,
};
use probe_common::{
    Counter, EventKind, IoRequest, IoUringEvent, IO_URING_ASYNC, MAX_IO_REQUESTS, OP_NAME_LEN,
};

use crate::{
    cgroup::current_passes,
    shared::{bump, config, cpu, cpu_state, is_traced, now, send},
};

// Field offsets in the io_uring tracepoints' records, which change between
// kernels: the loader reads them from each tracepoint's format file, and
// sets them like the globals in `shared`.
#[unsafe(no_mangle)]
static IOU_SUBMIT_CTX: u32 = 0;
#[unsafe(no_mangle)]
static IOU_SUBMIT_REQ: u32 = 0;
#[unsafe(no_mangle)]
static IOU_SUBMIT_OPCODE: u32 = 0;
#[unsafe(no_mangle)]
static IOU_SUBMIT_OP_STR: u32 = 0;
#[unsafe(no_mangle)]
static IOU_ASYNC_REQ: u32 = 0;
#[unsafe(no_mangle)]
static IOU_COMPLETE_REQ: u32 = 0;
#[unsafe(no_mangle)]
static IOU_COMPLETE_RES: u32 = 0;
#[unsafe(no_mangle)]
static IOU_CREATE_CTX: u32 = 0;
shared!(global
    IOU_SUBMIT_CTX,
    IOU_SUBMIT_REQ,
    IOU_SUBMIT_OPCODE,
    IOU_SUBMIT_OP_STR,
    IOU_ASYNC_REQ,
    IOU_COMPLETE_REQ,
    IOU_COMPLETE_RES,
    IOU_CREATE_CTX,
);

/// io_uring requests of traced threads between submission and completion,
/// by request address.
#[map]
static IO_REQUESTS: HashMap<u64, IoRequest> = HashMap::with_max_entries(MAX_IO_REQUESTS, 0);

/// The thread that created each io_uring ring, by ring address: a SQPOLL
/// ring's kernel thread submits on its behalf.
#[map]
static IO_RING_OWNERS: HashMap<u64, u64> = HashMap::with_max_entries(4096, 0);

/// Each opcode's name, as the kernel spells it, once seen.
#[map]
static IO_OP_NAMES: Array<[u8; OP_NAME_LEN]> = Array::with_max_entries(256, 0);

#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: &u32) -> Result<T, u32> {
    // SAFETY: read through bpf_probe_read_kernel at an offset inside the
    // record, from the tracepoint's format.
    unsafe { ctx.read_at::<T>(config(offset) as usize) }.map_err(|_| 0u32)
}

#[tracepoint]
pub fn io_uring_create(ctx: TracePointContext) -> u32 {
    match try_io_uring_create(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}
shared!(program io_uring_create as IO_URING_CREATE);

fn try_io_uring_create(ctx: &TracePointContext) -> Result<u32, u32> {
    let tid_pid = bpf_get_current_pid_tgid();
    if !is_traced((tid_pid >> 32) as u32) || !current_passes(tid_pid as u32) {
        return Ok(0);
    }
    let ring: u64 = field(ctx, &IOU_CREATE_CTX)?;
    IO_RING_OWNERS.insert(ring, tid_pid, 0).map_err(|_| 0u32)?;
    Ok(0)
}

#[tracepoint]
pub fn io_uring_submit_req(ctx: TracePointContext) -> u32 {
    match try_io_uring_submit_req(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}
shared!(program io_uring_submit_req as IO_URING_SUBMIT_REQ);

fn try_io_uring_submit_req(ctx: &TracePointContext) -> Result<u32, u32> {
    let mut tid_pid = bpf_get_current_pid_tgid();
    if !is_traced((tid_pid >> 32) as u32) || !current_passes(tid_pid as u32) {
        return Ok(0);
    }
    let req: u64 = field(ctx, &IOU_SUBMIT_REQ)?;
    let opcode = u32::from(field::<u8>(ctx, &IOU_SUBMIT_OPCODE)?);
    // A SQPOLL ring's kernel thread ("iou-sqp-PID", a thread of the same
    // process) submits what the ring's creator queued.
    if bpf_get_current_comm().is_ok_and(|comm| comm.starts_with(b"iou-sqp-")) {
        let ring: u64 = field(ctx, &IOU_SUBMIT_CTX)?;
        // SAFETY: a value copied out at once.
        if let Some(&owner) = unsafe { IO_RING_OWNERS.get(ring) } {
            tid_pid = owner;
        }
    }
    let request =
        IoRequest { pid: (tid_pid >> 32) as u32, tid: tid_pid as u32, opcode, flags: 0, start_ns: now() };
    if IO_REQUESTS.insert(req, request, 0).is_err() {
        bump(Counter::IoUringFull);
    }
    if let Some(name) = IO_OP_NAMES.get_ptr_mut(opcode) {
        // SAFETY: an array slot; a name is written once per opcode, and a
        // race only writes the same bytes twice.
        if unsafe { (*name)[0] } == 0 {
            // A __data_loc field: the string's offset in the record in the
            // low 16 bits.
            let loc: u32 = field(ctx, &IOU_SUBMIT_OP_STR)?;
            // SAFETY: read through the helper, bounded by the slot.
            unsafe {
                let _ = aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(
                    ctx.as_ptr().cast::<u8>().add((loc & 0xffff) as usize),
                    &mut *name,
                );
            }
        }
    }
    Ok(0)
}

#[tracepoint]
pub fn io_uring_queue_async_work(ctx: TracePointContext) -> u32 {
    let Ok(req) = field::<u64>(&ctx, &IOU_ASYNC_REQ) else {
        return 0;
    };
    if let Some(request) = IO_REQUESTS.get_ptr_mut(req) {
        // SAFETY: the request's entry; its flags are only set here.
        unsafe { (*request).flags |= IO_URING_ASYNC };
    }
    0
}
shared!(program io_uring_queue_async_work as IO_URING_QUEUE_ASYNC_WORK);

#[tracepoint]
pub fn io_uring_complete(ctx: TracePointContext) -> u32 {
    match try_io_uring_complete(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}
shared!(program io_uring_complete as IO_URING_COMPLETE);

fn try_io_uring_complete(ctx: &TracePointContext) -> Result<u32, u32> {
    let req: u64 = field(ctx, &IOU_COMPLETE_REQ)?;
    // SAFETY: a value copied out at once.
    let request = unsafe { IO_REQUESTS.get(req) }.copied().ok_or(0u32)?;
    let _ = IO_REQUESTS.remove(req);
    let res: i32 = field(ctx, &IOU_COMPLETE_RES)?;
    let op_name = IO_OP_NAMES.get(request.opcode).copied().unwrap_or([0; OP_NAME_LEN]);
    let event = IoUringEvent {
        kind: EventKind::IoUring as u32,
        cpu: cpu(),
        pid: request.pid,
        tid: request.tid,
        opcode: request.opcode,
        flags: request.flags,
        res,
        _pad: 0,
        start_ns: request.start_ns,
        duration_ns: now().saturating_sub(request.start_ns),
        op_name,
    };
    send(cpu_state()?, &event);
    Ok(0)
}
