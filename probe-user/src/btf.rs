//! Finds kernel struct field offsets in the running kernel's BTF:
//! `task_struct`'s ids, and where `pt_regs` keeps the syscall number.
//!
//! Rust eBPF programs cannot carry CO-RE relocations, so the programs get
//! the offsets of the fields they read as load-time globals. Only the type
//! section is walked, and only as far as the struct asked for: a reader
//! this small is simpler than a dependency (aya keeps its BTF types
//! private, and the BTF crates on crates.io are LGPL or pull in libbpf).
//! The loader then proves the task offsets on probe's own task before use.

use std::{cell::OnceCell, fs, io};

use anyhow::{anyhow, bail, ensure, Context, Result};

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;

/// Byte offsets of the `task_struct` fields probe reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `task_struct.pid`: the thread id.
    pub pid: u32,
    /// `task_struct.tgid`: the process id.
    pub tgid: u32,
}

/// The running kernel's BTF, read once, when an offset is first asked
/// for: it is megabytes, and several offsets come from it at start-up.
#[derive(Debug, Default)]
pub struct KernelBtf {
    data: OnceCell<io::Result<Vec<u8>>>,
}

impl KernelBtf {
    fn data(&self) -> Result<&[u8]> {
        self.data.get_or_init(|| fs::read(VMLINUX_BTF)).as_deref().map_err(|err| {
            anyhow!("cannot read the kernel's BTF at {VMLINUX_BTF} (a kernel built with CONFIG_DEBUG_INFO_BTF has it): {err}")
        })
    }

    /// `task_struct.pid` and `.tgid`.
    pub fn task_offsets(&self) -> Result<TaskOffsets> {
        task_offsets_in(self.data()?).context("cannot find task_struct's pid and tgid in the kernel's BTF")
    }

    /// The byte offset of `pt_regs.orig_ax`, where x86-64 keeps a syscall's
    /// number for its whole course.
    pub fn syscall_nr_offset(&self) -> Result<u32> {
        let [orig_ax] = member_offsets(self.data()?, "pt_regs", ["orig_ax"])
            .context("cannot find pt_regs.orig_ax in the kernel's BTF")?;
        Ok(orig_ax)
    }

    /// The byte offset in `task_struct` of `thread_info.status`, whose
    /// `TS_COMPAT` marks a 32-bit syscall.
    pub fn task_status_offset(&self) -> Result<u32> {
        task_status_offset_in(self.data()?)
            .context("cannot find task_struct's thread_info.status in the kernel's BTF")
    }

    /// The byte offset in `task_struct` of `se.nr_migrations`, the kernel's
    /// count of the thread's moves between CPUs.
    pub fn task_migrations_offset(&self) -> Result<u32> {
        let data = self.data()?;
        let [se] = member_offsets(data, "task_struct", ["se"])?;
        let [nr_migrations] = member_offsets(data, "sched_entity", ["nr_migrations"])?;
        Ok(se + nr_migrations)
    }

    /// The byte offset of `task_struct.start_time`, when the task was
    /// created (`CLOCK_MONOTONIC`).
    pub fn task_start_time_offset(&self) -> Result<u32> {
        let [start_time] = member_offsets(self.data()?, "task_struct", ["start_time"])
            .context("cannot find task_struct.start_time in the kernel's BTF")?;
        Ok(start_time)
    }
}

/// `linux_binprm.file`, `file.f_inode`, `inode.i_ino`, `inode.i_sb` and
/// `super_block.s_dev`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecFileOffsets {
    pub file: u32,
    pub inode: u32,
    pub ino: u32,
    pub sb: u32,
    pub dev: u32,
}

/// Where `pt_regs` keeps the registers a slow call's report reads: the
/// instruction, stack and frame pointers its user stack is unwound from,
/// and the six syscall arguments (x86-64: rdi, rsi, rdx, r10, r8, r9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegsLayout {
    pub ip: u32,
    pub sp: u32,
    pub bp: u32,
    pub args: [u32; 6],
}

impl RegsLayout {
    /// Register `offset`'s value in `regs`, a raw `pt_regs`.
    pub fn read(regs: &[u64], offset: u32) -> u64 {
        regs.get(offset as usize / 8).copied().unwrap_or(0)
    }
}

impl KernelBtf {
    /// `pt_regs`' registers, all inside the first `words` words (what the
    /// kernel programs copy).
    pub fn regs_layout(&self, words: usize) -> Result<RegsLayout> {
        let [ip, sp, bp, di, si, dx, r10, r8, r9] =
            member_offsets(self.data()?, "pt_regs", ["ip", "sp", "bp", "di", "si", "dx", "r10", "r8", "r9"])
                .context("cannot find pt_regs' registers in the kernel's BTF")?;
        let layout = RegsLayout { ip, sp, bp, args: [di, si, dx, r10, r8, r9] };
        let last = [ip, sp, bp, di, si, dx, r10, r8, r9].into_iter().max().unwrap_or(0);
        ensure!(
            last % 8 == 0 && (last as usize) < words * 8,
            "pt_regs in the kernel's BTF is not x86-64's (a register at byte {last})"
        );
        Ok(layout)
    }

    /// The byte offset in `task_struct` of `thread.fsbase`, the base of
    /// the thread's TLS (x86-64).
    pub fn task_fsbase_offset(&self) -> Result<u32> {
        let data = self.data()?;
        let [thread] = member_offsets(data, "task_struct", ["thread"])?;
        let [fsbase] = member_offsets(data, "thread_struct", ["fsbase"])?;
        Ok(thread + fsbase)
    }

    /// From an exec's `linux_binprm` to the device and inode of the
    /// executable it runs.
    pub fn exec_file_offsets(&self) -> Result<ExecFileOffsets> {
        let data = self.data()?;
        let [file] = member_offsets(data, "linux_binprm", ["file"])?;
        let [inode] = member_offsets(data, "file", ["f_inode"])?;
        let [ino, sb] = member_offsets(data, "inode", ["i_ino", "i_sb"])?;
        let [dev] = member_offsets(data, "super_block", ["s_dev"])?;
        Ok(ExecFileOffsets { file, inode, ino, sb, dev })
    }

    /// The byte offset of `task_struct.stack`, the task's kernel stack.
    pub fn task_stack_offset(&self) -> Result<u32> {
        let [stack] = member_offsets(self.data()?, "task_struct", ["stack"])
            .context("cannot find task_struct.stack in the kernel's BTF")?;
        Ok(stack)
    }
}

/// Reads the offsets from raw BTF (native endianness).
pub fn task_offsets_in(data: &[u8]) -> Result<TaskOffsets> {
    let [pid, tgid] = member_offsets(data, "task_struct", ["pid", "tgid"])?;
    Ok(TaskOffsets { pid, tgid })
}

fn task_status_offset_in(data: &[u8]) -> Result<u32> {
    let [thread_info] = member_offsets(data, "task_struct", ["thread_info"])?;
    let [status] = member_offsets(data, "thread_info", ["status"])?;
    Ok(thread_info + status)
}

/// Byte offsets of `members` in the first struct named `name`, in raw BTF
/// (native endianness).
fn member_offsets<const N: usize>(data: &[u8], name: &str, members: [&str; N]) -> Result<[u32; N]> {
    let btf = Reader { data };
    ensure!(btf.u16(0)? == BTF_MAGIC, "not BTF (bad magic)");
    let header_len = btf.u32(4)? as usize;
    let type_off = btf.u32(8)? as usize;
    let type_len = btf.u32(12)? as usize;
    let str_off = btf.u32(16)? as usize;
    let types = header_len + type_off;
    let strings = header_len + str_off;
    let end = types.checked_add(type_len).context("type section out of range")?;

    let mut at = types;
    while at < end {
        let name_off = btf.u32(at)? as usize;
        let info = btf.u32(at + 4)?;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 != 0;
        let body = at + 12;
        if kind == KIND_STRUCT && btf.str(strings + name_off)? == name {
            return offsets(&btf, Struct { name, body, vlen, strings, kind_flag }, members);
        }
        at = body + trailing_len(kind, vlen)?;
    }
    bail!("no struct {name}")
}

const KIND_STRUCT: u32 = 4;

/// Bytes that follow a type's 12-byte header, by kind (linux/btf.h).
fn trailing_len(kind: u32, vlen: usize) -> Result<usize> {
    Ok(match kind {
        // INT, VAR, DECL_TAG: one u32.
        1 | 14 | 17 => 4,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        // ARRAY: struct btf_array.
        3 => 12,
        // STRUCT, UNION, DATASEC, ENUM64: 12 bytes each.
        4 | 5 | 15 | 19 => 12 * vlen,
        // ENUM, FUNC_PROTO: 8 bytes each.
        6 | 13 => 8 * vlen,
        other => bail!("unknown BTF kind {other}"),
    })
}

/// Where a struct's members are in the BTF.
struct Struct<'a> {
    name: &'a str,
    body: usize,
    vlen: usize,
    strings: usize,
    kind_flag: bool,
}

fn offsets<const N: usize>(btf: &Reader, found: Struct, members: [&str; N]) -> Result<[u32; N]> {
    let mut offsets = [None; N];
    for i in 0..found.vlen {
        let member = found.body + 12 * i;
        let name = btf.str(found.strings + btf.u32(member)? as usize)?;
        let raw = btf.u32(member + 8)?;
        // With kind_flag the top byte is a bitfield size.
        let bits = if found.kind_flag { raw & 0x00ff_ffff } else { raw };
        let Some(slot) = members.iter().position(|&wanted| wanted == name) else {
            continue;
        };
        ensure!(bits % 8 == 0, "{}.{name} is not byte-aligned", found.name);
        offsets[slot] = Some(bits / 8);
    }
    let mut found_offsets = [0; N];
    for (i, offset) in offsets.into_iter().enumerate() {
        found_offsets[i] = offset.with_context(|| format!("{} has no member {}", found.name, members[i]))?;
    }
    Ok(found_offsets)
}

struct Reader<'a> {
    data: &'a [u8],
}

impl Reader<'_> {
    fn bytes<const N: usize>(&self, at: usize) -> Result<[u8; N]> {
        self.data
            .get(at..at + N)
            .and_then(|bytes| bytes.try_into().ok())
            .with_context(|| format!("BTF truncated at byte {at}"))
    }

    fn u16(&self, at: usize) -> Result<u16> {
        Ok(u16::from_ne_bytes(self.bytes(at)?))
    }

    fn u32(&self, at: usize) -> Result<u32> {
        Ok(u32::from_ne_bytes(self.bytes(at)?))
    }

    fn str(&self, at: usize) -> Result<&str> {
        let tail = self.data.get(at..).context("BTF string out of range")?;
        let len = tail.iter().position(|&b| b == 0).context("unterminated BTF string")?;
        std::str::from_utf8(&tail[..len]).context("BTF string is not UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with an INT, a FUNC_PROTO and a struct task_struct.
    fn blob(members: &[(&str, u32)]) -> Vec<u8> {
        let mut strings = b"\0int\0task_struct\0".to_vec();
        let mut types = Vec::new();
        let push = |types: &mut Vec<u8>, words: &[u32]| {
            for word in words {
                types.extend_from_slice(&word.to_ne_bytes());
            }
        };
        push(&mut types, &[1, 1 << 24, 4, 32]); // int
        push(&mut types, &[0, (13 << 24) | 1, 1, 0, 1]); // proto with 1 param
        let member_names: Vec<u32> = members
            .iter()
            .map(|(name, _)| {
                let at = strings.len() as u32;
                strings.extend_from_slice(name.as_bytes());
                strings.push(0);
                at
            })
            .collect();
        push(&mut types, &[5, (4 << 24) | members.len() as u32, 4096]);
        for ((_, bits), name) in members.iter().zip(member_names) {
            push(&mut types, &[name, 1, *bits]);
        }
        let mut out = Vec::new();
        push(
            &mut out,
            &[
                u32::from(BTF_MAGIC) | (1 << 16),
                24,
                0,
                types.len() as u32,
                types.len() as u32,
                strings.len() as u32,
            ],
        );
        out.extend(types);
        out.extend(strings);
        out
    }

    #[test]
    fn finds_pid_and_tgid_past_other_kinds() {
        let data = blob(&[("state", 0), ("pid", 8 * 1000), ("tgid", 8 * 1004)]);
        assert_eq!(task_offsets_in(&data).unwrap(), TaskOffsets { pid: 1000, tgid: 1004 });
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(task_offsets_in(&[]).is_err());
        assert!(task_offsets_in(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        assert!(task_offsets_in(&blob(&[("pid", 8)])).is_err());
        let mut data = blob(&[("pid", 8), ("tgid", 16)]);
        data.truncate(data.len() - 20);
        assert!(task_offsets_in(&data).is_err());
    }

    #[test]
    fn the_running_kernel_has_them() {
        let btf = KernelBtf::default();
        let offsets = btf.task_offsets().unwrap();
        assert_ne!(offsets.pid, offsets.tgid);
        assert!(offsets.pid > 0 && offsets.pid < 16384, "{offsets:?}");
        // x86-64's pt_regs is also its ptrace ABI: orig_ax is the 16th word.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(btf.syscall_nr_offset().unwrap(), 120);
        // thread_info leads task_struct (CONFIG_THREAD_INFO_IN_TASK), and
        // status follows its two longs.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(btf.task_status_offset().unwrap(), 16);
        let migrations = btf.task_migrations_offset().unwrap();
        assert!(migrations > offsets.pid.min(1024) / 4 && migrations < 16384, "{migrations}");
        let start_time = btf.task_start_time_offset().unwrap();
        assert!(start_time > 0 && start_time < 16384, "{start_time}");
    }
}
