//! Guest addresses to kernel symbols, from the kernel's ELF, for reports:
//! `kjump_kernel::gdt::TABLES+0x18 (.bss)`, or `.data+0x40` where no
//! symbol covers the address. kjump guests run identity-mapped, so a
//! guest-physical address is the virtual address the ELF's symbols use.

use object::{Object, ObjectSection, ObjectSymbol, SectionFlags, SymbolKind};

/// How far back [`Symbols::lookup`] looks for a symbol that covers an
/// address when symbols overlap (nested objects).
const MAX_OVERLAP: usize = 16;

/// The kernel's ELF could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    /// Not a readable ELF file.
    #[error("cannot parse the kernel ELF")]
    Parse(#[source] object::Error),
}

/// A symbol: `[start, start + size)`; a zero size covers only `start`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Symbol {
    start: u64,
    size: u64,
    name: String,
}

impl Symbol {
    fn covers(&self, addr: u64) -> bool {
        addr == self.start || (addr > self.start && addr - self.start < self.size)
    }
}

/// A loaded (SHF_ALLOC) section: `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Section {
    start: u64,
    end: u64,
    name: String,
    /// Holds code (`SHF_EXECINSTR`; by name, `.text…`, in `from_parts`).
    exec: bool,
}

/// The function and object symbols and the loaded sections of a kernel.
#[derive(Clone, Debug, Default)]
pub struct Symbols {
    /// Sorted by start address.
    symbols: Vec<Symbol>,
    /// Sorted by start address.
    sections: Vec<Section>,
}

/// Rust symbol names without the hash: `kjump_kernel::gdt::TABLES`.
pub fn demangle(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
}

impl Symbols {
    /// Reads the symbol table and section headers of an ELF file.
    pub fn from_elf(bytes: &[u8]) -> Result<Self, SymbolError> {
        let file = object::File::parse(bytes).map_err(SymbolError::Parse)?;
        let symbols = file
            .symbols()
            // Functions and objects, plus untyped labels (assembly entry
            // points such as `_start`, linker-script markers) which have no
            // size and so name only their own address.
            .filter(|s| {
                matches!(
                    s.kind(),
                    SymbolKind::Text | SymbolKind::Data | SymbolKind::Unknown
                ) && s.address() != 0
                    && s.section_index().is_some()
            })
            .filter_map(|s| Some((s.name().ok()?.to_string(), s.address(), s.size())))
            .collect();
        let sections = file
            .sections()
            .filter(|s| match s.flags() {
                SectionFlags::Elf { sh_flags, .. } => sh_flags.0 & object::elf::SHF_ALLOC.0 != 0,
                _ => s.address() != 0,
            })
            .filter(|s| s.size() > 0)
            .filter_map(|s| {
                let exec = match s.flags() {
                    SectionFlags::Elf { sh_flags, .. } => {
                        sh_flags.0 & object::elf::SHF_EXECINSTR.0 != 0
                    }
                    _ => s.kind() == object::SectionKind::Text,
                };
                Some((s.name().ok()?.to_string(), s.address(), s.size(), exec))
            })
            .collect();
        Ok(Self::build(symbols, sections))
    }

    /// Builds a table from `(name, address, size)` of symbols (mangled
    /// names are demangled) and of sections.
    /// Sections named `.text…` hold code.
    pub fn from_parts(symbols: Vec<(String, u64, u64)>, sections: Vec<(String, u64, u64)>) -> Self {
        let sections = sections
            .into_iter()
            .map(|(name, start, size)| {
                let exec = name.starts_with(".text");
                (name, start, size, exec)
            })
            .collect();
        Self::build(symbols, sections)
    }

    fn build(symbols: Vec<(String, u64, u64)>, sections: Vec<(String, u64, u64, bool)>) -> Self {
        let mut symbols: Vec<Symbol> = symbols
            .into_iter()
            .map(|(name, start, size)| Symbol {
                start,
                size,
                name: demangle(&name),
            })
            .collect();
        // By start; at equal starts the larger symbol first, so that the
        // backwards search in `symbol_at` meets the smaller (inner) one first.
        symbols.sort_by(|a, b| a.start.cmp(&b.start).then(b.size.cmp(&a.size)));
        symbols.dedup();
        let mut sections: Vec<Section> = sections
            .into_iter()
            .map(|(name, start, size, exec)| Section {
                start,
                end: start.saturating_add(size),
                name,
                exec,
            })
            .collect();
        sections.sort_by_key(|s| s.start);
        Self { symbols, sections }
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The innermost symbol covering `addr`, and the offset into it. Code
    /// in no sized symbol belongs to the size-less label just before it in
    /// the same code section (an assembly label such as
    /// `kjump_checkpoint`: its code runs on to the next symbol), as gdb
    /// reads it; data and linker markers (`__bss_end`) name only their own
    /// address.
    pub fn symbol_at(&self, addr: u64) -> Option<(&str, u64)> {
        let end = self.symbols.partition_point(|s| s.start <= addr);
        let before = &self.symbols[..end];
        before
            .iter()
            .rev()
            .take(MAX_OVERLAP)
            .find(|s| s.covers(addr))
            .or_else(|| {
                before
                    .last()
                    .filter(|s| s.size == 0 && self.same_code_section(s.start, addr))
            })
            .map(|s| (s.name.as_str(), addr - s.start))
    }

    /// True when `a` and `b` lie in one section that holds code.
    fn same_code_section(&self, a: u64, b: u64) -> bool {
        let sec = |x: u64| {
            let end = self.sections.partition_point(|s| s.start <= x);
            self.sections[..end].last().filter(|s| x < s.end)
        };
        matches!((sec(a), sec(b)), (Some(s), Some(t)) if s.exec && std::ptr::eq(s, t))
    }

    /// The loaded section holding `addr`, and the offset into it.
    pub fn section_at(&self, addr: u64) -> Option<(&str, u64)> {
        let end = self.sections.partition_point(|s| s.start <= addr);
        self.sections[..end]
            .iter()
            .rev()
            .find(|s| addr < s.end)
            .map(|s| (s.name.as_str(), addr - s.start))
    }

    /// The first loaded section that overlaps `[start, end)` (the kernel's
    /// own image: its PT_LOADs are made of these sections).
    pub fn section_in(&self, start: u64, end: u64) -> Option<&str> {
        self.sections
            .iter()
            .find(|s| s.start < end && start < s.end)
            .map(|s| s.name.as_str())
    }

    /// The address of the first symbol whose (demangled) path ends with
    /// `::suffix` (or is `suffix`), e.g. `kexec::pattern::STATIC_PATTERN`.
    pub fn address_of_suffix(&self, suffix: &str) -> Option<u64> {
        self.symbols
            .iter()
            .find(|s| {
                s.name == suffix
                    || s.name
                        .strip_suffix(suffix)
                        .is_some_and(|p| p.ends_with("::"))
            })
            .map(|s| s.start)
    }

    /// The address of the first symbol with this (demangled) name.
    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.symbols
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.start)
    }

    /// `symbol+0x12 (.section)`, `symbol (.section)`, `.section+0x40`, or
    /// `None` when the address is in no symbol and no loaded section.
    pub fn lookup(&self, addr: u64) -> Option<String> {
        let section = self.section_at(addr);
        match (self.symbol_at(addr), section) {
            (Some((name, off)), sec) => {
                let mut s = if off == 0 {
                    name.to_string()
                } else {
                    format!("{name}+{off:#x}")
                };
                if let Some((sec, _)) = sec {
                    s.push_str(&format!(" ({sec})"));
                }
                Some(s)
            }
            (None, Some((sec, off))) => Some(format!("{sec}+{off:#x}")),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Symbols {
        Symbols::from_parts(
            vec![
                (
                    "_ZN12kjump_kernel7PATTERN17h0123456789abcdefE".into(),
                    0x21_0000,
                    0x1000,
                ),
                ("inner".into(), 0x21_0100, 0x10),
                ("start".into(), 0x20_0000, 0x40),
                ("marker".into(), 0x20_0100, 0),
            ],
            vec![
                (".text".into(), 0x20_0000, 0x1_0000),
                (".bss".into(), 0x21_0000, 0x2000),
                (".data".into(), 0x21_2000, 0x100),
            ],
        )
    }

    #[test]
    fn names_symbol_offset_and_section() {
        let t = table();
        assert_eq!(
            t.lookup(0x21_0123).as_deref(),
            Some("kjump_kernel::PATTERN+0x123 (.bss)")
        );
        assert_eq!(
            t.lookup(0x21_0000).as_deref(),
            Some("kjump_kernel::PATTERN (.bss)")
        );
        assert_eq!(
            t.lookup(0x21_0fff).as_deref(),
            Some("kjump_kernel::PATTERN+0xfff (.bss)")
        );
        assert_eq!(
            t.lookup(0x21_0104).as_deref(),
            Some("inner+0x4 (.bss)"),
            "innermost wins"
        );
        assert_eq!(t.lookup(0x20_0100).as_deref(), Some("marker (.text)"));
        assert_eq!(t.address_of("kjump_kernel::PATTERN"), Some(0x21_0000));
        assert_eq!(
            t.address_of_suffix("kjump_kernel::PATTERN"),
            Some(0x21_0000)
        );
        assert_eq!(t.address_of_suffix("PATTERN"), Some(0x21_0000));
        assert_eq!(
            t.address_of_suffix("ATTERN"),
            None,
            "whole path components only"
        );
        assert_eq!(t.address_of_suffix("inner"), Some(0x21_0100));
    }

    #[test]
    fn falls_back_to_the_section_then_nothing() {
        let t = table();
        assert_eq!(
            t.lookup(0x21_1000).as_deref(),
            Some(".bss+0x1000"),
            "past PATTERN's end"
        );
        assert_eq!(t.lookup(0x21_2040).as_deref(), Some(".data+0x40"));
        assert_eq!(
            t.lookup(0x20_0101).as_deref(),
            Some("marker+0x1 (.text)"),
            "code after an assembly label is the label's"
        );
        assert_eq!(
            t.lookup(0x20_0080).as_deref(),
            Some(".text+0x80"),
            "past a sized symbol's end: no symbol"
        );
        assert_eq!(t.lookup(0x21_2100), None);
        assert_eq!(t.lookup(0x1000), None);
    }
}
