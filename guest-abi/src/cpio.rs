//! A reader for "newc" cpio archives (`070701`), the format of a Linux
//! initramfs (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Every header is 110 ASCII bytes: the magic and 13 fields of 8 hex digits;
//! the name (with its NUL) follows and is padded to 4 bytes, and so is the
//! file data. The archive ends with an entry named `TRAILER!!!`.

/// Magic of a newc header.
pub const MAGIC: &[u8; 6] = b"070701";
/// Size of a newc header.
pub const HEADER_LEN: usize = 110;
/// Name of the last entry.
pub const TRAILER: &str = "TRAILER!!!";
/// `c_mode` file-type bits of a regular file.
pub const MODE_REG: u32 = 0o100_000;
/// `c_mode` file-type bits of a directory.
pub const MODE_DIR: u32 = 0o040_000;

/// What is wrong with an archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpioError {
    /// The header at this offset does not start with `070701`.
    BadMagic(usize),
    /// A header field at this offset is not 8 hex digits.
    BadField(usize),
    /// The entry at this offset runs past the end of the archive.
    Truncated(usize),
    /// The name of the entry at this offset is not NUL-terminated UTF-8.
    BadName(usize),
    /// The archive ended without a `TRAILER!!!` entry.
    NoTrailer,
}

impl core::fmt::Display for CpioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadMagic(o) => write!(f, "not a newc cpio header at offset {o:#x}"),
            Self::BadField(o) => write!(f, "bad hex field in cpio header at offset {o:#x}"),
            Self::Truncated(o) => write!(f, "cpio entry at offset {o:#x} is truncated"),
            Self::BadName(o) => write!(f, "bad file name in cpio entry at offset {o:#x}"),
            Self::NoTrailer => write!(f, "cpio archive has no TRAILER!!! entry"),
        }
    }
}

/// One entry of an archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub name: &'a str,
    pub mode: u32,
    pub data: &'a [u8],
}

impl Entry<'_> {
    pub fn is_file(&self) -> bool {
        self.mode & 0o170_000 == MODE_REG
    }
}

/// Iterates over the entries of an archive, stopping at the trailer.
/// Yields an error once and then stops; a missing trailer is an error.
pub struct Reader<'a> {
    buf: &'a [u8],
    off: usize,
    done: bool,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            off: 0,
            done: false,
        }
    }

    fn field(&self, hdr: &[u8], i: usize) -> Result<u32, CpioError> {
        let s = &hdr[6 + 8 * i..14 + 8 * i];
        let mut v = 0u32;
        for &c in s {
            let d = (c as char)
                .to_digit(16)
                .ok_or(CpioError::BadField(self.off))?;
            v = (v << 4) | d;
        }
        Ok(v)
    }

    fn next_entry(&mut self) -> Result<Option<Entry<'a>>, CpioError> {
        let start = self.off;
        let rest = &self.buf[start..];
        if rest.len() < HEADER_LEN {
            return Err(if rest.iter().all(|&b| b == 0) {
                CpioError::NoTrailer
            } else {
                CpioError::Truncated(start)
            });
        }
        let hdr = &rest[..HEADER_LEN];
        if &hdr[..6] != MAGIC {
            return Err(CpioError::BadMagic(start));
        }
        let mode = self.field(hdr, 1)?;
        let filesize = self.field(hdr, 6)? as usize;
        let namesize = self.field(hdr, 11)? as usize;
        let name_end = HEADER_LEN
            .checked_add(namesize)
            .filter(|&e| e <= rest.len() && namesize > 0)
            .ok_or(CpioError::Truncated(start))?;
        let name_bytes = &rest[HEADER_LEN..name_end];
        let name = match name_bytes.split_last() {
            Some((0, name)) => core::str::from_utf8(name).map_err(|_| CpioError::BadName(start))?,
            _ => return Err(CpioError::BadName(start)),
        };
        let data_start = align4(name_end);
        let data_end = data_start
            .checked_add(filesize)
            .filter(|&e| e <= rest.len())
            .ok_or(CpioError::Truncated(start))?;
        self.off = start + align4(data_end).min(rest.len());
        if name == TRAILER {
            return Ok(None);
        }
        Ok(Some(Entry {
            name,
            mode,
            data: &rest[data_start..data_end],
        }))
    }

    /// Finds the regular file called `name`.
    pub fn find(buf: &'a [u8], name: &str) -> Result<Option<Entry<'a>>, CpioError> {
        for e in Reader::new(buf) {
            let e = e?;
            if e.name == name && e.is_file() {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }
}

fn align4(x: usize) -> usize {
    (x + 3) & !3
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<Entry<'a>, CpioError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_entry() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Writes one newc header for an entry (used by the archive builder and by
/// tests; the guest never writes archives).
pub fn write_header(out: &mut [u8; HEADER_LEN], ino: u32, mode: u32, filesize: u32, namesize: u32) {
    out[..6].copy_from_slice(MAGIC);
    // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
    // rdevmajor, rdevminor, namesize, check
    let fields = [ino, mode, 0, 0, 1, 0, filesize, 0, 0, 0, 0, namesize, 0];
    for (i, f) in fields.iter().enumerate() {
        let o = 6 + 8 * i;
        for (j, b) in out[o..o + 8].iter_mut().enumerate() {
            let nib = (f >> (28 - 4 * j)) & 0xf;
            *b = b"0123456789abcdef"[nib as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        let mut push = |name: &str, mode: u32, data: &[u8], ino: u32| {
            let mut h = [0u8; HEADER_LEN];
            write_header(&mut h, ino, mode, data.len() as u32, name.len() as u32 + 1);
            v.extend_from_slice(&h);
            v.extend_from_slice(name.as_bytes());
            v.push(0);
            while v.len() % 4 != 0 {
                v.push(0);
            }
            v.extend_from_slice(data);
            while v.len() % 4 != 0 {
                v.push(0);
            }
        };
        for (i, (n, m, d)) in files.iter().enumerate() {
            push(n, *m, d, i as u32 + 1);
        }
        push(TRAILER, 0, &[], 0);
        v
    }

    #[test]
    fn reads_entries_in_order() {
        let a = archive(&[
            ("boot", MODE_DIR | 0o755, b""),
            ("boot/b.elf", MODE_REG | 0o644, b"\x7fELFxyz"),
        ]);
        let e: Vec<_> = Reader::new(&a).collect::<Result<_, _>>().unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].name, "boot/b.elf");
        assert_eq!(e[1].data, b"\x7fELFxyz");
        assert!(e[1].is_file() && !e[0].is_file());
        assert_eq!(
            Reader::find(&a, "boot/b.elf").unwrap().unwrap().data.len(),
            7
        );
        assert_eq!(Reader::find(&a, "boot").unwrap(), None);
    }

    #[test]
    fn rejects_damage() {
        let a = archive(&[("f", MODE_REG, b"0123456789")]);
        for cut in [1, 50, 111, 120, a.len() - 4] {
            let r: Result<Vec<_>, _> = Reader::new(&a[..cut]).collect();
            assert!(r.is_err(), "cut at {cut} accepted");
        }
        let mut bad = a.clone();
        bad[0] = b'1';
        assert_eq!(Reader::new(&bad).next(), Some(Err(CpioError::BadMagic(0))));
        let mut bad = a.clone();
        bad[60] = b'z';
        assert_eq!(Reader::new(&bad).next(), Some(Err(CpioError::BadField(0))));
        assert_eq!(Reader::new(&[]).next(), Some(Err(CpioError::NoTrailer)));
    }

    #[test]
    fn huge_sizes_do_not_wrap() {
        let mut h = [0u8; HEADER_LEN];
        write_header(&mut h, 1, MODE_REG, u32::MAX, u32::MAX);
        let r: Result<Vec<_>, _> = Reader::new(&h).collect();
        assert_eq!(r, Err(CpioError::Truncated(0)));
    }
}
