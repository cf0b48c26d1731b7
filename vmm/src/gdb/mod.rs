//! Live debugging: a gdb remote stub (the `gdbstub` crate) on the running
//! guest.
//!
//! - `--gdb [ADDR]` (on `run` and `resume`): the VM starts stopped and
//!   waits for gdb on ADDR ([`GdbAddr`]: a loopback TCP port by default, or
//!   a Unix socket); gdb sees the vCPU's registers, the guest's memory at
//!   virtual addresses, sets up to four hardware breakpoints and
//!   watchpoints, steps, continues, interrupts (Ctrl-C) and detaches, after
//!   which the run goes on and is judged as usual.
//! - `--gdb-on-mismatch [ADDR]`: when the oracle finds a mismatch, the VM
//!   stays stopped at that checkpoint; kjump prints the mismatch and the
//!   line that attaches gdb, and exits 1 once the session ends (gdb's
//!   `continue` there ends it: the run is over).
//!
//! The stub serves gdb on the vCPU thread, between two `KVM_RUN`s
//! ([`crate::vm::debug`]): [`session::GdbSession`] is the VM's
//! [`crate::vm::debug::Debugger`], and the VM itself is gdbstub's target
//! ([`target`]). Whatever the debugger changes in the guest is recorded and
//! shown with the verdict ([`after_run`]).

pub mod arch;
pub mod session;
pub mod target;

use std::fmt;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use crate::scenario::{Outcome, RunError};
use crate::vm::Vm;
use crate::vm::debug::Stop;
use session::GdbSession;

/// Where gdb is awaited when `--gdb` names no address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:1234";

/// An address to wait for gdb on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GdbAddr {
    Tcp(SocketAddr),
    /// A Unix socket path (`unix:PATH`, or any address with a `/`).
    Unix(PathBuf),
}

impl GdbAddr {
    /// `1234` (a port on 127.0.0.1), `HOST:PORT`, `unix:PATH` or a path.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Self::Unix(p.into()));
        }
        if s.contains('/') {
            return Ok(Self::Unix(s.into()));
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            let port: u16 = s.parse().map_err(|_| format!("{s:?} is not a port"))?;
            return Ok(Self::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        let mut addrs = s.to_socket_addrs().map_err(|e| {
            format!("{s:?} is not an address to listen on (PORT, HOST:PORT, unix:PATH): {e}")
        })?;
        addrs
            .next()
            .map(Self::Tcp)
            .ok_or_else(|| format!("{s:?} names no address"))
    }

    /// Whether only this machine can connect.
    pub fn is_local(&self) -> bool {
        match self {
            Self::Tcp(a) => a.ip().is_loopback(),
            Self::Unix(_) => true,
        }
    }
}

impl fmt::Display for GdbAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The gdb options of a run or a resumed run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GdbOptions {
    /// Start stopped and wait for gdb here (`--gdb`).
    pub at_start: Option<GdbAddr>,
    /// Stop at a mismatch and wait for gdb here (`--gdb-on-mismatch`).
    pub on_mismatch: Option<GdbAddr>,
    /// Listening beyond loopback was asked for (`--gdb-allow-remote`).
    pub allow_remote: bool,
}

/// Why the gdb stub cannot listen.
#[derive(Debug, thiserror::Error)]
pub enum GdbError {
    /// a non-loopback address without `--gdb-allow-remote`
    #[error(
        "gdb: {0} is reachable from other machines, and the stub reads and writes all guest memory; use a loopback address, or add --gdb-allow-remote"
    )]
    Remote(GdbAddr),
    /// bind or listen failed
    #[error("gdb: cannot listen on {addr}")]
    Listen {
        addr: GdbAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A bound socket gdb has not connected to yet.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `addr`; anything but loopback only with `allow_remote` (and a
    /// warning). A stale Unix socket at the path is replaced.
    pub fn bind(addr: &GdbAddr, allow_remote: bool) -> Result<Self, GdbError> {
        if !addr.is_local() {
            if !allow_remote {
                return Err(GdbError::Remote(addr.clone()));
            }
            eprintln!(
                "kjump: warning: gdb: listening on {addr}: anyone who can reach it can read and write the guest's memory"
            );
        }
        let err = |source| GdbError::Listen {
            addr: addr.clone(),
            source,
        };
        Ok(match addr {
            GdbAddr::Tcp(a) => Self::Tcp(TcpListener::bind(a).map_err(err)?),
            GdbAddr::Unix(p) => {
                use std::os::unix::fs::FileTypeExt;
                if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
                    let _ = std::fs::remove_file(p);
                }
                Self::Unix(UnixListener::bind(p).map_err(err)?, p.clone())
            }
        })
    }

    /// Where it listens (with the port the system chose for port 0).
    pub fn addr(&self) -> GdbAddr {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map(GdbAddr::Tcp)
                .unwrap_or_else(|_| GdbAddr::Tcp(SocketAddr::from(([0; 4], 0)))),
            Self::Unix(_, p) => GdbAddr::Unix(p.clone()),
        }
    }

    /// The command that attaches gdb to it.
    pub fn attach_line(&self) -> String {
        format!("gdb -ex 'target remote {}' kjump-guest.elf", self.addr())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Self::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The line that says where gdb is awaited, and how to attach it.
fn waiting_line(l: &Listener, state: &str) -> String {
    format!(
        "kjump: gdb: {state}; waiting on {}; attach with: {} (`kjump kernel kjump-guest.elf` writes the guest's ELF)",
        l.addr(),
        l.attach_line()
    )
}

/// `--gdb`: binds before the run (a bad address is refused up front).
pub fn bind_at_start(opts: &GdbOptions) -> Result<Option<Listener>, RunError> {
    opts.at_start
        .as_ref()
        .map(|a| Listener::bind(a, opts.allow_remote))
        .transpose()
        .map_err(RunError::from)
}

/// `--gdb`: the VM is stopped where it starts (`at`: before its first
/// instruction, at a dump's checkpoint) until gdb has connected and lets it
/// go.
pub fn attach_at_start(vm: &mut Vm, listener: Listener, at: &str) {
    eprintln!(
        "{}",
        waiting_line(&listener, &format!("the VM is stopped {at}"))
    );
    vm.attach_debugger(Box::new(GdbSession::new(listener)), Some(Stop::Attach));
}

/// After the scenario: with `--gdb-on-mismatch` a mismatch keeps the VM
/// stopped at its checkpoint for gdb; what the debugger changed goes into
/// the verdict; an attached gdb learns the run's exit code.
pub fn after_run(
    vm: &mut Vm,
    result: Result<Outcome, RunError>,
    opts: &GdbOptions,
) -> Result<Outcome, RunError> {
    let mut outcome = match result {
        Ok(o) => o,
        Err(e) => {
            vm.finish_debugging(2);
            return Err(e);
        }
    };
    if let (Some(addr), Some(first)) = (&opts.on_mismatch, outcome.report.mismatches.first()) {
        let n = outcome.report.mismatches.len();
        eprintln!(
            "kjump: mismatch{}: {}",
            if n > 1 {
                format!(" (first of {n})")
            } else {
                String::new()
            },
            first.explain().lines().next().unwrap_or_default()
        );
        if vm.debugger_attached() {
            eprintln!("kjump: gdb: the VM is stopped at that checkpoint in the attached gdb");
        } else {
            let l = Listener::bind(addr, opts.allow_remote)?;
            eprintln!(
                "{}",
                waiting_line(&l, "the VM is stopped at that checkpoint")
            );
            vm.attach_debugger(Box::new(GdbSession::new(l)), None);
        }
        vm.serve_debugger(Stop::Mismatch)?;
    }
    outcome.report.debugger_changes = vm.debugger_changes().to_vec();
    vm.finish_debugging(outcome.exit_code());
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_to_loopback_and_remote_ones_are_refused() {
        assert_eq!(
            GdbAddr::parse("1234"),
            Ok(GdbAddr::Tcp("127.0.0.1:1234".parse().unwrap()))
        );
        assert_eq!(GdbAddr::parse(DEFAULT_ADDR).map(|a| a.is_local()), Ok(true));
        assert_eq!(
            GdbAddr::parse("unix:/tmp/k.sock"),
            Ok(GdbAddr::Unix("/tmp/k.sock".into()))
        );
        assert_eq!(
            GdbAddr::parse("./k.sock"),
            Ok(GdbAddr::Unix("./k.sock".into()))
        );
        assert!(GdbAddr::parse("99999").is_err());
        assert!(GdbAddr::parse("no port").is_err());
        let any = GdbAddr::parse("0.0.0.0:0").unwrap();
        assert!(!any.is_local());
        let e = Listener::bind(&any, false).err().unwrap();
        assert!(matches!(e, GdbError::Remote(_)));
        assert!(e.to_string().contains("--gdb-allow-remote"), "{e}");
        let l = Listener::bind(&GdbAddr::parse("127.0.0.1:0").unwrap(), false).unwrap();
        let GdbAddr::Tcp(a) = l.addr() else {
            panic!("tcp")
        };
        assert_ne!(a.port(), 0);
        assert!(
            l.attach_line()
                .starts_with(&format!("gdb -ex 'target remote 127.0.0.1:{}'", a.port()))
        );
    }

    #[test]
    fn a_unix_listener_cleans_up_its_socket() {
        let p = std::env::temp_dir().join(format!("kjump-gdb-{}.sock", std::process::id()));
        let l = Listener::bind(&GdbAddr::Unix(p.clone()), false).unwrap();
        assert!(p.exists());
        drop(l);
        assert!(!p.exists());
    }
}
