//! One gdb session: the connection and gdbstub's state machine, serving
//! the VM's stops ([`Debugger`]).
//!
//! While the guest is stopped the session reads gdb's packets (blocking,
//! with a short timeout so that a ^C of kjump or the watchdog's kick is
//! seen). While it runs, the connection raises the vCPU thread's kick
//! signal when bytes arrive (`O_ASYNC` with `F_SETSIG`, owner the vCPU
//! thread: Linux `fcntl(2)`), which takes the vCPU out of `KVM_RUN`; the run
//! loop then [`Debugger::poll`]s, and gdb's Ctrl-C becomes a stop.
//!
//! One client only: the listening socket is closed once gdb connects, so a
//! second connection is refused. A client that goes away between packets
//! ends the session as a detach would; one that breaks the protocol
//! (garbage, a bad checksum, a connection dropped in the middle of a
//! packet) ends the run with an error saying so.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use gdbstub::common::Signal;
use gdbstub::conn::Connection;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{DisconnectReason, GdbStub, GdbStubError, SingleThreadStopReason};
use gdbstub::target::ext::breakpoints::WatchKind;

use super::Listener;
use super::target::TargetFailure;
use crate::vm::debug::{Debugger, HwKind, Poll, Resume, Stop};
use crate::vm::{Vm, VmError};

/// How long a blocking read or accept waits before looking at the stop flag.
const WAKE: Duration = Duration::from_millis(200);
/// gdb's largest packet (it is told with `PacketSize`): room for a `G` of
/// every register and a 4 KiB memory write.
const PACKET_SIZE: usize = 0x4000;

/// A connected client: TCP or a Unix socket.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Self::Tcp(s) => Self::Tcp(s.try_clone()?),
            Self::Unix(s) => Self::Unix(s.try_clone()?),
        })
    }

    fn fd(&self) -> RawFd {
        match self {
            Self::Tcp(s) => s.as_raw_fd(),
            Self::Unix(s) => s.as_raw_fd(),
        }
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_read_timeout(t),
            Self::Unix(s) => s.set_read_timeout(t),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Self::Tcp(s) => Write::write_all(s, buf),
            Self::Unix(s) => Write::write_all(s, buf),
        }
    }
}

/// gdbstub's side of the connection: replies are gathered and sent at
/// each flush (gdbstub writes byte by byte).
pub struct Conn {
    stream: Stream,
    out: Vec<u8>,
}

impl Connection for Conn {
    type Error = io::Error;

    fn write(&mut self, byte: u8) -> io::Result<()> {
        self.out.push(byte);
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.stream.write_all(&self.out);
        self.out.clear();
        r
    }

    fn on_session_start(&mut self) -> io::Result<()> {
        match &self.stream {
            Stream::Tcp(s) => s.set_nodelay(true),
            Stream::Unix(_) => Ok(()),
        }
    }
}

type Machine = GdbStubStateMachine<'static, Vm, Conn>;
type StubError = GdbStubError<TargetFailure, io::Error>;

/// Follows gdb's packet framing (`$…#xx`) to tell whether the client left
/// in the middle of a packet.
#[derive(Default)]
struct Framing {
    /// 0: between packets; 1: in a body; 2, 3: in the checksum.
    state: u8,
}

impl Framing {
    fn push(&mut self, b: u8) {
        self.state = match (self.state, b) {
            (0, b'$') => 1,
            (0, _) => 0,
            (1, b'#') => 2,
            (1, _) => 1,
            (2, _) => 3,
            _ => 0,
        };
    }

    fn in_packet(&self) -> bool {
        self.state != 0
    }
}

/// The VM's debugger: gdb over one connection.
pub struct GdbSession {
    /// Until gdb connects.
    listener: Option<Listener>,
    /// The client, for reading (gdbstub's [`Conn`] writes).
    reader: Option<Stream>,
    machine: Option<Machine>,
    /// Bytes read but not yet given to the state machine.
    input: VecDeque<u8>,
    framing: Framing,
    /// The run is over (a mismatch): the guest does not run again.
    post_mortem: bool,
}

fn protocol(e: StubError) -> VmError {
    VmError::Debugger(format!("the gdb session failed: {e}"))
}

/// gdb's view of why the guest stopped.
fn stop_reason(why: Stop) -> SingleThreadStopReason<u64> {
    match why {
        Stop::Step => SingleThreadStopReason::DoneStep,
        Stop::Breakpoint { soft: true, .. } => SingleThreadStopReason::SwBreak(()),
        Stop::Breakpoint { soft: false, .. } => SingleThreadStopReason::HwBreak(()),
        Stop::Watchpoint { addr, kind } => SingleThreadStopReason::Watch {
            tid: (),
            kind: if kind == HwKind::Write {
                WatchKind::Write
            } else {
                WatchKind::ReadWrite
            },
            addr,
        },
        Stop::Interrupt => SingleThreadStopReason::Signal(Signal::SIGINT),
        Stop::Attach | Stop::Mismatch => SingleThreadStopReason::Signal(Signal::SIGTRAP),
    }
}

impl GdbSession {
    pub fn new(listener: Listener) -> Self {
        Self {
            listener: Some(listener),
            reader: None,
            machine: None,
            input: VecDeque::new(),
            framing: Framing::default(),
            post_mortem: false,
        }
    }

    /// Waits for gdb to connect, then closes the listening socket.
    fn accept(&mut self, vm: &mut Vm) -> Result<(), VmError> {
        let listener = self
            .listener
            .take()
            .ok_or_else(|| VmError::Debugger("the gdb session is over".into()))?;
        let failed =
            |e: io::Error| VmError::Debugger(format!("gdb: cannot accept a connection: {e}"));
        let set_nb = match &listener {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l, _) => l.set_nonblocking(true),
        };
        set_nb.map_err(failed)?;
        let (stream, peer) = loop {
            let r = match &listener {
                Listener::Tcp(l) => l.accept().map(|(s, a)| (Stream::Tcp(s), a.to_string())),
                Listener::Unix(l, p) => l
                    .accept()
                    .map(|(s, _)| (Stream::Unix(s), p.display().to_string())),
            };
            match r {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    if let Some(e) = vm.stop_requested_error() {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(failed(e)),
            }
        };
        // One client: later ones are refused.
        drop(listener);
        eprintln!("kjump: gdb: connected ({peer})");
        let blocking = match &stream {
            Stream::Tcp(s) => s.set_nonblocking(false),
            Stream::Unix(s) => s.set_nonblocking(false),
        };
        blocking.map_err(failed)?;
        stream.set_read_timeout(Some(WAKE)).map_err(failed)?;
        let reader = stream.try_clone().map_err(failed)?;
        signal_on_input(reader.fd(), false).map_err(failed)?;
        let conn = Conn {
            stream,
            out: Vec::with_capacity(PACKET_SIZE),
        };
        let stub = GdbStub::<Vm, Conn>::builder(conn)
            .packet_buffer_size(PACKET_SIZE)
            .build()
            .map_err(|e| VmError::Debugger(format!("gdb: {e}")))?;
        self.machine = Some(stub.run_state_machine(vm).map_err(protocol)?);
        self.reader = Some(reader);
        Ok(())
    }

    /// The next byte from gdb, waiting for it; `None` when gdb went away.
    fn next_byte(&mut self, vm: &mut Vm) -> Result<Option<u8>, VmError> {
        if let Some(b) = self.input.pop_front() {
            return Ok(Some(b));
        }
        let reader = self
            .reader
            .as_mut()
            .ok_or_else(|| VmError::Debugger("no gdb connection".into()))?;
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(None),
                Ok(n) => {
                    self.input.extend(&buf[1..n]);
                    return Ok(Some(buf[0]));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if let Some(e) = vm.stop_requested_error() {
                        return Err(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => {
                    return Err(VmError::Debugger(format!(
                        "cannot read from the gdb client: {e}"
                    )));
                }
            }
        }
    }

    /// Reads what gdb sent while the guest runs, without waiting; false
    /// when gdb went away.
    fn read_ready(&mut self) -> Result<bool, VmError> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(true);
        };
        if !readable(reader.fd()).map_err(|e| VmError::Debugger(format!("gdb: poll: {e}")))? {
            return Ok(true);
        }
        let mut buf = [0u8; 4096];
        match reader.read(&mut buf) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.input.extend(&buf[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(false),
            Err(e) => Err(VmError::Debugger(format!(
                "cannot read from the gdb client: {e}"
            ))),
        }
    }

    /// gdb went away: the session ends cleanly between packets; in the
    /// middle of one the client broke the protocol.
    fn gone(&mut self) -> Result<Resume, VmError> {
        self.close();
        if self.framing.in_packet() {
            return Err(VmError::Debugger(
                "the gdb client closed the connection in the middle of a packet".into(),
            ));
        }
        eprintln!("kjump: gdb: the client went away; the run goes on without it");
        Ok(Resume::Detach)
    }

    fn close(&mut self) {
        self.machine = None;
        self.reader = None;
        self.input.clear();
    }

    /// The session ended the way gdb said.
    fn disconnected(&mut self, reason: DisconnectReason) -> Result<Resume, VmError> {
        self.close();
        match reason {
            DisconnectReason::Disconnect => {
                eprintln!("kjump: gdb: detached; the run goes on");
                Ok(Resume::Detach)
            }
            DisconnectReason::TargetExited(_) | DisconnectReason::TargetTerminated(_) => {
                Ok(Resume::Detach)
            }
            DisconnectReason::Kill => Err(VmError::Debugger(
                "gdb killed the guest; the run is abandoned".into(),
            )),
        }
    }

    /// Serves gdb while the guest is stopped, until gdb lets it go (or the
    /// session ends).
    fn serve(&mut self, vm: &mut Vm, mut m: Machine) -> Result<Resume, VmError> {
        loop {
            m = match m {
                GdbStubStateMachine::Idle(s) => {
                    let Some(b) = self.next_byte(vm)? else {
                        return self.gone();
                    };
                    self.framing.push(b);
                    s.incoming_data(vm, b).map_err(protocol)?
                }
                GdbStubStateMachine::Running(s) if self.post_mortem => {
                    // The run is over: going on ends the session, and gdb
                    // shows kjump's exit code.
                    s.report_stop(vm, SingleThreadStopReason::Exited(1))
                        .map_err(protocol)?
                }
                GdbStubStateMachine::Running(s) => {
                    self.machine = Some(s.into());
                    let how = vm.take_resume_request().unwrap_or_default();
                    signal_on_input(self.reader_fd(), true)
                        .map_err(|e| VmError::Debugger(format!("gdb: {e}")))?;
                    return Ok(how);
                }
                // Ctrl-C while stopped: nothing to stop.
                GdbStubStateMachine::CtrlCInterrupt(s) => s
                    .interrupt_handled(vm, None::<SingleThreadStopReason<u64>>)
                    .map_err(protocol)?,
                GdbStubStateMachine::Disconnected(s) => return self.disconnected(s.get_reason()),
            };
        }
    }

    fn reader_fd(&self) -> RawFd {
        self.reader.as_ref().map_or(-1, Stream::fd)
    }
}

impl Debugger for GdbSession {
    fn stopped(&mut self, vm: &mut Vm, why: Stop) -> Result<Resume, VmError> {
        if why == Stop::Mismatch {
            self.post_mortem = true;
        }
        if self.machine.is_none() {
            self.accept(vm)?;
        }
        signal_on_input(self.reader_fd(), false)
            .map_err(|e| VmError::Debugger(format!("gdb: {e}")))?;
        let m = self.machine.take().expect("connected above");
        let m = match m {
            GdbStubStateMachine::Running(s) => s.report_stop(vm, stop_reason(why)),
            GdbStubStateMachine::CtrlCInterrupt(s) => {
                s.interrupt_handled(vm, Some(stop_reason(why)))
            }
            // A new session: gdb asks why with `?`.
            other => Ok(other),
        }
        .map_err(protocol)?;
        self.serve(vm, m)
    }

    fn poll(&mut self, vm: &mut Vm) -> Result<Poll, VmError> {
        if !self.read_ready()? {
            return self.gone().map(|_| Poll::Ended);
        }
        while let Some(b) = self.input.pop_front() {
            self.framing.push(b);
            let Some(m) = self.machine.take() else {
                return Ok(Poll::Running);
            };
            let m = match m {
                GdbStubStateMachine::Running(s) => s.incoming_data(vm, b).map_err(protocol)?,
                other => other,
            };
            match m {
                GdbStubStateMachine::CtrlCInterrupt(_) => {
                    self.machine = Some(m);
                    return Ok(Poll::Stop(Stop::Interrupt));
                }
                GdbStubStateMachine::Disconnected(s) => {
                    let r = self.disconnected(s.get_reason())?;
                    debug_assert_eq!(r, Resume::Detach);
                    return Ok(Poll::Ended);
                }
                other => self.machine = Some(other),
            }
        }
        Ok(Poll::Running)
    }

    fn finish(&mut self, vm: &mut Vm, exit_code: u8) {
        if let Some(GdbStubStateMachine::Running(s)) = self.machine.take() {
            // gdb shows "exited with code N" and ends its session.
            let _ = s.report_stop(vm, SingleThreadStopReason::Exited(exit_code));
        }
        self.close();
    }
}

/// Whether `fd` has something to read (or was closed), without waiting.
fn readable(fd: RawFd) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call; a zero
    // timeout returns at once; the result is checked.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    match n {
        n if n < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0),
    }
}

/// Linux `fcntl` commands and owner type libc does not define for glibc
/// (`include/uapi/asm-generic/fcntl.h`).
const F_SETSIG: libc::c_int = 10;
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;

#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// With `on`, input on `fd` raises the kick signal on this thread (the
/// vCPU thread), which takes the vCPU out of `KVM_RUN`; without, it does
/// not.
fn signal_on_input(fd: RawFd, on: bool) -> io::Result<()> {
    if fd < 0 {
        return Ok(());
    }
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    if on {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let owner = FOwnerEx {
            kind: F_OWNER_TID,
            pid: tid,
        };
        // SAFETY: F_SETOWN_EX reads one `struct f_owner_ex`, which `owner`
        // is (same layout) and outlives the call; the result is checked.
        check(unsafe { libc::fcntl(fd, F_SETOWN_EX, &owner) })?;
        // SAFETY: F_SETSIG takes a signal number; the result is checked.
        check(unsafe { libc::fcntl(fd, F_SETSIG, crate::vm::watchdog::kick_signal()) })?;
    }
    // SAFETY: F_GETFL/F_SETFL on an open fd take and return flags only.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let new = if on {
        flags | libc::O_ASYNC
    } else {
        flags & !libc::O_ASYNC
    };
    if new != flags {
        // SAFETY: as above.
        check(unsafe { libc::fcntl(fd, libc::F_SETFL, new) })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_knows_when_a_packet_is_open() {
        let mut f = Framing::default();
        for b in b"+$qSupported:xmlRegisters=i386#6a" {
            f.push(*b);
        }
        assert!(!f.in_packet());
        for b in b"$m1000,8#" {
            f.push(*b);
        }
        assert!(f.in_packet());
        f.push(b'5');
        assert!(f.in_packet());
        f.push(b'c');
        assert!(!f.in_packet());
        f.push(0x03);
        assert!(!f.in_packet(), "a Ctrl-C is no packet");
    }

    #[test]
    fn stops_map_to_gdb_stop_reasons() {
        assert!(matches!(
            stop_reason(Stop::Watchpoint {
                addr: 8,
                kind: HwKind::Write
            }),
            SingleThreadStopReason::Watch {
                kind: WatchKind::Write,
                addr: 8,
                ..
            }
        ));
        assert!(matches!(
            stop_reason(Stop::Breakpoint {
                addr: 1,
                soft: true
            }),
            SingleThreadStopReason::SwBreak(())
        ));
        assert!(matches!(
            stop_reason(Stop::Interrupt),
            SingleThreadStopReason::Signal(Signal::SIGINT)
        ));
    }
}
