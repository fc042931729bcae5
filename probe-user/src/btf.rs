//! Finds `task_struct` field offsets in the running kernel's BTF.
//!
//! Rust eBPF programs cannot carry CO-RE relocations, so the scheduler
//! programs get the offsets of the fields they read as load-time globals.
//! Only the type section is walked, and only as far as `task_struct`: a
//! reader this small is simpler than a dependency (aya keeps its BTF types
//! private, and the BTF crates on crates.io are LGPL or pull in libbpf).
//! The loader then proves the offsets on probe's own task before use.

use std::{fs, path::Path};

use anyhow::{bail, ensure, Context, Result};

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

/// Reads the offsets from the running kernel's BTF.
pub fn task_offsets() -> Result<TaskOffsets> {
    let path = Path::new(VMLINUX_BTF);
    let data = fs::read(path).with_context(|| {
        format!("cannot read the kernel's BTF at {VMLINUX_BTF}, which the scheduler view needs (a kernel built with CONFIG_DEBUG_INFO_BTF has it); --no-sched runs without")
    })?;
    task_offsets_in(&data).context("cannot find task_struct's pid and tgid in the kernel's BTF")
}

/// Reads the offsets from raw BTF (native endianness).
pub fn task_offsets_in(data: &[u8]) -> Result<TaskOffsets> {
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
        if kind == KIND_STRUCT && btf.str(strings + name_off)? == "task_struct" {
            return members(&btf, body, vlen, strings, kind_flag);
        }
        at = body + trailing_len(kind, vlen)?;
    }
    bail!("no struct task_struct")
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

fn members(btf: &Reader, body: usize, vlen: usize, strings: usize, kind_flag: bool) -> Result<TaskOffsets> {
    let (mut pid, mut tgid) = (None, None);
    for i in 0..vlen {
        let member = body + 12 * i;
        let name = btf.str(strings + btf.u32(member)? as usize)?;
        let raw = btf.u32(member + 8)?;
        // With kind_flag the top byte is a bitfield size.
        let bits = if kind_flag { raw & 0x00ff_ffff } else { raw };
        let slot = match name {
            "pid" => &mut pid,
            "tgid" => &mut tgid,
            _ => continue,
        };
        ensure!(bits % 8 == 0, "task_struct.{name} is not byte-aligned");
        *slot = Some(bits / 8);
    }
    Ok(TaskOffsets {
        pid: pid.context("task_struct has no member pid")?,
        tgid: tgid.context("task_struct has no member tgid")?,
    })
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
        let offsets = task_offsets().unwrap();
        assert_ne!(offsets.pid, offsets.tgid);
        assert!(offsets.pid > 0 && offsets.pid < 16384, "{offsets:?}");
    }
}
