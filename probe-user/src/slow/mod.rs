//! `--slow`'s answers: for a slow call, the user stack it was made from,
//! the kernel stack it slept in, who woke it and from where. The kernel
//! programs send raw material (registers, stack bytes, stack ids: see
//! `probe-ebpf/src/slow.rs`); here it is unwound (`unwind`), symbolized
//! (`blazesym`: ELF, DWARF, kallsyms) and made visible, off the record path:
//! only slow calls get here.

mod args;
mod tail;
mod unwind;

use std::{
    collections::BTreeMap,
    io,
    sync::mpsc::{self, SyncSender, TrySendError},
    thread::JoinHandle,
};

use blazesym::symbolize::{
    source::{Elf, Kernel, Source},
    CodeInfo, Input, Symbolized, Symbolizer,
};
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::{
    aggregate::sched::{Sleep, Waker},
    bpf::Probe,
    btf::RegsLayout,
    escape,
    pipeline::SlowCallSeen,
    report::syscall_name,
};

pub use args::Arg;
pub use tail::{DetailFloors, FIRST_FLOOR_NS};
pub use unwind::{load_bias, End};

/// One frame of a stack, symbolized where the object allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// The address looked up (for a caller's frame, inside its call).
    pub addr: u64,
    /// The function, made visible; `None` where no symbol covers it.
    pub function: Option<String>,
    /// Source file and line, with debug information.
    pub file: Option<String>,
    pub line: Option<u32>,
    /// A function the compiler inlined into the next frame: both are at
    /// the same address.
    pub inlined: bool,
}

/// A stack, innermost frame first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stack {
    pub frames: Vec<Frame>,
    /// Whether the frames reach the outermost one; if not, why not.
    pub end: End,
}

/// Who made a slow call's thread runnable after its longest sleep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WokenBy {
    /// `"task"`, or `"interrupt"`: then `tid`, `pid` and `comm` are the
    /// task it interrupted, not the waker; or `"task_or_interrupt"` for a
    /// task out of traced syscalls when the wakeup's stack, which tells an
    /// interrupt of user code, was not taken (only `--slow` takes it, for a
    /// call that had run its threshold when woken).
    pub context: &'static str,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// Its syscall in progress; `None` when it was in none, or not traced.
    pub syscall: Option<String>,
    /// The wakeup's kernel stack.
    pub stack: Option<Stack>,
    /// How long the woken thread then waited for a CPU.
    pub runq_ns: u64,
}

/// What `--slow` found out about one slow call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// Where in the program the call was made; `None` when its stack was
    /// not sent (a full ring buffer).
    pub user_stack: Option<Stack>,
    /// Its longest sleep (its whole time asleep is the call's
    /// `blocked_ns`), and the kernel stack it slept in.
    pub longest_sleep_ns: Option<u64>,
    pub blocked_in: Option<Stack>,
    pub woken_by: Option<WokenBy>,
    /// Its arguments, decoded where it matters (file descriptors as what
    /// they are now, paths as read now); empty without its registers.
    pub args: Vec<Arg>,
    /// Why it has no explanation, if it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unexplained: Option<&'static str>,
}

/// Kernel frames of the scheduler and of the tracing itself, above what a
/// thread blocked in or what woke it: not what a reader asks about.
const MACHINERY: [&str; 14] = [
    "bpf_",
    "__bpf_",
    "__traceiter_",
    "__schedule",
    "schedule",
    "preempt_schedule",
    "ttwu_",
    "try_to_wake_up",
    "wake_up_process",
    "__wake_up",
    "autoremove_wake_function",
    "default_wake_function",
    "wake_up_q",
    "perf_trace_",
];

/// The thread that explains calls sent with their details, and, with
/// `--slow` (whose kernel stacks they are), the names of the wait sites.
pub struct Slow {
    pub explaining: Explaining,
    pub sites: Option<SiteNamer>,
}

impl Slow {
    /// Starts the thread; with `wait_sites`, reads kallsyms for them.
    pub fn start(regs: RegsLayout, wait_sites: bool) -> io::Result<Self> {
        Ok(Self { explaining: Explaining::start(regs)?, sites: wait_sites.then(SiteNamer::new) })
    }
}

/// Slow calls waiting to be explained at once: beyond, a call is reported
/// unexplained (and says so) rather than delay the ones behind it.
const QUEUED: usize = 256;

/// Explains slow calls on a thread of its own: symbolizing a program's
/// objects the first time takes up to a second, which the record pipeline
/// must not wait for (the ring buffer would fill meanwhile).
pub struct Explaining {
    calls: SyncSender<SlowCallSeen>,
    explained: UnboundedReceiver<SlowCallSeen>,
    thread: JoinHandle<()>,
}

impl Explaining {
    pub fn start(regs: RegsLayout) -> io::Result<Self> {
        let (calls, queued) = mpsc::sync_channel::<SlowCallSeen>(QUEUED);
        let (done, explained) = tokio::sync::mpsc::unbounded_channel();
        let thread = std::thread::Builder::new().name("probe-slow".to_owned()).spawn(move || {
            // The lowest priority: on a busy machine the event loop, which
            // must keep the ring buffer from filling, comes first.
            // SAFETY: sets this thread's nice value; no memory is involved.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, nix::unistd::gettid().as_raw() as libc::id_t, 19)
            };
            let mut explainer = Explainer::new(regs);
            for mut call in queued {
                call.explanation = Some(explainer.explain(&call));
                if done.send(call).is_err() {
                    return;
                }
            }
        })?;
        Ok(Self { calls, explained, thread })
    }

    /// Hands `call` over, with the kernel stacks it names read from `probe`
    /// (the map is the event loop's); a call the queue has no room for
    /// comes back, marked unexplained.
    pub fn submit(&self, probe: &Probe, mut call: SlowCallSeen) -> Option<SlowCallSeen> {
        let stack = |id: u32| probe.kernel_stack(id);
        if let Some(blocked) = &call.blocked {
            call.kernel_stacks = KernelStacks {
                blocked_in: stack(blocked.kernel_stack),
                woken_by: blocked.waker.and_then(|waker| stack(waker.kernel_stack)),
            };
        }
        self.calls.try_send(call).err().map(|err| {
            let (mut call, why) = match err {
                TrySendError::Full(call) => (call, "too many slow calls at once: this one was not explained"),
                TrySendError::Disconnected(call) => (call, "the thread that explains slow calls stopped"),
            };
            call.explanation = Some(Explanation { unexplained: Some(why), ..Default::default() });
            call
        })
    }

    /// The next call explained.
    pub async fn next(&mut self) -> Option<SlowCallSeen> {
        self.explained.recv().await
    }

    /// Waits for the calls handed over to be explained, and returns them.
    pub fn finish(self) -> Vec<SlowCallSeen> {
        let Self { calls, mut explained, thread } = self;
        drop(calls);
        let _ = thread.join();
        let mut rest = Vec::new();
        while let Ok(call) = explained.try_recv() {
            rest.push(call);
        }
        rest
    }
}

/// The kernel stacks a slow call names, read by the event loop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelStacks {
    pub blocked_in: Option<Vec<u64>>,
    pub woken_by: Option<Vec<u64>>,
}

/// Turns the raw material of slow calls into answers.
struct Explainer {
    regs: RegsLayout,
    symbolizer: Symbolizer,
    unwinders: unwind::Unwinders,
}

impl Explainer {
    fn new(regs: RegsLayout) -> Self {
        Self { regs, symbolizer: Symbolizer::new(), unwinders: unwind::Unwinders::default() }
    }

    fn explain(&mut self, seen: &SlowCallSeen) -> Explanation {
        let user_stack = seen.detail.as_ref().map(|detail| {
            let read = |offset| RegsLayout::read(&detail.regs, offset);
            let (ip, sp, bp) = (read(self.regs.ip), read(self.regs.sp), read(self.regs.bp));
            let stack = &detail.stack[..(detail.stack_len as usize).min(detail.stack.len())];
            let (addrs, end) = self.unwinders.unwind(seen.key.pid(), ip, sp, bp, stack);
            Stack { frames: self.user_frames(seen.key.pid(), &addrs), end }
        });
        let args = seen.detail.as_ref().map_or_else(Vec::new, |detail| {
            let registers = self.regs.args.map(|offset| RegsLayout::read(&detail.regs, offset));
            args::decode(seen.key.pid(), seen.key.tid(), seen.nr, &registers)
        });
        let Some(blocked) = seen.blocked else {
            return Explanation { user_stack, args, ..Default::default() };
        };
        let kernel =
            |addrs: &Option<Vec<u64>>| addrs.as_deref().map(|addrs| kernel_stack(&self.symbolizer, addrs));
        Explanation {
            user_stack,
            args,
            longest_sleep_ns: Some(blocked.ns()),
            blocked_in: kernel(&seen.kernel_stacks.blocked_in),
            woken_by: blocked
                .waker
                .map(|waker| woken_by(&blocked, &waker, kernel(&seen.kernel_stacks.woken_by))),
            unexplained: None,
        }
    }

    /// The frames at `addrs` of process `pid`, symbolized from the objects
    /// the unwinder keeps open rather than from the process: it may have
    /// exited since. By file offset, object by object: blazesym caches an
    /// object by what its path's `stat` says (device, inode, size, mtime),
    /// so a descriptor's number used again for another object is not
    /// mistaken for the one before, and one library is read once for all
    /// the processes that map it.
    fn user_frames(&self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        let mut frames: Vec<Vec<Frame>> = addrs.iter().map(|&addr| vec![Frame::unnamed(addr)]).collect();
        let mut objects: BTreeMap<String, Vec<(usize, u64)>> = BTreeMap::new();
        for (i, &addr) in addrs.iter().enumerate() {
            if let Some((object, offset)) = self.unwinders.object_offset(pid, addr) {
                objects.entry(object).or_default().push((i, offset));
            }
        }
        for (object, at) in objects {
            let offsets: Vec<u64> = at.iter().map(|&(_, offset)| offset).collect();
            let source = Source::Elf(Elf::new(object));
            let symbols = self.symbolizer.symbolize(&source, Input::FileOffset(&offsets)).unwrap_or_default();
            for (&(i, _), symbol) in at.iter().zip(&symbols) {
                frames[i] = symbol_frames(addrs[i], Some(symbol));
            }
        }
        frames.concat()
    }
}

/// Who woke a sleep. An interrupt is told two ways: the kernel program ran
/// on an interrupt's stack, or the wakeup's kernel stack passes through an
/// interrupt's entry. The second is needed for an interrupt that came while
/// the CPU ran user code: x86-64 runs it on the interrupted task's own
/// kernel stack (an exception, such as a page fault, is the task's own).
/// Without that stack, a task not in a syscall may have been interrupted.
fn woken_by(blocked: &Sleep, waker: &Waker, stack: Option<Stack>) -> WokenBy {
    let entered =
        stack.as_ref().is_some_and(|stack| {
            stack.frames.iter().filter_map(|frame| frame.function.as_deref()).any(|name| {
                (name.starts_with("asm_") && !name.starts_with("asm_exc_")) || name == "asm_exc_nmi"
            })
        });
    WokenBy {
        context: match (waker.interrupt || entered, waker.stack_taken || waker.nr.is_some()) {
            (true, _) => "interrupt",
            (false, true) => "task",
            (false, false) => "task_or_interrupt",
        },
        pid: waker.pid,
        tid: waker.tid,
        comm: escape::visible_bytes(waker.comm.split(|&b| b == 0).next().unwrap_or_default()),
        syscall: waker.nr.map(syscall_name),
        stack,
        runq_ns: blocked.runq_ns,
    }
}

/// Names the wait sites of the tables, on the event loop: kernel stacks
/// only, each once, from kallsyms, which is read once when probe starts.
pub struct SiteNamer {
    symbolizer: Symbolizer,
}

impl SiteNamer {
    pub fn new() -> Self {
        let symbolizer = Symbolizer::new();
        // Reads kallsyms now, before the trace, not at its first interval.
        let _ = symbolizer.symbolize(&Source::Kernel(Kernel::default()), Input::AbsAddr(&[0]));
        Self { symbolizer }
    }

    /// The name of a wait site: the two innermost functions of kernel stack
    /// `id` below the scheduler's (`anon_pipe_read ← vfs_read`).
    pub fn name(&self, probe: &Probe, id: u32) -> Option<String> {
        let stack = kernel_stack(&self.symbolizer, &probe.kernel_stack(id)?);
        let names: Vec<&str> =
            stack.frames.iter().filter_map(|frame| frame.function.as_deref()).take(2).collect();
        (!names.is_empty()).then(|| names.join(" ← "))
    }
}

/// A kernel stack, symbolized, from what it is about on: the tracing's and
/// the scheduler's own frames on top are left out, and under an
/// interrupt's entry what it interrupted.
fn kernel_stack(symbolizer: &Symbolizer, addrs: &[u64]) -> Stack {
    let symbols =
        symbolizer.symbolize(&Source::Kernel(Kernel::default()), Input::AbsAddr(addrs)).unwrap_or_default();
    let frames: Vec<Frame> =
        addrs.iter().enumerate().flat_map(|(i, &addr)| symbol_frames(addr, symbols.get(i))).collect();
    let machinery = |frame: &Frame| {
        frame.function.as_deref().is_some_and(|name| MACHINERY.iter().any(|m| name.starts_with(m)))
    };
    let skip = frames.iter().position(|frame| !machinery(frame)).unwrap_or(frames.len());
    let mut frames = frames[skip..].to_vec();
    if let Some(entry) =
        frames.iter().position(|f| f.function.as_deref().is_some_and(|n| n.starts_with("asm_")))
    {
        frames.truncate(entry + 1);
    }
    Stack { frames, end: End::Complete }
}

impl Frame {
    /// A frame at `addr` no symbol covers.
    fn unnamed(addr: u64) -> Self {
        Self { addr, function: None, file: None, line: None, inlined: false }
    }
}

/// The frames at `addr`, as its `symbol` says: where debug information
/// says functions were inlined there, each of them too, innermost first.
fn symbol_frames(addr: u64, symbol: Option<&Symbolized>) -> Vec<Frame> {
    let Some(Symbolized::Sym(sym)) = symbol else {
        return vec![Frame::unnamed(addr)];
    };
    let frame = |name: &str, code: Option<&CodeInfo>, inlined| Frame {
        addr,
        function: Some(escape::visible(name)),
        file: code.map(|code| escape::visible(&code.file.to_string_lossy())),
        line: code.and_then(|code| code.line),
        inlined,
    };
    let mut frames: Vec<Frame> = sym
        .inlined
        .iter()
        .rev()
        .map(|inlined| frame(&inlined.name, inlined.code_info.as_ref(), true))
        .collect();
    frames.push(frame(&sym.name, sym.code_info.as_deref(), false));
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waker_without_its_stack_and_out_of_syscalls_may_have_been_an_interrupt() {
        let waker = Waker {
            pid: 1,
            tid: 2,
            comm: [0; probe_common::COMM_LEN],
            nr: None,
            interrupt: false,
            kernel_stack: 0,
            stack_taken: false,
        };
        let sleep = Sleep { from: 0, to: 10, kernel_stack: 0, waker: Some(waker), runq_ns: 0 };
        let context = |waker: Waker| woken_by(&sleep, &waker, None).context;
        assert_eq!(context(waker), "task_or_interrupt");
        assert_eq!(context(Waker { nr: Some(0), ..waker }), "task");
        assert_eq!(context(Waker { stack_taken: true, ..waker }), "task");
        assert_eq!(context(Waker { interrupt: true, ..waker }), "interrupt");
    }
}
