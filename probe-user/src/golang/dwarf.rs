//! Where named structs keep their members, from a binary's DWARF: the Go
//! runtime's structures change between releases (fields added, moved,
//! wrapped in `atomic.Int32`), so their layout is read, never assumed.

use std::{borrow::Cow, collections::HashMap};

use anyhow::Result;
use object::{Object, ObjectSection};

type Slice<'a> = gimli::EndianSlice<'a, gimli::LittleEndian>;

/// A member's place in its struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug)]
struct Member {
    name: String,
    offset: u64,
    /// Where its type is in `.debug_info`.
    type_at: Option<usize>,
}

/// The members of the structs asked for, and the names and sizes of the
/// types they have.
#[derive(Debug, Default)]
pub struct Structs {
    structs: HashMap<String, Vec<Member>>,
    /// Each type by its offset in `.debug_info`.
    types: HashMap<usize, Type>,
}

#[derive(Clone, Debug)]
struct Type {
    name: Option<String>,
    size: Option<u64>,
    /// The type a typedef names.
    names: Option<usize>,
}

impl Structs {
    /// Reads the members of the structs named `names`, in one pass over
    /// the DWARF; a binary without DWARF has none.
    pub fn read(file: &object::File, names: &[&str]) -> Result<Self> {
        let load = |id: gimli::SectionId| -> Result<Cow<[u8]>, gimli::Error> {
            Ok(file
                .section_by_name(id.name())
                .and_then(|section| section.uncompressed_data().ok())
                .unwrap_or_default())
        };
        let sections = gimli::DwarfSections::load(load)?;
        let dwarf = sections.borrow(|section| gimli::EndianSlice::new(section, gimli::LittleEndian));
        let mut structs = Self::default();
        let mut units = dwarf.units();
        while let Some(header) = units.next()? {
            let unit = dwarf.unit(header)?;
            let mut tree = unit.entries_tree(None)?;
            let mut children = tree.root()?.children();
            while let Some(node) = children.next()? {
                let entry = node.entry();
                let name = name_of(&dwarf, &unit, entry)?;
                let size = match entry.attr_value(gimli::DW_AT_byte_size) {
                    Some(value) => value.udata_value(),
                    // Go gives its pointer types no size.
                    None if entry.tag() == gimli::DW_TAG_pointer_type => Some(8),
                    None => None,
                };
                if let Some(at) = global(&unit, entry.offset()) {
                    let names = match entry.tag() {
                        gimli::DW_TAG_typedef => type_of(&unit, entry),
                        _ => None,
                    };
                    structs.types.insert(at, Type { name: name.clone(), size, names });
                }
                let wanted = entry.tag() == gimli::DW_TAG_structure_type
                    && name.as_deref().is_some_and(|name| names.contains(&name));
                if !wanted {
                    continue;
                }
                let mut members = Vec::new();
                let mut nodes = node.children();
                while let Some(member) = nodes.next()? {
                    let member = member.entry();
                    let (Some(name), Some(offset)) = (
                        name_of(&dwarf, &unit, member)?,
                        member.attr_value(gimli::DW_AT_data_member_location).and_then(|v| v.udata_value()),
                    ) else {
                        continue;
                    };
                    members.push(Member { name, offset, type_at: type_of(&unit, member) });
                }
                structs.structs.insert(name.unwrap_or_default(), members);
            }
        }
        Ok(structs)
    }

    /// A struct of members (name, offset, size), as if read.
    #[cfg(test)]
    pub fn insert_for_test(&mut self, name: &str, members: &[(&str, u64, u64)]) {
        let mut read = Vec::new();
        for &(member, offset, size) in members {
            let at = self.types.len() + 1_000_000;
            self.types.insert(at, Type { name: None, size: Some(size), names: None });
            read.push(Member { name: member.to_owned(), offset, type_at: Some(at) });
        }
        self.structs.insert(name.to_owned(), read);
    }

    /// Whether the DWARF had struct `name`.
    pub fn has(&self, name: &str) -> bool {
        self.structs.contains_key(name)
    }

    /// Where member `path` of struct `name` is: `runq.size` is member
    /// `size` of member `runq`'s type, which must have been read too.
    pub fn field(&self, name: &str, path: &str) -> Option<Field> {
        let (mut strukt, mut offset, mut size) = (name.to_owned(), 0, None);
        for part in path.split('.') {
            let member = self.structs.get(&strukt)?.iter().find(|member| member.name == part)?;
            let mut ty = self.types.get(&member.type_at?)?;
            // Through typedefs (Go's `func()` is one) to a sized type; a
            // few: the DWARF is the binary's, and may loop.
            for _ in 0..8 {
                match (ty.size, ty.names.and_then(|at| self.types.get(&at))) {
                    (None, Some(named)) => ty = named,
                    _ => break,
                }
            }
            offset += member.offset;
            size = ty.size;
            strukt = ty.name.clone().unwrap_or_default();
        }
        Some(Field { offset, size: size? })
    }

    /// The first of `paths` that struct `name` has: a member renamed or
    /// moved between Go releases goes by each of its names.
    pub fn first_field(&self, name: &str, paths: &[&str]) -> Option<Field> {
        paths.iter().find_map(|path| self.field(name, path))
    }
}

/// Where the type of `entry` is in `.debug_info`.
fn type_of(unit: &gimli::Unit<Slice>, entry: &gimli::DebuggingInformationEntry<Slice>) -> Option<usize> {
    match entry.attr_value(gimli::DW_AT_type)? {
        gimli::AttributeValue::UnitRef(at) => global(unit, at),
        gimli::AttributeValue::DebugInfoRef(at) => Some(at.0),
        _ => None,
    }
}

fn global(unit: &gimli::Unit<Slice>, at: gimli::UnitOffset) -> Option<usize> {
    Some(at.to_debug_info_offset(&unit.header)?.0)
}

fn name_of(
    dwarf: &gimli::Dwarf<Slice>,
    unit: &gimli::Unit<Slice>,
    entry: &gimli::DebuggingInformationEntry<Slice>,
) -> Result<Option<String>> {
    let Some(value) = entry.attr_value(gimli::DW_AT_name) else {
        return Ok(None);
    };
    Ok(Some(String::from_utf8_lossy(dwarf.attr_string(unit, value)?.slice()).into_owned()))
}
