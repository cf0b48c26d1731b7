//! The subcommands that work on files alone: `inspect` and `diff` of dumps
//! and hibernation images, `image extract` and `image view`.

use std::path::Path;

use kjump_core::checkpoint::{CheckpointId, Direction, Kernel};
use kjump_core::dump::{self, CoreFile, CoreFileError, DumpError};
use kjump_core::files::{InputError, check_input, read_input};
use kjump_core::hibimage::DiskImage;
use kjump_core::symbols::Symbols;

/// Why a dump command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Dump(#[from] DumpError),
    /// A hibernation image that is refused (the cause says why).
    #[error(transparent)]
    Core(#[from] CoreFileError),
    /// A dump that is not a regular file (a FIFO would block the reader).
    #[error("cannot read the dump")]
    DumpFile(#[source] InputError),
    /// The kernel given for symbols (the cause names it).
    #[error("cannot read the kernel")]
    Kernel(#[source] InputError),
    /// The output of `image extract` or `image view`.
    #[error("cannot write {}", .0.display())]
    Write(std::path::PathBuf, #[source] std::io::Error),
}

/// Reads a dump that is a regular file.
pub fn read_dump(path: &Path) -> Result<dump::Dump, CommandError> {
    check_input(path).map_err(CommandError::DumpFile)?;
    Ok(dump::read_dump(path)?)
}

/// Reads a dump or an image that is a regular file.
fn read_core(path: &Path) -> Result<CoreFile, CommandError> {
    check_input(path).map_err(CommandError::DumpFile)?;
    Ok(CoreFile::open(path)?)
}

/// [`read_core`] for `diff`: an image's ranges that fail their checksum
/// are compared and shown, not refused.
fn read_core_to_compare(path: &Path) -> Result<CoreFile, CommandError> {
    check_input(path).map_err(CommandError::DumpFile)?;
    Ok(CoreFile::open_to_compare(path)?)
}

/// Reads the image at the start of the disk file `path` (any flags).
fn read_image(path: &Path) -> Result<DiskImage, CommandError> {
    check_input(path).map_err(CommandError::DumpFile)?;
    DiskImage::open_any(path).map_err(|source| {
        CommandError::Core(CoreFileError::Image {
            path: path.to_owned(),
            source,
        })
    })
}

/// `kjump inspect FILE [--json]`: the text (or pretty JSON) to print.
pub fn inspect(path: &Path, json: bool) -> Result<String, CommandError> {
    let v = match read_core(path)? {
        CoreFile::Dump(d) if json => dump::inspect_json(&d),
        CoreFile::Dump(d) => return Ok(dump::inspect(&d)),
        CoreFile::Image(i) if json => dump::inspect_image_json(&i),
        CoreFile::Image(i) => return Ok(dump::inspect_image(&i)),
    };
    Ok(serde_json::to_string_pretty(&v).map_err(DumpError::Encode)? + "\n")
}

/// The kernel for symbols: `kernel` (no larger than `bound`, the files'
/// guest RAM), or the embedded guest.
fn kernel_elf(kernel: Option<&Path>, bound: u64, what: &str) -> Result<Vec<u8>, CommandError> {
    match kernel {
        Some(k) => read_input(k, bound, what).map_err(CommandError::Kernel),
        None => Ok(crate::DEFAULT_KERNEL.to_vec()),
    }
}

/// `kjump diff A B [--kernel K]`: the text to print and whether the guest
/// states differ. Each of A and B is a dump or an image. Addresses are
/// named from `kernel` (default: the embedded guest), which can be no
/// larger than the files' guest RAM.
pub fn diff(a: &Path, b: &Path, kernel: Option<&Path>) -> Result<(String, bool), CommandError> {
    let (fa, fb) = (read_core_to_compare(a)?, read_core_to_compare(b)?);
    let bound = fa.mem_bound().max(fb.mem_bound());
    let elf = kernel_elf(kernel, bound, "the dumps' guest RAM")?;
    let symbols = if elf.is_empty() {
        None
    } else {
        Some(Symbols::from_elf(&elf).map_err(DumpError::Symbols)?)
    };
    let s = symbols.as_ref();
    let d = match (&fa, &fb) {
        (CoreFile::Dump(x), CoreFile::Dump(y)) => dump::diff(x, y, s),
        (CoreFile::Image(x), CoreFile::Dump(y)) => dump::diff_image_dump(x, y, true, s),
        (CoreFile::Dump(x), CoreFile::Image(y)) => dump::diff_image_dump(y, x, false, s),
        (CoreFile::Image(x), CoreFile::Image(y)) => dump::diff_images(x, y, s),
    };
    Ok((d.to_string(), d.differs()))
}

/// `kjump image extract DISK OUT`: the image's bytes, checked, written
/// atomically. Returns the bytes written.
pub fn image_extract(disk: &Path, output: &Path) -> Result<u64, CommandError> {
    let img = read_image(disk)?;
    // Renamed over the disk, the image would replace it.
    if let (Ok(d), Ok(o)) = (disk.canonicalize(), output.canonicalize())
        && d == o
    {
        return Err(CommandError::Write(
            output.to_owned(),
            std::io::Error::other("it is the disk being read"),
        ));
    }
    kjump_core::files::write_atomic_with(output, |mut f| img.copy_bytes(&mut f))
        .map_err(|e| CommandError::Write(output.to_owned(), e))?;
    Ok(img.image_size())
}

/// `kjump image view DISK OUT [--kernel K]`: kernel a's view of a
/// resumable image as a dump (not resumable) for gdb; `rip` is a's
/// checkpoint, where its re-entry path resumes it.
pub fn image_view(disk: &Path, output: &Path, kernel: Option<&Path>) -> Result<(), CommandError> {
    let img = read_image(disk)?;
    let view = img.view().map_err(|source| {
        CommandError::Core(CoreFileError::Image {
            path: disk.to_owned(),
            source,
        })
    })?;
    let mem: u64 = kjump_core::dump::RamSource::ram_ranges(&view)
        .last()
        .map_or(0, |(s, l)| s + l);
    let elf = kernel_elf(kernel, mem, "the image's guest RAM")?;
    let rip = Symbols::from_elf(&elf)
        .map_err(DumpError::Symbols)?
        .address_of("kjump_checkpoint")
        .unwrap_or(0);
    let state = dump::image_view_state(&img, rip);
    let id = CheckpointId {
        index: 0,
        cycle: 1,
        kernel: Kernel::A,
        direction: Direction::Suspend,
    };
    let name = format!("kernel a's view of the image {}", disk.display());
    let input = dump::DumpInput {
        state: &state,
        id: &id,
        jump_back_entry: img.entry(),
        resumable: false,
        memory: &view,
        kernel_name: &name,
        mem_size: mem,
        kjump_version: env!("CARGO_PKG_VERSION"),
        resume: None,
    };
    dump::write_dump(output, &input)?;
    Ok(())
}

/// Whether `path` holds a hibernation image rather than a dump.
pub fn is_image(path: &Path) -> bool {
    DiskImage::is_image(path)
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
