//! Files kjump reads and writes, the one way it does so.
//!
//! Outputs ([`write_atomic`], [`write_atomic_with`]) replace only regular
//! files: a new file is written under a temporary name in the target's
//! directory, fsynced, renamed into place and the directory fsynced, so the
//! target holds its old content or all of the new. A target that is not a
//! regular file is never replaced: a character device or a FIFO (`/dev/null`,
//! `/dev/stdout` through its symlink, a named pipe with a reader) is written
//! through, which is what a user who names one means; anything else (a
//! directory, a block device, a socket) is refused. [`check_output`] says
//! which before a run starts, so a bad output path is found before the guest
//! boots, not after.
//!
//! Inputs ([`read_input`]) must be regular files no larger than a bound the
//! caller gives (a kernel larger than guest RAM cannot boot): `/dev/zero`
//! or a FIFO is one clear error instead of a read that never ends.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// How an output path will be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// Nothing there yet, or a regular file: written atomically.
    Replace,
    /// A character device or a FIFO: written through, never replaced.
    WriteThrough,
}

/// Says how `path` would be written, or why it cannot be: a directory, a
/// block device or a socket is refused, and so is a path whose directory
/// does not exist or cannot be written (a new file is created there and
/// removed again to prove it; a device must be writable by its mode). A
/// FIFO is not opened: that would hand its reader an end of file.
pub fn check_output(path: &Path) -> io::Result<OutputKind> {
    let kind = output_kind(path)?;
    match kind {
        OutputKind::Replace => {
            let temp = temp_path(path)?;
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "cannot create a file in {}: {e}",
                            parent_dir(path).display()
                        ),
                    )
                })?;
            fs::remove_file(&temp)?;
        }
        OutputKind::WriteThrough => {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
            // SAFETY: access() reads the NUL-terminated path, which lives
            // until it returns; the result is checked.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
            }
        }
    }
    Ok(kind)
}

/// The type check of [`check_output`], without the probe.
fn output_kind(path: &Path) -> io::Result<OutputKind> {
    match fs::metadata(path) {
        Ok(m) => {
            let t = m.file_type();
            if t.is_file() {
                Ok(OutputKind::Replace)
            } else if t.is_char_device() || t.is_fifo() {
                Ok(OutputKind::WriteThrough)
            } else {
                let what = if t.is_dir() {
                    "a directory"
                } else if t.is_block_device() {
                    "a block device"
                } else if t.is_socket() {
                    "a socket"
                } else {
                    "not a regular file"
                };
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} is {what}; kjump writes regular files, character devices and FIFOs only",
                        path.display()
                    ),
                ))
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = parent_dir(path);
            match fs::metadata(&dir) {
                Ok(m) if m.is_dir() => Ok(OutputKind::Replace),
                Ok(_) => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a directory", dir.display()),
                )),
                Err(e) => Err(io::Error::new(
                    e.kind(),
                    format!("directory {}: {e}", dir.display()),
                )),
            }
        }
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to `path`: atomically over a regular file (or where
/// nothing is), through a character device or FIFO (see the module docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |mut f: &File| f.write_all(bytes))
}

/// Temporary files get distinct names within a process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The prefix of kjump's temporary files: `.NAME.kjump-tmp-PID-SEQ`. A
/// process that dies leaves them; [`remove_stale_temps`] clears those of
/// dead processes.
pub const TEMP_MARK: &str = ".kjump-tmp-";

/// The temporary file of an output being written: removed unless committed.
struct TempFile {
    path: PathBuf,
    committed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Writes `path` with `fill`, which gets the open file: a new temporary
/// file, fsynced, renamed over `path` and the directory fsynced (a regular
/// target or none); the device or FIFO itself for those (see the module
/// docs). On error, an atomic write leaves nothing behind and `path`
/// untouched.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&File) -> io::Result<()>,
) -> io::Result<()> {
    if output_kind(path)? == OutputKind::WriteThrough {
        // O_NONBLOCK: opening a FIFO without a reader fails (ENXIO) instead
        // of waiting for one forever.
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENXIO) => io::Error::new(
                    e.kind(),
                    format!("{} is a FIFO that no process reads", path.display()),
                ),
                _ => e,
            })?;
        set_blocking(&f)?;
        return fill(&f);
    }
    let dir = parent_dir(path);
    let mut temp = TempFile {
        path: temp_path(path)?,
        committed: false,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp.path)?;
    fill(&file)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp.path, path)?;
    temp.committed = true;
    // The rename is durable once the directory is.
    File::open(&dir)?.sync_all()
}

/// A new temporary name beside `path`: `.NAME.kjump-tmp-PID-SEQ`.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    Ok(parent_dir(path).join(format!(
        ".{}{TEMP_MARK}{}-{seq}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Clears `O_NONBLOCK` again once a device or FIFO is open, so that writes
/// wait for a slow reader instead of failing with `EAGAIN`.
fn set_blocking(f: &File) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a file descriptor we own change only its
    // status flags; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Removes kjump's temporary files in `dir` whose writer is dead (the PID in
/// their name no longer runs); returns how many. Live writers' files stay.
pub fn remove_stale_temps(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Some((_, rest)) = name.split_once(TEMP_MARK) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid != std::process::id() as i32 && !process_alive(pid) {
            fs::remove_file(e.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn process_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A directory held by one run (`--dump-dir`): an exclusive `flock` on
/// `DIR/.kjump.lock`, released when the guard is dropped or the process
/// dies (a killed run leaves no stale lock).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another process holds the lock.
    #[error("{} is in use by another kjump run{}; give each run its own directory", .path.display(), .pid.as_deref().map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Busy { path: PathBuf, pid: Option<String> },
}

/// Takes `dir` for this process, or says who has it.
pub fn lock_dir(dir: &Path) -> Result<DirLock, LockError> {
    use std::os::unix::io::AsRawFd;
    let path = dir.join(".kjump.lock");
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let pid = fs::read_to_string(&path)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty());
            return Err(LockError::Busy {
                path: dir.to_path_buf(),
                pid,
            });
        }
        return Err(io(e));
    }
    f.set_len(0).map_err(io)?;
    write!(f, "{}", std::process::id()).map_err(io)?;
    Ok(DirLock { _file: f })
}

/// Bytes the file at `path` takes on disk (its allocated blocks: a sparse
/// dump takes what it wrote).
pub fn allocated_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata(path)?.blocks() * 512)
}

/// Bytes free for an unprivileged writer on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: statvfs writes a `struct statvfs` into the buffer we pass,
    // which is large enough; the path is NUL-terminated.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded and filled the struct.
    let st = unsafe { st.assume_init() };
    // u64 on x86_64 Linux, the only target kjump builds for.
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Why an input file was not read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a regular file ({what})", .path.display())]
    NotRegular { path: PathBuf, what: &'static str },
    #[error("{} is {size} bytes, more than {what} can hold ({max} bytes)", .path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        max: u64,
        what: String,
    },
}

/// What a file that is not a regular one is, for [`InputError::NotRegular`].
fn kind_of(t: fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else {
        "a socket"
    }
}

/// Refuses, without opening it, an input that is not a regular file (a
/// FIFO would block its reader, a device never end), for readers that open
/// their file themselves.
pub fn check_input(path: &Path) -> Result<(), InputError> {
    let m = fs::metadata(path).map_err(|source| InputError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if m.file_type().is_file() {
        Ok(())
    } else {
        Err(InputError::NotRegular {
            path: path.to_path_buf(),
            what: kind_of(m.file_type()),
        })
    }
}

/// Reads a regular file of at most `max` bytes (`what` says what bounds it,
/// for the error). A device, a FIFO or a directory is refused without
/// reading; so is a larger file, from its size, before a byte is read; a
/// file that grows while it is read stops at `max + 1` bytes and is refused.
pub fn read_input(path: &Path, max: u64, what: &str) -> Result<Vec<u8>, InputError> {
    let io = |source| InputError::Io {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO does not wait for a writer.
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let m = f.metadata().map_err(io)?;
    let t = m.file_type();
    if !t.is_file() {
        return Err(InputError::NotRegular {
            path: path.to_path_buf(),
            what: kind_of(t),
        });
    }
    let too_large = |size| InputError::TooLarge {
        path: path.to_path_buf(),
        size,
        max,
        what: what.to_owned(),
    };
    if m.len() > max {
        return Err(too_large(m.len()));
    }
    let mut buf = Vec::with_capacity(m.len() as usize);
    f.take(max + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > max {
        return Err(too_large(buf.len() as u64));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kjump-files-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn regular_files_are_replaced_atomically() {
        let d = scratch("regular");
        let p = d.join("out.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // Nothing temporary is left.
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1);
        // A failing writer leaves the old content and no temporary file.
        let e = write_atomic_with(&p, |_| Err(io::Error::other("boom"))).unwrap_err();
        assert_eq!(e.to_string(), "boom");
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1);
    }

    #[test]
    fn devices_are_written_through_not_replaced() {
        let null = Path::new("/dev/null");
        assert_eq!(check_output(null).unwrap(), OutputKind::WriteThrough);
        write_atomic(null, b"x").unwrap();
        let m = fs::metadata(null).unwrap();
        assert!(m.file_type().is_char_device(), "/dev/null was replaced");
        // /dev/full: the write fails, the device stays.
        let e = write_atomic(Path::new("/dev/full"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert!(
            fs::metadata("/dev/full")
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }

    #[test]
    fn a_fifo_without_reader_is_an_error_not_a_hang() {
        let d = scratch("fifo");
        let p = d.join("pipe");
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(check_output(&p).unwrap(), OutputKind::WriteThrough);
        let e = write_atomic(&p, b"x").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{} is a FIFO that no process reads", p.display())
        );
        assert!(fs::metadata(&p).unwrap().file_type().is_fifo(), "replaced");
        // As an input, a FIFO is refused without waiting for a writer.
        let e = read_input(&p, 1 << 20, "guest RAM").unwrap_err();
        assert!(
            e.to_string().ends_with("is not a regular file (a FIFO)"),
            "{e}"
        );
    }

    #[test]
    fn directories_and_missing_parents_are_refused() {
        let d = scratch("dirs");
        let e = check_output(&d).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let e = check_output(&d.join("no/such/file")).unwrap_err();
        assert!(e.to_string().contains("no/such"), "{e}");
    }

    #[test]
    fn an_unwritable_directory_is_found_by_the_check() {
        let d = scratch("probe");
        // The probe leaves nothing behind.
        assert_eq!(
            check_output(&d.join("r.json")).unwrap(),
            OutputKind::Replace
        );
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0);
        // procfs takes no new files, not even from root.
        let e = check_output(Path::new("/proc/kjump-report.json")).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot create a file in /proc: "),
            "{e}"
        );
    }

    #[test]
    fn inputs_are_bounded_regular_files() {
        let e = read_input(Path::new("/dev/zero"), 1 << 20, "guest RAM").unwrap_err();
        assert!(
            e.to_string()
                .ends_with("/dev/zero is not a regular file (a character device)"),
            "{e}"
        );
        let d = scratch("inputs");
        let p = d.join("k");
        fs::write(&p, vec![7u8; 100]).unwrap();
        assert_eq!(read_input(&p, 100, "x").unwrap().len(), 100);
        let e = read_input(&p, 99, "guest RAM (99 B)").unwrap_err();
        assert!(
            e.to_string()
                .ends_with("is 100 bytes, more than guest RAM (99 B) can hold (99 bytes)"),
            "{e}"
        );
        assert!(matches!(
            read_input(&d, 10, "x"),
            Err(InputError::NotRegular { .. })
        ));
        assert!(check_input(&p).is_ok());
        let e = check_input(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().ends_with("(a character device)"), "{e}");
    }

    #[test]
    fn a_directory_is_locked_by_one_holder_at_a_time() {
        let d = scratch("lock");
        let first = lock_dir(&d).unwrap();
        // flock locks belong to the open file: a second open is refused,
        // naming the holder.
        let e = lock_dir(&d).unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "in use by another kjump run (pid {})",
                std::process::id()
            )),
            "{e}"
        );
        drop(first);
        assert!(lock_dir(&d).is_ok());
        assert!(free_bytes(&d).unwrap() > 0);
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let d = scratch("stale");
        // PID 0x7fff_fff0 does not run; ours does.
        let dead = d.join(format!(".a.core{TEMP_MARK}{}-0", 0x7fff_fff0));
        let ours = d.join(format!(".b.core{TEMP_MARK}{}-0", std::process::id()));
        let other = d.join("c.core");
        for p in [&dead, &ours, &other] {
            fs::write(p, b"").unwrap();
        }
        assert_eq!(remove_stale_temps(&d).unwrap(), 1);
        assert!(!dead.exists() && ours.exists() && other.exists());
    }
}
