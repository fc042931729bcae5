//! Reading a process's structures from outside it: the members a [`Plan`]
//! names, of many structures at once, with `process_vm_readv` (one syscall
//! for up to 1024 pieces; the process is not stopped). A process's memory
//! is hostile input: a wild pointer is left unread, and every call is
//! bounded.

use std::{io::IoSliceMut, ops::Range};

use nix::{
    errno::Errno,
    sys::uio::{process_vm_readv, RemoteIoVec},
    unistd::Pid,
};

use super::dwarf::{Field, Structs};

/// The most remote pieces one `process_vm_readv` takes (`IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Structures' ranges less apart than this are read as one (a goroutine's
/// `g` is some 400 bytes; a P's members are 2 KiB apart, around its run
/// queue), up to a range of `MAX_RANGE`.
const MERGE_GAP: u64 = 1024;
const MAX_RANGE: u64 = 64 << 10;

/// The most bytes one `process_vm_readv` of structures reads.
const MAX_BATCH_BYTES: u64 = 4 << 20;

/// How to read some members of a structure: the byte ranges that hold
/// them (near ones merged), packed one after the other in a local buffer.
#[derive(Debug)]
pub struct Plan {
    /// Name (the first of its names), place in the structure, place in
    /// the local buffer.
    fields: Vec<(&'static str, Field, usize)>,
    /// Offset in the structure and length of each range.
    spans: Vec<(u64, usize)>,
    /// Bytes per structure in the local buffer.
    pub len: usize,
}

impl Plan {
    /// Members `names` of struct `name`; says which one it lacks.
    pub fn new(structs: &Structs, name: &str, names: &[&[&'static str]]) -> Result<Self, String> {
        // Members less than this apart are read in one range: one piece
        // of a syscall costs more than a few bytes copied.
        const GAP: u64 = 64;
        let mut fields = Vec::new();
        for paths in names {
            let field = structs
                .first_field(name, paths)
                .filter(|field| (1..=8).contains(&field.size))
                .ok_or_else(|| format!("its DWARF has no {name}.{} this probe can read", paths[0]))?;
            fields.push((paths[0], field, 0));
        }
        fields.sort_by_key(|(_, field, _)| field.offset);
        // (offset in the structure, end, offset in the local buffer).
        let mut ranges: Vec<(u64, u64, usize)> = Vec::new();
        for (_, field, local) in &mut fields {
            let end = field.offset + field.size;
            match ranges.last_mut() {
                Some(range) if field.offset <= range.1 + GAP => range.1 = range.1.max(end),
                _ => {
                    let at = ranges.last().map_or(0, |&(start, end, at)| at + (end - start) as usize);
                    ranges.push((field.offset, end, at));
                }
            }
            let &(start, _, at) = ranges.last().unwrap_or(&(0, 0, 0));
            *local = at + (field.offset - start) as usize;
        }
        let spans: Vec<(u64, usize)> =
            ranges.iter().map(|&(start, end, _)| (start, (end - start) as usize)).collect();
        let len = spans.iter().map(|&(_, len)| len).sum();
        Ok(Self { fields, spans, len })
    }

    /// One word at the start of the structure: a funcval's code pointer.
    pub fn word() -> Self {
        Self { fields: vec![("word", Field { offset: 0, size: 8 }, 0)], spans: vec![(0, 8)], len: 8 }
    }

    /// Member `name` of a structure read by this plan, zero-extended.
    pub fn get(&self, object: &[u8], name: &str) -> u64 {
        let Some((_, field, local)) = self.fields.iter().find(|(n, _, _)| *n == name) else {
            return 0;
        };
        let mut bytes = [0u8; 8];
        let size = field.size as usize;
        bytes[..size].copy_from_slice(&object[*local..*local + size]);
        u64::from_le_bytes(bytes)
    }

    /// Member `name`, sign-extended from its size.
    pub fn signed(&self, object: &[u8], name: &str) -> i64 {
        let size = self.fields.iter().find(|(n, _, _)| *n == name).map_or(8, |(_, field, _)| field.size);
        let shift = 64 - 8 * size as u32;
        ((self.get(object, name) << shift) as i64) >> shift
    }
}

/// A process's memory, read with `process_vm_readv`: many pieces in one
/// syscall.
pub struct Memory(pub Pid);

impl Memory {
    /// Reads each of `pieces` (address, length) into `out`, one after the
    /// other; all or nothing.
    pub fn gather(&self, pieces: &[(u64, usize)], out: &mut [u8]) -> Result<(), Errno> {
        let remote: Vec<RemoteIoVec> =
            pieces.iter().map(|&(base, len)| RemoteIoVec { base: base as usize, len }).collect();
        let want = out.len();
        let read = process_vm_readv(self.0, &mut [IoSliceMut::new(out)], &remote)?;
        match read == want {
            true => Ok(()),
            false => Err(Errno::EFAULT),
        }
    }

    /// Reads the structures at `addresses` by `plan`: their bytes, packed,
    /// and which could be read (a goroutine freed meanwhile cannot). Fails
    /// only when the process is gone.
    ///
    /// The ranges are read in address order, those less than [`MERGE_GAP`]
    /// apart as one: the kernel pins a page per piece, and the runtime
    /// allocates goroutines side by side, so 10,000 of them are read from
    /// some hundreds of pages rather than 10,000 pieces.
    pub fn structs(&self, addresses: &[u64], plan: &Plan) -> Result<(Vec<u8>, Vec<bool>), Errno> {
        let mut bytes = vec![0u8; addresses.len() * plan.len];
        // (address, length, where it goes in `bytes`, its structure).
        let mut pieces: Vec<(u64, usize, usize, usize)> =
            Vec::with_capacity(addresses.len() * plan.spans.len());
        for (index, &address) in addresses.iter().enumerate() {
            let mut local = index * plan.len;
            for &(offset, len) in &plan.spans {
                // A wild pointer cannot wrap around: it is left unread.
                if let Some(start) =
                    address.checked_add(offset).filter(|start| start.checked_add(len as u64).is_some())
                {
                    pieces.push((start, len, local, index));
                }
                local += len;
            }
        }
        pieces.sort_unstable_by_key(|&(start, ..)| start);
        // Ranges to read: (start, length, the pieces they hold).
        let mut ranges: Vec<(u64, u64, Range<usize>)> = Vec::new();
        for (at, &(start, len, ..)) in pieces.iter().enumerate() {
            let end = start + len as u64;
            match ranges.last_mut() {
                Some((first, length, held))
                    if start <= *first + *length + MERGE_GAP && end - *first <= MAX_RANGE =>
                {
                    *length = (*length).max(end - *first);
                    held.end = at + 1;
                }
                _ => ranges.push((start, len as u64, at..at + 1)),
            }
        }
        let mut pieces_read = vec![0usize; addresses.len()];
        let mut scratch = Vec::new();
        let mut next = 0;
        while next < ranges.len() {
            // Up to IOV_MAX ranges, and a few MiB, a call.
            let mut bytes_in_batch = 0;
            let count = ranges[next..]
                .iter()
                .take(IOV_MAX)
                .take_while(|&&(_, len, _)| {
                    bytes_in_batch += len;
                    bytes_in_batch <= MAX_BATCH_BYTES
                })
                .count()
                .max(1);
            let batch = &ranges[next..next + count];
            let remote: Vec<RemoteIoVec> = batch
                .iter()
                .map(|&(start, len, _)| RemoteIoVec { base: start as usize, len: len as usize })
                .collect();
            scratch.resize(batch.iter().map(|&(_, len, _)| len as usize).sum(), 0);
            // A transfer stops at the first range it cannot read: those
            // before it are whole, it is skipped.
            let mut left = match process_vm_readv(self.0, &mut [IoSliceMut::new(&mut scratch)], &remote) {
                Ok(n) => n,
                Err(Errno::EFAULT) => 0,
                Err(err) => return Err(err),
            };
            let mut at = 0;
            let mut whole = 0;
            for (start, len, held) in batch {
                if (*len as usize) > left {
                    break;
                }
                for &(piece, piece_len, local, index) in &pieces[held.clone()] {
                    let from = at + (piece - start) as usize;
                    bytes[local..local + piece_len].copy_from_slice(&scratch[from..from + piece_len]);
                    pieces_read[index] += 1;
                }
                (at, left, whole) = (at + *len as usize, left - *len as usize, whole + 1);
            }
            next += whole + usize::from(whole < batch.len());
        }
        Ok((bytes, pieces_read.into_iter().map(|read| read == plan.spans.len()).collect()))
    }

    /// A Go slice's data pointer and length.
    pub fn slice_header(bytes: &[u8]) -> (u64, u64) {
        (word(bytes, 0), word(bytes, 8))
    }

    /// `count` pointers from `address`.
    pub fn pointers(&self, address: u64, count: u64) -> Result<Vec<u64>, Errno> {
        let mut bytes = vec![0u8; count as usize * 8];
        if count > 0 {
            self.gather(&[(address, bytes.len())], &mut bytes)?;
        }
        Ok(bytes.chunks_exact(8).map(|chunk| word(chunk, 0)).collect())
    }
}

pub fn word(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_are_read_from_a_process_and_a_wild_pointer_is_left_unread() {
        let mut structs = Structs::default();
        structs.insert_for_test("t", &[("a", 0, 4), ("far", 2048, 8)]);
        let plan = Plan::new(&structs, "t", &[&["a"], &["far"]]).unwrap();
        // Side by side, as the runtime allocates them.
        let mut objects = vec![[0u8; 2056]; 300];
        for (i, object) in objects.iter_mut().enumerate() {
            object[0..4].copy_from_slice(&(i as u32).to_le_bytes());
            object[2048..2056].copy_from_slice(&(i as u64 * 3).to_le_bytes());
        }
        let mut addresses: Vec<u64> = objects.iter().map(|object| object.as_ptr() as u64).collect();
        addresses.insert(7, 8);
        addresses.push(u64::MAX - 4);
        let (bytes, read) = Memory(Pid::this()).structs(&addresses, &plan).unwrap();
        assert_eq!(read.iter().filter(|read| !**read).count(), 2);
        assert!(!read[7] && !read[301]);
        let read: Vec<(u64, u64)> = bytes
            .chunks_exact(plan.len)
            .zip(&read)
            .filter(|(_, read)| **read)
            .map(|(object, _)| (plan.get(object, "a"), plan.get(object, "far")))
            .collect();
        assert_eq!(read, (0..300).map(|i| (i, i * 3)).collect::<Vec<_>>());
    }

    #[test]
    fn a_plan_reads_near_members_in_one_range_and_far_ones_apart() {
        let mut structs = Structs::default();
        structs.insert_for_test("t", &[("a", 0, 4), ("b", 8, 8), ("far", 4096, 8), ("byte", 4104, 1)]);
        let plan = Plan::new(&structs, "t", &[&["b"], &["a"], &["far"], &["byte"], &["old", "a"]]).unwrap();
        assert_eq!(plan.spans, [(0, 16), (4096, 9)]);
        assert_eq!(plan.len, 25);
        let mut object = vec![0u8; 25];
        object[0..4].copy_from_slice(&(-2i32).to_le_bytes());
        object[8..16].copy_from_slice(&7u64.to_le_bytes());
        object[16..24].copy_from_slice(&9u64.to_le_bytes());
        object[24] = 3;
        assert_eq!((plan.signed(&object, "a"), plan.get(&object, "b")), (-2, 7));
        assert_eq!((plan.get(&object, "far"), plan.get(&object, "byte")), (9, 3));
        assert!(Plan::new(&structs, "t", &[&["missing"]]).unwrap_err().contains("t.missing"));
    }
}
