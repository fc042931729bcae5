//! What probe needs to know about a Go executable before it can follow its
//! goroutines: that it is Go and which version, where its threads keep
//! their goroutine (its TLS), where `runtime.g` keeps the goroutine's id and
//! start function (its DWARF), and the names of its functions.

use std::{fs, io, os::unix::fs::MetadataExt, path::Path};

use anyhow::{Context, Result};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

use super::{dwarf::Structs, scheduler};

/// What an executable turned out to be.
#[derive(Debug)]
pub enum Inspection {
    /// Not a Go program (or not an ELF file).
    NotGo,
    /// A Go program whose goroutines cannot be followed, and why.
    Unsupported { version: String, why: String },
    /// A Go program probe can follow.
    Go(GoBinary),
}

/// A Go executable's layout.
#[derive(Debug)]
pub struct GoBinary {
    /// `go1.19.8`, from `.go.buildinfo`.
    pub version: String,
    /// Byte offsets in `runtime.g`.
    pub goid_offset: u32,
    pub startpc_offset: u32,
    /// Where a thread's `g` is, from its FS base.
    pub tls_offset: i64,
    /// Where its scheduler's state is, or why it cannot be read.
    pub scheduler: Result<Box<scheduler::Layout>, String>,
    /// The executable, by [`file_id`]: what a process that runs it is told
    /// by.
    pub file: (u64, u64),
    /// Function symbols, by address.
    functions: Vec<(u64, u64, String)>,
    /// The compiler's wrappers (entry, entry of the function each calls),
    /// by address.
    wrapped: Vec<(u64, u64)>,
}

impl GoBinary {
    /// The function that contains `pc`.
    pub fn function_at(&self, pc: u64) -> Option<&str> {
        self.function_containing(pc).map(|(_, name)| name)
    }

    /// The function a goroutine that starts at `pc` runs: since Go 1.21,
    /// `go f(x)` starts a wrapper (`main.main.gowrap1`) that calls f, and
    /// the runtime's own tracer names f (`startPCForTrace`), as this does.
    pub fn start_function(&self, pc: u64) -> Option<&str> {
        let (entry, name) = self.function_containing(pc)?;
        match self.wrapped.binary_search_by_key(&entry, |&(wrapper, _)| wrapper) {
            Ok(at) => self.function_at(self.wrapped[at].1).or(Some(name)),
            Err(_) => Some(name),
        }
    }

    fn function_containing(&self, pc: u64) -> Option<(u64, &str)> {
        let at = self.functions.partition_point(|&(start, _, _)| start <= pc).checked_sub(1)?;
        let (start, size, name) = &self.functions[at];
        (pc < start + size.max(&1)).then_some((*start, name.as_str()))
    }
}

/// A file's device (userspace's encoding) and inode: an executable's
/// identity, however it is named (`/proc/PID/exe`, a path, a symlink).
pub fn file_id(path: &Path) -> io::Result<(u64, u64)> {
    fs::metadata(path).map(|metadata| (metadata.dev(), metadata.ino()))
}

/// The address of the symbol `name`, if the binary has it.
fn symbol_address(file: &object::File, name: &str) -> Option<u64> {
    file.symbols().find(|symbol| symbol.name() == Ok(name)).map(|symbol| symbol.address())
}

/// Reads the executable at `path`.
pub fn inspect(path: &Path) -> Result<Inspection> {
    let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let Ok(file) = object::File::parse(&*data) else {
        return Ok(Inspection::NotGo);
    };
    let Some(buildinfo) = file.section_by_name(".go.buildinfo") else {
        return Ok(Inspection::NotGo);
    };
    let version =
        buildinfo.data().ok().and_then(go_version).unwrap_or_else(|| "go (version unknown)".to_owned());
    let unsupported =
        |why: &str| Ok(Inspection::Unsupported { version: version.clone(), why: why.to_owned() });
    if file.architecture() != object::Architecture::X86_64 {
        return unsupported("goroutines are followed on x86-64 only");
    }
    let mut functions: Vec<(u64, u64, String)> = file
        .symbols()
        .filter(|symbol| symbol.kind() == SymbolKind::Text)
        .filter_map(|symbol| Some((symbol.address(), symbol.size(), symbol.name().ok()?.to_owned())))
        .collect();
    // Stripped of its symbol table: the runtime's own table still names
    // every function.
    if functions.is_empty() {
        functions = table_functions(&file).unwrap_or_default();
    }
    functions.sort_unstable();
    let Some(tls_offset) = tls_offset(&file) else {
        return unsupported("it has no runtime.tlsg where its threads keep their goroutine");
    };
    let structs = Structs::read(&file, &scheduler::STRUCTS)?;
    let Some((goid_offset, startpc_offset)) = g_offsets(&structs).or_else(|| known_g_offsets(&version))
    else {
        return unsupported(&format!(
            "it has no DWARF to find runtime.g's fields in (built with -ldflags=-w?), and probe knows them \
             without for {} only",
            KNOWN_G_OFFSETS.map(|(release, _, _)| release).join(", ")
        ));
    };
    let file_id = file_id(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let scheduler = scheduler::Layout::new(file_id, &file, &structs).map(Box::new);
    let wrapped = wrapped_functions(&file).unwrap_or_default();
    Ok(Inspection::Go(GoBinary {
        version,
        goid_offset,
        startpc_offset,
        tls_offset,
        scheduler,
        file: file_id,
        functions,
        wrapped,
    }))
}

/// `runtime.g`'s `goid` and `startpc` offsets per Go release, for
/// binaries without DWARF; each is checked against the DWARF of a build
/// with that release (`tests/golang.rs`, stripped builds).
const KNOWN_G_OFFSETS: [(&str, u32, u32); 2] = [("go1.19", 152, 312), ("go1.27", 152, 304)];

fn known_g_offsets(version: &str) -> Option<(u32, u32)> {
    KNOWN_G_OFFSETS
        .iter()
        .find(|(release, _, _)| {
            version.strip_prefix(release).is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .map(|&(_, goid, startpc)| (goid, startpc))
}

/// `.gopclntab`'s magic numbers: Go 1.18 and 1.19, and Go 1.20 on.
const GO118_MAGIC: u32 = 0xffff_fff0;
const GO120_MAGIC: u32 = 0xffff_fff1;

/// `.gopclntab`'s header (Go 1.18+): the text start and where its tables
/// are, and the function table, `(entry offset, _func offset)` per
/// function from the start of `pclntable`.
struct PcHeader<'a> {
    magic: u32,
    functions: usize,
    text: u64,
    names: &'a [u8],
    pclntable: &'a [u8],
}

impl<'a> PcHeader<'a> {
    /// Reads the header of `file`'s table.
    fn read(file: &object::File<'a>) -> Option<Self> {
        let table = file.section_by_name(".gopclntab")?.data().ok()?;
        let word_at = |at: usize| Some(u64::from_le_bytes(table.get(at..at + 8)?.try_into().ok()?));
        // magic, 2 pads, minLC, ptrSize; then nfunc, nfiles, textStart,
        // and the offsets of funcnametab (32) ... pclntable (64).
        let magic = u32_at(table, 0)?;
        if ![GO118_MAGIC, GO120_MAGIC].contains(&magic) || table.get(7) != Some(&8) {
            return None;
        }
        Some(Self {
            magic,
            functions: word_at(8)? as usize,
            // Go 1.26 stopped filling textStart in: the text then starts
            // at runtime.text, or, stripped of it, at the section (a Go
            // linker's own output: with cgo's, C code may come first).
            text: match word_at(24)? {
                0 => symbol_address(file, "runtime.text")
                    .or_else(|| Some(file.section_by_name(".text")?.address()))?,
                text => text,
            },
            names: table.get(word_at(32)? as usize..)?,
            pclntable: table.get(word_at(64)? as usize..)?,
        })
    }

    /// Function `index`'s entry offset from the text and its `_func`.
    fn function(&self, index: usize) -> Option<(u32, &'a [u8])> {
        let entry = u32_at(self.pclntable, index * 8)?;
        Some((entry, self.pclntable.get(u32_at(self.pclntable, index * 8 + 4)? as usize..)?))
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Every function `.gopclntab` names, `(entry, size, name)`: what names a
/// stripped binary's goroutines. A `_func` keeps its name's offset in
/// `funcnametab` at byte 4 (Go 1.18 on).
fn table_functions(file: &object::File) -> Option<Vec<(u64, u64, String)>> {
    let header = PcHeader::read(file)?;
    let mut functions = Vec::with_capacity(header.functions.min(1 << 20));
    for index in 0..header.functions {
        let (entry, func) = header.function(index)?;
        // The table ends with the text's end: each function runs to the next.
        let (end, _) = header.function(index + 1)?;
        let name = header.names.get(u32_at(func, 4)? as usize..)?;
        let name = &name[..name.iter().position(|&b| b == 0)?];
        functions.push((
            header.text + u64::from(entry),
            u64::from(end.saturating_sub(entry)),
            crate::escape::visible_bytes(name),
        ));
    }
    Some(functions)
}

/// The wrappers of `.gopclntab` (Go 1.20+ layout) and the function each
/// wraps: the `FUNCDATA_WrapInfo` (Go 1.21+) of a function is the offset of
/// the wrapped one from the start of the text. `None` where the table is
/// missing or of another layout: goroutines are then named by their wrappers.
fn wrapped_functions(file: &object::File) -> Option<Vec<(u64, u64)>> {
    const FUNCDATA_WRAP_INFO: usize = 7;
    // `_func`'s fixed part (Go 1.20 on): npcdata at 28, nfuncdata at 43,
    // then the pcdata and funcdata offsets.
    const FUNC_SIZE: usize = 44;
    let header = PcHeader::read(file).filter(|header| header.magic == GO120_MAGIC)?;
    // moduledata.gofunc of the (only) module.
    let gofunc = symbol_address(file, "go:func.*")?;
    let mut wrapped = Vec::new();
    for index in 0..header.functions {
        let (entry, func) = header.function(index)?;
        let (npcdata, nfuncdata) = (u32_at(func, 28)? as usize, usize::from(*func.get(43)?));
        if nfuncdata <= FUNCDATA_WRAP_INFO {
            continue;
        }
        let offset = u32_at(func, FUNC_SIZE + 4 * (npcdata + FUNCDATA_WRAP_INFO))?;
        if offset == u32::MAX {
            continue;
        }
        let info = gofunc + u64::from(offset);
        let target = file.sections().find_map(|section| section.data_range(info, 4).ok().flatten())?;
        wrapped.push((header.text + u64::from(entry), header.text + u64::from(u32_at(target, 0)?)));
    }
    wrapped.sort_unstable();
    Some(wrapped)
}

/// Where a thread's `g` is, from its FS base. Without cgo the runtime has
/// no TLS segment and keeps it at -8 itself; otherwise it is `runtime.tlsg`,
/// in the executable's TLS block, which on x86-64 ends at the thread
/// pointer (variant II).
fn tls_offset(file: &object::File) -> Option<i64> {
    use object::read::elf::ProgramHeader;
    const NO_CGO: i64 = -8;
    let object::File::Elf64(elf) = file else {
        return None;
    };
    let endian = elf.endian();
    let Some(tls) =
        elf.elf_program_headers().iter().find(|header| header.p_type(endian) == object::elf::PT_TLS)
    else {
        return Some(NO_CGO);
    };
    let (size, align) = (tls.p_memsz(endian), tls.p_align(endian).max(1));
    // A block of one slot (a PIE build's, or a stripped one's) is the g's.
    let tlsg = match symbol_address(file, "runtime.tlsg") {
        Some(address) => address,
        None if size <= 8 => 0,
        None => return None,
    };
    Some(tlsg as i64 - size.next_multiple_of(align) as i64)
}

/// The version string of `.go.buildinfo`, where Go 1.18+ puts it inline:
/// a 32-byte header (magic, pointer size, flags with bit 2 set), then
/// varint-prefixed strings.
fn go_version(section: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if !section.starts_with(MAGIC) || section.get(15)? & 2 == 0 {
        return None;
    }
    let rest = section.get(32..)?;
    let (length, used) = varint(rest)?;
    let bytes = rest.get(used..used + length as usize)?;
    Some(crate::escape::visible_bytes(bytes))
}

fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// `runtime.g`'s `goid` and `startpc` offsets, from the DWARF.
fn g_offsets(structs: &Structs) -> Option<(u32, u32)> {
    let offset =
        |member| structs.field("runtime.g", member).and_then(|field| u32::try_from(field.offset).ok());
    offset("goid").zip(offset("startpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_buildinfo() {
        let mut section = b"\xff Go buildinf:\x08\x02".to_vec();
        section.resize(32, 0);
        section.push(8);
        section.extend_from_slice(b"go1.19.8");
        assert_eq!(go_version(&section).as_deref(), Some("go1.19.8"));
        section[15] = 0;
        assert_eq!(go_version(&section), None, "pre-1.18 layout: pointers, not inline");
        assert_eq!(go_version(b"garbage"), None);
    }

    #[test]
    fn a_non_go_binary_is_not_go() {
        let me = std::env::current_exe().unwrap();
        assert!(matches!(inspect(&me).unwrap(), Inspection::NotGo));
        assert!(matches!(inspect(Path::new("/etc/hostname")).unwrap(), Inspection::NotGo));
    }
}
