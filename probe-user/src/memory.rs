//! Running out of memory ends probe with one line that says why, instead of
//! Rust's abort with a backtrace: the usual cause is a tight `ulimit -v`,
//! which the line names so that the user knows what to raise.

use std::alloc::{GlobalAlloc, Layout, System};

/// The system allocator, with its failures reported (see the module).
pub struct Allocator;

// SAFETY: every call is the system allocator's; only a null result is
// acted on, and then the process ends.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { System.alloc(layout) };
        if ptr.is_null() {
            exhausted(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if ptr.is_null() {
            exhausted(layout.size());
        }
        ptr
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { System.realloc(ptr, layout, new_size) };
        if ptr.is_null() {
            exhausted(new_size);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Says that `size` bytes could not be had, and under which address-space
/// limit, then exits 1. Nothing here allocates: the line is put together
/// on the stack and written with one `write(2)`. `_exit`, because exit
/// handlers may allocate; the kernel detaches the programs as it closes
/// probe's descriptors.
#[cold]
fn exhausted(size: usize) -> ! {
    let mut line = Line::default();
    line.push(b"probe: out of memory (");
    line.number(size as u64);
    line.push(b" more bytes");
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0 && limit.rlim_cur != libc::RLIM_INFINITY {
        line.push(b" under an address-space limit of ");
        line.number(limit.rlim_cur / 1024);
        line.push(b" KiB: raise `ulimit -v`");
    }
    line.push(b")\n");
    // SAFETY: writes the bytes of `line` to stderr, then ends the process.
    unsafe {
        libc::write(2, line.bytes.as_ptr().cast(), line.len);
        libc::_exit(1)
    }
}

/// A line of text in a fixed buffer (longer text is cut).
struct Line {
    bytes: [u8; 160],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self { bytes: [0; 160], len: 0 }
    }
}

impl Line {
    fn push(&mut self, text: &[u8]) {
        for &byte in text {
            if self.len < self.bytes.len() {
                self.bytes[self.len] = byte;
                self.len += 1;
            }
        }
    }

    fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_hold_numbers_and_stop_at_their_end() {
        let mut line = Line::default();
        line.push(b"a ");
        line.number(0);
        line.push(b" ");
        line.number(u64::MAX);
        assert_eq!(&line.bytes[..line.len], b"a 0 18446744073709551615");
        line.push(&[b'x'; 200]);
        assert_eq!(line.len, 160);
    }
}
