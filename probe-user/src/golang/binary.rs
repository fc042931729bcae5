//! What probe needs to know about a Go executable before it can follow its
//! goroutines: that it is Go and which version, where the runtime functions
//! are (its symbol table), where `runtime.g` keeps the goroutine's id and
//! start function (its DWARF), and the names of its functions.

use std::{fs, path::Path};

use anyhow::{Context, Result};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use probe_common::names::program;

use super::{dwarf::Structs, scheduler};

/// The Go programs of the kernel side and the runtime function each goes on.
pub const UPROBES: [(&str, &str); 4] = [
    (program::GO_EXECUTE, "runtime.execute"),
    (program::GO_SCHEDULE, "runtime.schedule"),
    (program::GO_EXIT, "runtime.goexit1"),
    (program::GO_SYSMON, "runtime.sysmon"),
];

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
    /// Where its scheduler's state is, or why it cannot be read.
    pub scheduler: Result<Box<scheduler::Layout>, String>,
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

/// Whether the executable at `path` is a Go program (it has the section
/// the Go linker writes its build information to).
pub fn is_go(path: &Path) -> bool {
    let Ok(data) = fs::read(path) else {
        return false;
    };
    object::File::parse(&*data).is_ok_and(|file| file.section_by_name(".go.buildinfo").is_some())
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
    if !register_abi(&version) {
        return unsupported("goroutines are followed from Go 1.17 on (the register ABI)");
    }
    let mut functions: Vec<(u64, u64, String)> = file
        .symbols()
        .filter(|symbol| symbol.kind() == SymbolKind::Text)
        .filter_map(|symbol| Some((symbol.address(), symbol.size(), symbol.name().ok()?.to_owned())))
        .collect();
    if functions.is_empty() {
        return unsupported("it is stripped (no symbol table)");
    }
    functions.sort_unstable();
    if let Some(missing) =
        UPROBES.iter().map(|&(_, name)| name).find(|name| !functions.iter().any(|(_, _, f)| f == name))
    {
        return unsupported(&format!("it has no {missing}"));
    }
    let structs = Structs::read(&file, &scheduler::STRUCTS)?;
    let Some((goid_offset, startpc_offset)) = g_offsets(&structs) else {
        return unsupported("it has no DWARF to find runtime.g's fields in (built with -ldflags=-w?)");
    };
    let scheduler = scheduler::Layout::new(path, &file, &structs).map(Box::new);
    let wrapped = wrapped_functions(&file).unwrap_or_default();
    Ok(Inspection::Go(GoBinary { version, goid_offset, startpc_offset, scheduler, functions, wrapped }))
}

/// The wrappers of `.gopclntab` (Go 1.20+ layout) and the function each
/// wraps: the `FUNCDATA_WrapInfo` (Go 1.21+) of a function is the offset of
/// the wrapped one from the start of the text. `None` where the table is
/// missing or of another layout: goroutines are then named by their wrappers.
fn wrapped_functions(file: &object::File) -> Option<Vec<(u64, u64)>> {
    const GO120_MAGIC: u32 = 0xffff_fff1;
    const FUNCDATA_WRAP_INFO: usize = 7;
    // `_func`'s fixed part: npcdata at 28, nfuncdata at 43, then the
    // pcdata and funcdata offsets.
    const FUNC_SIZE: usize = 44;
    let table = file.section_by_name(".gopclntab")?.data().ok()?;
    let symbol = |name: &str| file.symbols().find(|symbol| symbol.name() == Ok(name)).map(|s| s.address());
    // moduledata.text and moduledata.gofunc of the (only) module.
    let (text, gofunc) = (symbol("runtime.text")?, symbol("go:func.*")?);
    let u32_at = |bytes: &[u8], at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let word_at = |at: usize| Some(u64::from_le_bytes(table.get(at..at + 8)?.try_into().ok()?) as usize);
    // pcHeader: magic, 2 pads, minLC, ptrSize; then nfunc, nfiles, an
    // unused word, and offsets from it, pclntable's at 64.
    if u32_at(table, 0)? != GO120_MAGIC || table.get(7) != Some(&8) {
        return None;
    }
    let (functions, pclntable) = (word_at(8)?, table.get(word_at(64)?..)?);
    let mut wrapped = Vec::new();
    for index in 0..functions {
        // pclntable starts with ftab: (entry offset, offset of the _func in
        // pclntable) per function.
        let func = pclntable.get(u32_at(pclntable, index * 8 + 4)? as usize..)?;
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
        wrapped.push((text + u64::from(u32_at(func, 0)?), text + u64::from(u32_at(target, 0)?)));
    }
    wrapped.sort_unstable();
    Some(wrapped)
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

/// Go 1.17 and later pass arguments in registers on amd64.
fn register_abi(version: &str) -> bool {
    let numbers = version.trim_start_matches("go");
    let mut parts = numbers.split(|c: char| !c.is_ascii_digit()).map(|part| part.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (1, 17),
        _ => false,
    }
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
    fn the_register_abi_starts_at_go_1_17() {
        assert!(register_abi("go1.17"));
        assert!(register_abi("go1.19.8"));
        assert!(register_abi("go1.22rc1"));
        assert!(register_abi("go2.0"));
        assert!(!register_abi("go1.16.15"));
        assert!(!register_abi("devel +abc"));
    }

    #[test]
    fn a_non_go_binary_is_not_go() {
        let me = std::env::current_exe().unwrap();
        assert!(matches!(inspect(&me).unwrap(), Inspection::NotGo));
        assert!(matches!(inspect(Path::new("/etc/hostname")).unwrap(), Inspection::NotGo));
        assert!(!is_go(&me) && !is_go(Path::new("/nonexistent")));
    }
}
