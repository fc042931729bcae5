//! `--slow`'s answers: for a slow call, the user stack it was made from,
//! the kernel stack it slept in, who woke it and from where. The kernel
//! programs send raw material (registers, stack bytes, stack ids: see
//! `probe-ebpf/src/slow.rs`); here it is unwound (`unwind`), symbolized
//! (`blazesym`: ELF, DWARF, kallsyms) and made visible, off the record path:
//! only slow calls get here.

mod args;
mod unwind;

use blazesym::symbolize::{
    source::{Kernel, Process, Source},
    CodeInfo, Input, Symbolized, Symbolizer,
};
use serde::Serialize;

use crate::{
    aggregate::sched::{Sleep, Waker},
    bpf::Probe,
    btf::RegsLayout,
    escape,
    pipeline::SlowCallSeen,
    report::syscall_name,
};

pub use args::Arg;
pub use unwind::End;

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
    /// task it interrupted, not the waker.
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
    /// Its longest sleep, and the kernel stack it slept in.
    pub blocked_ns: Option<u64>,
    pub blocked_in: Option<Stack>,
    pub woken_by: Option<WokenBy>,
    /// Its arguments, decoded where it matters (file descriptors as what
    /// they are now, paths as read now); empty without its registers.
    pub args: Vec<Arg>,
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

/// Turns the raw material of slow calls into answers.
pub struct Explainer {
    regs: RegsLayout,
    symbolizer: Symbolizer,
    unwinders: unwind::Unwinders,
}

impl Explainer {
    pub fn new(regs: RegsLayout) -> Self {
        Self { regs, symbolizer: Symbolizer::new(), unwinders: unwind::Unwinders::default() }
    }

    /// Explains `seen`, with the kernel stacks `probe` holds.
    pub fn explain(&mut self, probe: &Probe, seen: &SlowCallSeen) -> Explanation {
        let user_stack = seen.detail.as_ref().map(|detail| {
            let read = |offset| RegsLayout::read(&detail.regs, offset);
            let (ip, sp, bp) = (read(self.regs.ip), read(self.regs.sp), read(self.regs.bp));
            let stack = &detail.stack[..(detail.stack_len as usize).min(detail.stack.len())];
            let (addrs, end) = self.unwinders.unwind(seen.key.pid, ip, sp, bp, stack);
            let source = Source::Process(Process::new(seen.key.pid.into()));
            Stack { frames: self.symbolize(&source, &addrs), end }
        });
        let args = seen.detail.as_ref().map_or_else(Vec::new, |detail| {
            let registers = self.regs.args.map(|offset| RegsLayout::read(&detail.regs, offset));
            args::decode(seen.key.pid, seen.key.tid, seen.nr, &registers)
        });
        let Some(blocked) = seen.blocked else {
            return Explanation { user_stack, args, ..Default::default() };
        };
        Explanation {
            user_stack,
            args,
            blocked_ns: Some(blocked.ns()),
            blocked_in: self.kernel_stack(probe, blocked.kernel_stack),
            woken_by: blocked.waker.map(|waker| self.woken_by(probe, &blocked, &waker)),
        }
    }

    fn woken_by(&self, probe: &Probe, blocked: &Sleep, waker: &Waker) -> WokenBy {
        WokenBy {
            context: if waker.interrupt { "interrupt" } else { "task" },
            pid: waker.pid,
            tid: waker.tid,
            comm: escape::visible_bytes(waker.comm.split(|&b| b == 0).next().unwrap_or_default()),
            syscall: waker.nr.map(syscall_name),
            stack: self.kernel_stack(probe, waker.kernel_stack),
            runq_ns: blocked.runq_ns,
        }
    }

    /// The name of a wait site: the two innermost functions of kernel stack
    /// `id` below the scheduler's (`anon_pipe_read ← vfs_read`).
    pub fn site_name(&self, probe: &Probe, id: u32) -> Option<String> {
        let stack = self.kernel_stack(probe, id)?;
        let names: Vec<&str> =
            stack.frames.iter().filter_map(|frame| frame.function.as_deref()).take(2).collect();
        (!names.is_empty()).then(|| names.join(" ← "))
    }

    /// Kernel stack `id`, symbolized, from what it is about on: the
    /// scheduler's and the tracing's own frames on top are left out.
    fn kernel_stack(&self, probe: &Probe, id: u32) -> Option<Stack> {
        let addrs = probe.kernel_stack(id)?;
        let frames = self.symbolize(&Source::Kernel(Kernel::default()), &addrs);
        let machinery = |frame: &Frame| {
            frame.function.as_deref().is_some_and(|name| MACHINERY.iter().any(|m| name.starts_with(m)))
        };
        let skip = frames.iter().rposition(machinery).map_or(0, |last| last + 1);
        let mut frames = frames[skip..].to_vec();
        // Under an interrupt's entry is whatever it interrupted: not how
        // the wakeup came about.
        if let Some(entry) =
            frames.iter().position(|f| f.function.as_deref().is_some_and(|n| n.starts_with("asm_")))
        {
            frames.truncate(entry + 1);
        }
        Some(Stack { frames, end: End::Complete })
    }

    /// The frames at `addrs`: where debug information says functions were
    /// inlined at an address, each of them too, innermost first.
    fn symbolize(&self, source: &Source, addrs: &[u64]) -> Vec<Frame> {
        let symbols = self.symbolizer.symbolize(source, Input::AbsAddr(addrs)).unwrap_or_default();
        let mut frames = Vec::with_capacity(addrs.len());
        for (i, &addr) in addrs.iter().enumerate() {
            let Some(Symbolized::Sym(sym)) = symbols.get(i) else {
                frames.push(Frame { addr, function: None, file: None, line: None, inlined: false });
                continue;
            };
            let frame = |name: &str, code: Option<&CodeInfo>, inlined| Frame {
                addr,
                function: Some(escape::visible(name)),
                file: code.map(|code| escape::visible(&code.file.to_string_lossy())),
                line: code.and_then(|code| code.line),
                inlined,
            };
            for inlined in sym.inlined.iter().rev() {
                frames.push(frame(&inlined.name, inlined.code_info.as_ref(), true));
            }
            frames.push(frame(&sym.name, sym.code_info.as_deref(), false));
        }
        frames
    }
}
