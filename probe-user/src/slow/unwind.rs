//! A slow call's user stack, from the registers and stack bytes its record
//! carries: unwound with the DWARF call-frame information of each mapped
//! object (`.eh_frame`, which programs built without frame pointers still
//! have), by `framehop`, which falls back to frame pointers where there is
//! none (Go's binaries).

use std::{fs::File, ops::Range, os::fd::AsRawFd};

use framehop::{
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
    ExplicitModuleSectionInfo, Module, Unwinder,
};
use object::{read::ReadCache, Object, ObjectSection, ObjectSegment, SegmentFlags};
use rustc_hash::FxHashMap;

/// Processes whose objects are kept: a trace's slow calls come from a few.
const KEPT_PROCESSES: usize = 32;

/// Frames followed at most: a loop in garbage stack bytes ends here.
const MAX_FRAMES: usize = 128;

/// How a stack walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// At the outermost frame.
    Complete,
    /// Where the stack bytes read in the kernel ran out, or unwind
    /// information was missing or wrong (an address outside the code the
    /// process maps): frames beyond are not known.
    Truncated,
    /// The process was gone before its objects could be read: only the
    /// address of the call is known, not its callers nor its symbols.
    ProcessGone,
}

/// The unwinders of the processes slow calls came from.
#[derive(Default)]
pub struct Unwinders {
    processes: FxHashMap<u32, Process>,
}

struct Process {
    unwinder: UnwinderX86_64<Vec<u8>>,
    /// The executable mappings its objects were read for.
    mapped: Vec<Mapping>,
}

/// An executable mapping of a file.
struct Mapping {
    range: Range<u64>,
    /// The file offset mapped at `range.start`.
    offset: u64,
    /// The object mapped, kept open to be symbolized from: a short-lived
    /// process is often gone by then, and its `/proc/PID/map_files` with
    /// it. `None` when it could not be opened.
    object: Option<File>,
}

impl Unwinders {
    /// The lookup addresses of the frames of process `pid`'s thread whose
    /// registers at the syscall were `ip`, `sp` and `bp`, and `stack` the
    /// bytes from `sp` up: innermost first, return addresses moved back
    /// into their call instruction, as symbolizers want them.
    pub fn unwind(&mut self, pid: u32, ip: u64, sp: u64, bp: u64, stack: &[u8]) -> (Vec<u64>, End) {
        // A library mapped since the process was first seen is read then.
        if self.processes.get(&pid).is_none_or(|process| process.mapping(ip).is_none()) {
            if self.processes.len() == KEPT_PROCESSES {
                self.processes.clear();
            }
            self.processes.insert(pid, Process::read(pid));
        }
        let process = &self.processes[&pid];
        if process.mapped.is_empty() {
            self.processes.remove(&pid);
            return (vec![ip], End::ProcessGone);
        }
        let mut cache = CacheX86_64::<_>::new();
        let mut read_stack = |addr: u64| {
            let at = addr.checked_sub(sp).ok_or(())? as usize;
            let bytes = stack.get(at..at.checked_add(8).ok_or(())?).ok_or(())?;
            Ok(u64::from_ne_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let mut frames =
            process.unwinder.iter_frames(ip, UnwindRegsX86_64::new(ip, sp, bp), &mut cache, &mut read_stack);
        let mut addresses = Vec::new();
        loop {
            match frames.next() {
                Ok(Some(frame))
                    if addresses.len() < MAX_FRAMES && process.mapping(frame.address()).is_some() =>
                {
                    addresses.push(frame.address_for_lookup())
                }
                Ok(None) => return (addresses, End::Complete),
                Ok(Some(_)) | Err(_) => return (addresses, End::Truncated),
            }
        }
    }

    /// Where to symbolize `addr` of process `pid` from, as unwound last:
    /// the path of its object (`/proc/self/fd/N`, valid after the process
    /// exited) and its offset in that file. `None` outside the files it
    /// maps executable (its vDSO, code it generated).
    pub fn object_offset(&self, pid: u32, addr: u64) -> Option<(String, u64)> {
        let map = self.processes.get(&pid)?.mapping(addr)?;
        let object = map.object.as_ref()?;
        Some((format!("/proc/self/fd/{}", object.as_raw_fd()), addr - map.range.start + map.offset))
    }
}

impl Process {
    /// Reads the unwind information of each object process `pid` maps
    /// executable; one that cannot be read is unwound by frame pointers.
    fn read(pid: u32) -> Self {
        let mut unwinder = UnwinderX86_64::new();
        let mut mapped = Vec::new();
        let maps = ::procfs::process::Process::new(pid as i32).and_then(|process| process.maps());
        for map in maps.into_iter().flatten() {
            if !map.perms.contains(::procfs::process::MMPermissions::EXECUTE)
                || !matches!(map.pathname, ::procfs::process::MMapPath::Path(_))
            {
                continue;
            }
            let range = map.address.0..map.address.1;
            // The object the process really maps, whatever its path names
            // now (a path may be replaced or planted; this is the inode).
            let path = format!("/proc/{pid}/map_files/{:x}-{:x}", range.start, range.end);
            let object = File::open(path).ok();
            // Read as parsed: only the headers and the sections copied
            // below, where a program's objects can be hundreds of MB (and
            // not mapped: a file truncated meanwhile would fault probe).
            let data = object.as_ref().map(ReadCache::new);
            if let Some(module) = data.as_ref().and_then(|data| module(data, &range, map.offset)) {
                unwinder.add_module(module);
            }
            mapped.push(Mapping { range, offset: map.offset, object });
        }
        Self { unwinder, mapped }
    }

    /// The executable mapping `addr` is in.
    fn mapping(&self, addr: u64) -> Option<&Mapping> {
        self.mapped.iter().find(|map| map.range.contains(&addr))
    }
}

/// How far from the addresses its file gives them an object's addresses
/// are in a process: its mapping at `map_start`, from file offset
/// `map_offset`, holds part of the segment that the file puts at
/// `segment_address` from file offset `segment_offset`.
pub fn load_bias(map_start: u64, map_offset: u64, segment_address: u64, segment_offset: u64) -> u64 {
    map_start.wrapping_sub(segment_address.wrapping_sub(segment_offset).wrapping_add(map_offset))
}

/// The unwind information of an ELF object mapped executable at `range`
/// from file offset `offset`.
fn module(data: &ReadCache<&File>, range: &Range<u64>, offset: u64) -> Option<Module<Vec<u8>>> {
    let file = object::File::parse(data).ok()?;
    // The executable segment this mapping holds: where the object's
    // addresses are in the process.
    let segment = file.segments().find(|segment| {
        let (start, len) = segment.file_range();
        let executable =
            matches!(segment.flags(), SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0);
        executable && offset < start + len && start < offset + (range.end - range.start)
    })?;
    let (file_start, _) = segment.file_range();
    let base_avma = load_bias(range.start, offset, segment.address(), file_start);
    let section = |name: &str| file.section_by_name(name);
    let svma = |name: &str| section(name).map(|s| s.address()..s.address() + s.size());
    let bytes = |name: &str| section(name).and_then(|s| s.uncompressed_data().ok()).map(|d| d.into_owned());
    let info = ExplicitModuleSectionInfo {
        base_svma: 0,
        // No `.text`: framehop reads instructions only to unwind from a
        // prologue or epilogue, and a syscall's frames are at calls.
        text_svma: svma(".text"),
        got_svma: svma(".got"),
        eh_frame_svma: svma(".eh_frame"),
        eh_frame: bytes(".eh_frame"),
        eh_frame_hdr_svma: svma(".eh_frame_hdr"),
        eh_frame_hdr: bytes(".eh_frame_hdr"),
        debug_frame: bytes(".debug_frame"),
        ..Default::default()
    };
    Some(Module::new(String::new(), range.clone(), base_avma, info))
}
