//! The disk file behind a run's virtio-blk device (`--disk FILE`).
//!
//! A file the user names is used as it is (its size is the disk's) when it
//! exists, and created with the scenario's size when it does not; without
//! `--disk` a temporary file of that size is made and removed when the run
//! ends. Either way the file is raw: sector N is at byte N × 512.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use kjump_abi::virtio::SECTOR_SIZE;

/// Size of the default disk of the `boot` scenario, which only writes and
/// reads back a few sectors.
pub const BOOT_DISK_SIZE: u64 = 1 << 20;

/// Why the disk file could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot create the disk file {}", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the disk file {}", .path.display())]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the disk file {} is {size} bytes: a disk is whole 512-byte sectors",
        .path.display()
    )]
    NotSectors { path: PathBuf, size: u64 },
    #[error(
        "the disk file {} is {size} bytes; this run needs at least {need}",
        .path.display()
    )]
    TooSmall { path: PathBuf, size: u64, need: u64 },
    #[error("{} is not a regular file", .path.display())]
    NotAFile { path: PathBuf },
}

/// The run's disk file; a temporary one is removed on drop.
#[derive(Debug)]
pub struct Disk {
    path: PathBuf,
    temporary: bool,
}

impl Disk {
    /// The disk for a run: `path` if given (created with `size` bytes when
    /// missing; refused when smaller than `need`), else a temporary file of
    /// `size` bytes.
    pub fn prepare(path: Option<&Path>, size: u64, need: u64) -> Result<Self, DiskError> {
        let (path, temporary) = match path {
            Some(p) => (p.to_owned(), false),
            None => (temp_path(), true),
        };
        let disk = Self { path, temporary };
        match std::fs::metadata(&disk.path) {
            Ok(m) if !m.is_file() => {
                return Err(DiskError::NotAFile {
                    path: disk.path.clone(),
                });
            }
            Ok(m) if !m.len().is_multiple_of(SECTOR_SIZE) => {
                return Err(DiskError::NotSectors {
                    path: disk.path.clone(),
                    size: m.len(),
                });
            }
            Ok(m) if m.len() < need => {
                return Err(DiskError::TooSmall {
                    path: disk.path.clone(),
                    size: m.len(),
                    need,
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let create = |source| DiskError::Create {
                    path: disk.path.clone(),
                    source,
                };
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&disk.path)
                    .map_err(create)?;
                // Sparse: the zero sectors take no space.
                f.set_len(size.next_multiple_of(SECTOR_SIZE))
                    .map_err(create)?;
            }
            Err(source) => {
                return Err(DiskError::Stat {
                    path: disk.path.clone(),
                    source,
                });
            }
        }
        Ok(disk)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Zeroes where an image's headers go (the start of the disk, up to
    /// the largest header): an image the VMM reads back later was written
    /// since, never left from an earlier run or cycle. The rest of the
    /// file is left as it is.
    pub fn wipe(&self) -> Result<(), DiskError> {
        wipe(&self.path)
    }
}

/// [`Disk::wipe`] of the disk file at `path`.
pub fn wipe(path: &Path) -> Result<(), DiskError> {
    use std::os::unix::fs::FileExt;
    let stat = |source| DiskError::Stat {
        path: path.to_owned(),
        source,
    };
    let f = OpenOptions::new().write(true).open(path).map_err(stat)?;
    let len = f.metadata().map_err(stat)?.len();
    let header = kjump_abi::hibimage::header_size(kjump_abi::hibimage::MAX_RANGES);
    f.write_all_at(&vec![0u8; header.min(len) as usize], 0)
        .map_err(stat)?;
    f.sync_all().map_err(stat)
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn temp_path() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "kjump-disk-{}-{}.raw",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_disk_is_sized_and_removed() {
        let d = Disk::prepare(None, 4096, 0).unwrap();
        let p = d.path().to_owned();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 4096);
        drop(d);
        assert!(!p.exists());
    }

    #[test]
    fn a_named_disk_is_created_kept_and_checked() {
        let p = std::env::temp_dir().join(format!("kjump-disk-test-{}.raw", std::process::id()));
        let _ = std::fs::remove_file(&p);
        drop(Disk::prepare(Some(&p), 8192, 0).unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 8192);
        // Used as it is the next time; too small for a bigger need.
        assert!(Disk::prepare(Some(&p), 1 << 20, 8192).is_ok());
        assert!(matches!(
            Disk::prepare(Some(&p), 1 << 20, 1 << 20),
            Err(DiskError::TooSmall { size: 8192, .. })
        ));
        std::fs::write(&p, [0u8; 1000]).unwrap();
        assert!(matches!(
            Disk::prepare(Some(&p), 0, 0),
            Err(DiskError::NotSectors { size: 1000, .. })
        ));
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(
            Disk::prepare(Some(&std::env::temp_dir()), 0, 0),
            Err(DiskError::NotAFile { .. })
        ));
    }

    #[test]
    fn a_wiped_disk_holds_no_header_and_keeps_the_rest() {
        let p = std::env::temp_dir().join(format!("kjump-disk-wipe-{}.raw", std::process::id()));
        // A wiped disk keeps its size and holds no header any more.
        let header = kjump_abi::hibimage::header_size(kjump_abi::hibimage::MAX_RANGES) as usize;
        std::fs::write(&p, vec![0x5a; header + 512]).unwrap();
        Disk::prepare(Some(&p), 512, 512).unwrap().wipe().unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b.len(), header + 512);
        assert!(b[..header].iter().all(|&x| x == 0) && b[header..].iter().all(|&x| x == 0x5a));
        std::fs::remove_file(&p).unwrap();
    }
}
