//! The reading side of the BPF ring buffer: records read in place, and the
//! consumer position published once per drain instead of once per record.
//!
//! Every `bpf_ringbuf_reserve` in the kernel loads the consumer position to
//! see whether there is room. Published after each record (aya's
//! `RingBuf` and libbpf do so), that word's cache line moves between the
//! reader's CPU and every producing CPU once per record, and both sides pay
//! for it: the traced program in its syscalls, probe per record. The layout
//! read here is the kernel's (`kernel/bpf/ringbuf.c`): a consumer page,
//! then a producer page and the data pages, mapped twice in a row so that
//! no record wraps.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    ptr::NonNull,
    sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering},
};

use anyhow::{Context, Result};
use aya::maps::MapData;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// A record's header: its length, and these two flags in its top bits.
const HEADER_LEN: usize = 8;
const BUSY: u32 = 1 << 31;
const DISCARDED: u32 = 1 << 30;

/// A reader publishes its position mid-drain once it is this part of the
/// ring buffer ahead, so that a long drain frees room as it goes: 64 KiB of
/// the default 1 MiB.
const PUBLISH_EVERY_PART: usize = 16;

/// The ring buffer map, mapped for reading.
pub struct Ring {
    map: MapData,
    consumer: Mapping,
    producer: Mapping,
    /// The size of the data area, a power of two, less one.
    mask: usize,
    /// How far ahead of the published position the reader may get.
    publish_every: usize,
    /// Where the next record starts: ahead of the published position.
    position: usize,
    published: usize,
    /// The producer position as last loaded: records before it are
    /// committed or busy.
    produced: usize,
}

struct Mapping {
    address: NonNull<std::ffi::c_void>,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped by `Ring::new` with this length, and no reference
        // into it outlives the `Ring`.
        let _ = unsafe { munmap(self.address, self.len) };
    }
}

impl Ring {
    /// Maps ring buffer `map`.
    pub fn new(map: MapData) -> Result<Self> {
        let size = map.info().context("cannot read the ring buffer's size")?.max_entries() as usize;
        anyhow::ensure!(size.is_power_of_two(), "the ring buffer's size {size} is not a power of two");
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let fd = map.fd().as_fd();
        let consumer = map_pages(fd, page, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, 0)?;
        let producer = map_pages(fd, page + 2 * size, ProtFlags::PROT_READ, page)?;
        // SAFETY: the consumer page starts with the consumer position, an
        // aligned word.
        let position = unsafe { consumer.address.cast::<AtomicUsize>().as_ref() }.load(Ordering::Acquire);
        Ok(Self {
            map,
            consumer,
            producer,
            mask: size - 1,
            publish_every: size / PUBLISH_EVERY_PART,
            position,
            published: position,
            produced: position,
        })
    }

    /// The next committed record, or `None` once none is: the ring buffer
    /// is empty, or its next record is still being written. Discarded
    /// records are skipped. Call [`Ring::publish`] when done.
    pub fn next(&mut self) -> Option<&[u8]> {
        loop {
            if self.position == self.produced {
                self.produced = self.producer_position();
                if self.position == self.produced {
                    return None;
                }
            }
            let offset = self.position & self.mask;
            // SAFETY: the header of the record at `position`, which the
            // producer position says was reserved, in the data area that
            // starts a page into the producer mapping; 8-aligned.
            let header = unsafe {
                let at = self.producer.address.as_ptr().cast::<u8>().add(self.page() + offset);
                &*at.cast::<AtomicU32>()
            };
            // Pairs with the kernel's commit (an xchg): the record's bytes
            // are visible once its busy bit is clear.
            let header = header.load(Ordering::Acquire);
            if header & BUSY != 0 {
                return None;
            }
            // The records before this one are done with.
            if self.position - self.published >= self.publish_every {
                self.store_position();
            }
            let len = (header & !(BUSY | DISCARDED)) as usize;
            let start = self.position + HEADER_LEN;
            self.position += (HEADER_LEN + len).next_multiple_of(8);
            if header & DISCARDED != 0 {
                continue;
            }
            // SAFETY: the record's bytes, committed, inside the data area's
            // two mappings in a row (a record is at most the data area's
            // size); the kernel does not reuse them before the consumer
            // position passes them, which `publish` does only after this
            // borrow of `self` ends.
            return Some(unsafe {
                let at = self.producer.address.as_ptr().cast::<u8>().add(self.page() + (start & self.mask));
                std::slice::from_raw_parts(at, len)
            });
        }
    }

    /// Gives the room of the records read back to the kernel, and says
    /// whether more came meanwhile: the reader that then waits must not
    /// miss a wakeup the kernel decided on while the position lagged.
    pub fn publish(&mut self) -> bool {
        self.store_position();
        // Either this load sees a record committed meanwhile, or its
        // producer saw the position just stored (and woke the reader).
        fence(Ordering::SeqCst);
        self.produced = self.producer_position();
        self.produced != self.position
    }

    /// Where the data area starts in the producer mapping: after the
    /// producer page, as long as the consumer page.
    fn page(&self) -> usize {
        self.consumer.len
    }

    /// Publishes the position up to the record `next` reads next.
    fn store_position(&mut self) {
        if self.published != self.position {
            // SAFETY: the consumer page starts with the consumer position.
            let consumer = unsafe { self.consumer.address.cast::<AtomicUsize>().as_ref() };
            // After the reads of the records before it, which the kernel
            // may then overwrite.
            consumer.store(self.position, Ordering::Release);
            self.published = self.position;
        }
    }

    fn producer_position(&self) -> usize {
        // SAFETY: the producer page starts with the producer position;
        // Acquire pairs with the kernel's store after its reservation.
        unsafe { self.producer.address.cast::<AtomicUsize>().as_ref() }.load(Ordering::Acquire)
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}

/// Maps `len` bytes of the ring buffer from `offset`.
fn map_pages(fd: BorrowedFd<'_>, len: usize, protection: ProtFlags, offset: usize) -> Result<Mapping> {
    let length = std::num::NonZeroUsize::new(len).context("an empty mapping")?;
    // SAFETY: a new shared mapping of the map's fd, which the kernel sizes
    // and checks; nothing else is mapped at the address it picks.
    let address = unsafe { mmap(None, length, protection, MapFlags::MAP_SHARED, fd, offset as i64) }
        .map_err(io::Error::from)
        .context("cannot map the ring buffer")?;
    Ok(Mapping { address, len })
}
