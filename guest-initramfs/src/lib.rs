//! Builds the newc cpio archives that the kjump guest kernel reads as its
//! initramfs: the kernel image kernel A will kexec (`kjump/kernel-b`) and the
//! scenario's settings (`kjump/config`).
//!
//! The archive is read back in the guest by [`kjump_abi::cpio`], and the
//! tests here round-trip every archive through that very reader.

use kjump_abi::cpio::{self, HEADER_LEN, MODE_DIR, MODE_REG, TRAILER};

/// Where the kernel that A loads and jumps to is stored, and where the
/// scenario's settings (`key=value` lines) are: defined with the layout the
/// guest reads, re-exported for the archive's users.
pub use kjump_abi::layout::{CONFIG_PATH, KERNEL_B_PATH};

/// An entry does not fit the newc format.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchiveError {
    /// newc sizes are 32-bit.
    #[error("{name}: {len} bytes is too large for a newc cpio entry")]
    TooLarge { name: String, len: usize },
    /// Names must be non-empty, relative and without NULs.
    #[error("invalid cpio entry name {0:?}")]
    BadName(String),
}

/// A newc archive being built.
#[derive(Debug, Default)]
pub struct Archive {
    buf: Vec<u8>,
    ino: u32,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<&mut Self, ArchiveError> {
        if name.is_empty() || name.starts_with('/') || name.contains('\0') {
            return Err(ArchiveError::BadName(name.to_owned()));
        }
        let too_large = |len| ArchiveError::TooLarge {
            name: name.to_owned(),
            len,
        };
        let filesize = u32::try_from(data.len()).map_err(|_| too_large(data.len()))?;
        let namesize = u32::try_from(name.len() + 1).map_err(|_| too_large(name.len()))?;
        self.ino += 1;
        let mut hdr = [0u8; HEADER_LEN];
        cpio::write_header(&mut hdr, self.ino, mode, filesize, namesize);
        self.buf.extend_from_slice(&hdr);
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
        Ok(self)
    }

    fn pad(&mut self) {
        let n = self.buf.len().next_multiple_of(4);
        self.buf.resize(n, 0);
    }

    /// Adds a directory.
    pub fn dir(&mut self, name: &str) -> Result<&mut Self, ArchiveError> {
        self.entry(name, MODE_DIR | 0o755, &[])
    }

    /// Adds a regular file.
    pub fn file(&mut self, name: &str, data: &[u8]) -> Result<&mut Self, ArchiveError> {
        self.entry(name, MODE_REG | 0o644, data)
    }

    /// Ends the archive with the trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        let mut hdr = [0u8; HEADER_LEN];
        cpio::write_header(&mut hdr, 0, 0, 0, TRAILER.len() as u32 + 1);
        self.buf.extend_from_slice(&hdr);
        self.buf.extend_from_slice(TRAILER.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf
    }
}

/// The initramfs of a scenario run: the kernel A will kexec, and the
/// settings.
pub fn scenario_initramfs(kernel_b: &[u8], config: &str) -> Result<Vec<u8>, ArchiveError> {
    let mut a = Archive::new();
    a.dir("kjump")?
        .file(KERNEL_B_PATH, kernel_b)?
        .file(CONFIG_PATH, config.as_bytes())?;
    Ok(a.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kjump_abi::cpio::Reader;

    #[test]
    fn scenario_archive_round_trips_through_the_guest_reader() {
        let kernel: Vec<u8> = (0..10_001u32).map(|i| (i * 7) as u8).collect();
        let a = scenario_initramfs(&kernel, "cycles=3\n").unwrap();
        assert_eq!(a.len() % 4, 0);
        let entries: Vec<_> = Reader::new(&a).collect::<Result<_, _>>().unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name).collect();
        assert_eq!(names, ["kjump", KERNEL_B_PATH, CONFIG_PATH]);
        assert!(!entries[0].is_file());
        assert_eq!(
            Reader::find(&a, KERNEL_B_PATH).unwrap().unwrap().data,
            &kernel[..]
        );
        assert_eq!(
            Reader::find(&a, CONFIG_PATH).unwrap().unwrap().data,
            b"cycles=3\n"
        );
    }

    #[test]
    fn odd_sizes_are_padded_and_read_back() {
        for len in 0..9 {
            let data = vec![0x5a; len];
            let mut a = Archive::new();
            a.file("x", &data).unwrap().file("yy", b"z").unwrap();
            let a = a.finish();
            assert_eq!(Reader::find(&a, "x").unwrap().unwrap().data, &data[..]);
            assert_eq!(Reader::find(&a, "yy").unwrap().unwrap().data, b"z");
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let a = scenario_initramfs(b"\x7fELF0123456789", "k=v").unwrap();
        for cut in 0..a.len() {
            let r: Result<Vec<_>, _> = Reader::new(&a[..cut]).collect();
            assert!(
                r.is_err(),
                "archive cut at {cut} of {} was accepted",
                a.len()
            );
        }
    }

    #[test]
    fn bad_names_are_refused() {
        let mut a = Archive::new();
        assert_eq!(
            a.file("", b"").unwrap_err(),
            ArchiveError::BadName(String::new())
        );
        assert!(a.file("/abs", b"").is_err());
        assert!(a.file("a\0b", b"").is_err());
    }
}
