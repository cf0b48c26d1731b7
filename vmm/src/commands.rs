//! The subcommands that work on files alone: `inspect` and `diff` of dumps.

use std::path::Path;

use kjump_core::dump::{self, DumpError};
use kjump_core::files::{InputError, check_input, read_input};
use kjump_core::symbols::Symbols;

/// Why a dump command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Dump(#[from] DumpError),
    /// A dump that is not a regular file (a FIFO would block the reader).
    #[error("cannot read the dump")]
    DumpFile(#[source] InputError),
    /// The kernel given for symbols (the cause names it).
    #[error("cannot read the kernel")]
    Kernel(#[source] InputError),
}

/// Reads a dump that is a regular file.
pub fn read_dump(path: &Path) -> Result<dump::Dump, CommandError> {
    check_input(path).map_err(CommandError::DumpFile)?;
    Ok(dump::read_dump(path)?)
}

/// `kjump inspect FILE [--json]`: the text (or pretty JSON) to print.
pub fn inspect(path: &Path, json: bool) -> Result<String, CommandError> {
    let d = read_dump(path)?;
    if json {
        let v = dump::inspect_json(&d);
        Ok(serde_json::to_string_pretty(&v).map_err(DumpError::Encode)? + "\n")
    } else {
        Ok(dump::inspect(&d))
    }
}

/// `kjump diff A B [--kernel K]`: the text to print and whether the guest
/// states differ. Addresses are named from `kernel` (default: the
/// embedded guest), which can be no larger than the dumps' guest RAM.
pub fn diff(a: &Path, b: &Path, kernel: Option<&Path>) -> Result<(String, bool), CommandError> {
    let (da, db) = (read_dump(a)?, read_dump(b)?);
    let elf = match kernel {
        Some(k) => {
            let bound = da.meta().mem_size.max(db.meta().mem_size);
            read_input(k, bound, "the dumps' guest RAM").map_err(CommandError::Kernel)?
        }
        None => crate::DEFAULT_KERNEL.to_vec(),
    };
    let symbols = if elf.is_empty() {
        None
    } else {
        Some(Symbols::from_elf(&elf).map_err(DumpError::Symbols)?)
    };
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
