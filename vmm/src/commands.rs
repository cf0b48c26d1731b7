//! The subcommands that work on files alone: `inspect` and `diff` of dumps.

use std::path::Path;

use kjump_core::dump::{self, DumpError};
use kjump_core::symbols::Symbols;

/// `kjump inspect FILE [--json]`: the text (or pretty JSON) to print.
pub fn inspect(path: &Path, json: bool) -> Result<String, DumpError> {
    let d = dump::read_dump(path)?;
    if json {
        let v = dump::inspect_json(&d);
        Ok(serde_json::to_string_pretty(&v).map_err(DumpError::Encode)? + "\n")
    } else {
        Ok(dump::inspect(&d))
    }
}

/// `kjump diff A B [--kernel K]`: the text to print and whether the guest
/// states differ. `kernel_elf` names addresses (empty: no symbols).
pub fn diff(a: &Path, b: &Path, kernel_elf: &[u8]) -> Result<(String, bool), DumpError> {
    let symbols = if kernel_elf.is_empty() {
        None
    } else {
        Some(Symbols::from_elf(kernel_elf).map_err(DumpError::Symbols)?)
    };
    let (da, db) = (dump::read_dump(a)?, dump::read_dump(b)?);
    let d = dump::diff(&da, &db, symbols.as_ref());
    Ok((d.to_string(), d.differs()))
}

#[cfg(test)]
mod tests {
    use kjump_core::symbols::{SymbolError, Symbols, demangle};
    use object::{Object, ObjectSymbol, SymbolKind};

    #[test]
    fn reads_the_real_guest_kernel() {
        let t = Symbols::from_elf(crate::DEFAULT_KERNEL).unwrap();
        assert!(t.len() > 10, "{} symbols", t.len());
        // Every sized symbol resolves to itself, inside and at its start.
        let file = object::File::parse(crate::DEFAULT_KERNEL).unwrap();
        let sym = file
            .symbols()
            .find(|s| s.kind() == SymbolKind::Data && s.size() > 8)
            .expect("the kernel has data objects");
        let name = demangle(sym.name().unwrap());
        assert!(!name.contains("17h"), "hash left in {name}");
        let got = t.lookup(sym.address() + 3).unwrap();
        assert!(got.starts_with(&format!("{name}+0x3 (")), "{got}");
        // The entry point is an assembly label in .text.
        let entry = t.lookup(file.entry()).unwrap();
        assert!(
            entry.ends_with(" (.text)") && !entry.contains('+'),
            "{entry}"
        );
        // Far past the image, after the linker's last marker: nothing.
        assert_eq!(t.lookup(0x90_0000), None);
        // Code after an assembly label: the checkpoint's `ret`.
        let cp = t.address_of("kjump_checkpoint").unwrap();
        assert_eq!(
            t.lookup(cp + 1).as_deref(),
            Some("kjump_checkpoint+0x1 (.text)")
        );
        assert!(matches!(
            Symbols::from_elf(b"not an elf"),
            Err(SymbolError::Parse(_))
        ));
    }
}
