//! Live debugging with the real gdb against real guests: `--gdb` on a run
//! and on a resumed dump, `--gdb-on-mismatch`, Ctrl-C, detach, and
//! clients that break the protocol.

mod common;
use common::{gdb_or_skip, kjump, kjump_command, kvm_or_skip, scratch};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kjump_core::symbols::Symbols;

/// How long any one kjump or gdb may take before the test gives up on it.
const DEADLINE: Duration = Duration::from_secs(120);

fn ready(test: &str) -> bool {
    kvm_or_skip(test) && gdb_or_skip(test)
}

/// The embedded guest kernel, written where gdb can read its symbols.
fn guest_elf(dir: &Path) -> PathBuf {
    let p = dir.join("kjump-guest.elf");
    std::fs::write(&p, kjump::DEFAULT_KERNEL).unwrap();
    p
}

/// A kjump that waits for gdb: its stderr is read on a thread.
struct Running {
    child: Child,
    /// Where it listens, from its "waiting on ADDR;" line.
    addr: String,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// Starts kjump with `args` and waits for its "waiting on" line.
    fn start(args: &[&str]) -> Self {
        let mut child = kjump_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kjump starts");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut r = Self {
            child,
            addr: String::new(),
            stderr: rx,
            seen: Vec::new(),
        };
        let line = r.wait_for("waiting on ");
        let rest = &line[line.find("waiting on ").unwrap() + "waiting on ".len()..];
        r.addr = rest[..rest.find(';').unwrap()].to_owned();
        r
    }

    /// Waits for a stderr line containing `text` (or finds it among those
    /// already read); returns it.
    fn wait_for(&mut self, text: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(text)) {
            return l.clone();
        }
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(text) {
                        return l;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("no {text:?} from kjump; it said:\n{}", self.seen.join("\n"));
                }
            }
        }
    }

    /// Waits for kjump to end (killing it past the deadline); its exit
    /// code, stdout and all of stderr.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let end = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("kjump did not end; it said:\n{}", self.seen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        (status.code(), out, self.seen.join("\n"))
    }
}

/// Runs a child to its end, killing it past the deadline.
fn output_within(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let end = Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// gdb in batch mode on the guest ELF, attached to `addr`, running `cmds`;
/// its stdout and stderr together.
fn gdb(elf: &Path, addr: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("gdb");
    c.args(["-batch", "-nx", "-ex", "set confirm off"])
        .args(["-ex", &format!("target remote {addr}")]);
    for cmd in cmds {
        c.args(["-ex", cmd]);
    }
    c.arg(elf);
    let o = output_within(c);
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The address of a word of the guest's pattern (its symbol looked up by
/// suffix: the module it lives in may move).
fn pattern_word(word: u64) -> u64 {
    let s = Symbols::from_elf(kjump::DEFAULT_KERNEL).unwrap();
    s.address_of_suffix("STATIC_PATTERN")
        .expect("the guest has STATIC_PATTERN")
        + 8 * word
}

#[test]
fn gdb_breaks_steps_watches_and_detaches_and_the_run_passes() {
    if !ready("gdb_breaks_steps_watches_and_detaches_and_the_run_passes") {
        return;
    }
    let dir = scratch("gdb-session");
    let elf = guest_elf(&dir);
    let k = Running::start(&[
        "--scenario",
        "ping-pong",
        "--cycles",
        "2",
        "--peer-mem",
        "4M",
        "--gdb",
        "127.0.0.1:0",
    ]);
    let watch = format!("watch *(unsigned long *){:#x}", pattern_word(3));
    let out = gdb(
        &elf,
        &k.addr,
        &[
            "info registers",
            "hbreak kjump_checkpoint",
            "continue",
            "bt",
            "x/4gx $rsp",
            "stepi",
            "info registers rip",
            "delete",
            &watch,
            "continue",
            "delete",
            "detach",
        ],
    );
    // Stopped before the first instruction, every register there.
    assert!(out.contains("in _start ()"), "{out}");
    for reg in [
        "rax", "r15", "eflags", "cs", "fs_base", "cr0", "cr3", "efer",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{reg} "))),
            "{reg}: {out}"
        );
    }
    assert!(
        out.contains("Hardware assisted breakpoint 1 at")
            && out.contains("Breakpoint 1, 0x")
            && out.contains(" in kjump_checkpoint ()"),
        "{out}"
    );
    // The backtrace goes through the jump function to the kernel's main.
    let frames: Vec<&str> = out.lines().filter(|l| l.starts_with('#')).collect();
    assert!(frames.len() > 2, "{out}");
    assert!(frames[0].contains("kjump_checkpoint"), "{out}");
    assert!(
        frames[1].contains("kexec") && frames.iter().any(|f| f.contains("kmain")),
        "{out}"
    );
    // The stack at $rsp holds the return address of frame #1.
    let ret = frames[1].split_whitespace().nth(1).unwrap();
    let stack = out
        .lines()
        .find(|l| l.starts_with("0x") && l.contains(":\t0x"))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(stack.split('\t').nth(1), Some(ret), "{out}");
    // stepi runs the checkpoint's `in` (answered JUMP by the VMM).
    assert!(
        out.lines()
            .any(|l| l.starts_with("rip ") && l.contains("<kjump_checkpoint+1>")),
        "{out}"
    );
    // The pattern word is written when the relocation code swaps a's page
    // out: the watchpoint fires with the old and the new value.
    assert!(
        out.contains("Hardware watchpoint 2: *(unsigned long *)")
            && out.contains("Old value = ")
            && out.contains("New value = "),
        "{out}"
    );
    assert!(out.contains("[Inferior 1 (process 1) detached]"), "{out}");
    let (code, stdout, stderr) = k.finish();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("kjump: ping-pong: pass (") && !stdout.contains("debugger"),
        "{stdout}"
    );
    assert!(
        stderr.contains("kjump: gdb: detached; the run goes on"),
        "{stderr}"
    );
}

#[test]
fn ctrl_c_in_gdb_stops_the_running_guest() {
    if !ready("ctrl_c_in_gdb_stops_the_running_guest") {
        return;
    }
    let dir = scratch("gdb-ctrl-c");
    let elf = guest_elf(&dir);
    // Long enough to be still running 2 s after `continue` (100 cycles
    // take under 2 s now; 300 about 4.5 s).
    let k = Running::start(&[
        "--scenario",
        "ping-pong",
        "--cycles",
        "300",
        "--gdb",
        "127.0.0.1:0",
    ]);
    // gdb reading commands from a pipe, as a user at a terminal would type
    // them; ^C is SIGINT to gdb, which sends the interrupt to the stub.
    let mut g = Command::new("gdb")
        .args(["-nx", "-q", "-ex", "set confirm off"])
        .args(["-ex", &format!("target remote {}", k.addr)])
        .arg(&elf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gdb starts");
    let mut stdin = g.stdin.take().unwrap();
    stdin.write_all(b"continue\n").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let pid = libc::pid_t::try_from(g.id()).unwrap();
    // SAFETY: `pid` is our child gdb, still running (it waits on the target).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    std::thread::sleep(Duration::from_secs(1));
    stdin
        .write_all(b"info registers rip\ndetach\nquit\n")
        .unwrap();
    drop(stdin);
    let end = Instant::now() + DEADLINE;
    while g.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = g.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = g.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        out.contains("Program received signal SIGINT, Interrupt."),
        "{out}"
    );
    assert!(out.contains("[Inferior 1 (process 1) detached]"), "{out}");
    let (code, stdout, stderr) = k.finish();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("kjump: ping-pong: pass ("), "{stdout}");
}

#[test]
fn gdb_on_mismatch_shows_the_failing_checkpoint_and_the_run_fails() {
    if !ready("gdb_on_mismatch_shows_the_failing_checkpoint_and_the_run_fails") {
        return;
    }
    let dir = scratch("gdb-mismatch");
    let elf = guest_elf(&dir);
    let mut k = Running::start(&[
        "--scenario",
        "ping-pong",
        "--cycles",
        "2",
        "--peer-mem",
        "4M",
        "--inject",
        "saved-rbx",
        "--gdb-on-mismatch",
        "127.0.0.1:0",
    ]);
    assert!(
        k.seen
            .iter()
            .any(|l| l.contains("the VM is stopped at that checkpoint")),
        "{:?}",
        k.seen
    );
    let line = k.wait_for("kjump: mismatch");
    // "... register rbx: 0x236430 -> 0x236431": the value found is in rbx.
    // (A note may follow the value: "(found value is in ...)".)
    let found = line
        .rsplit(" -> ")
        .next()
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    assert!(line.contains("register rbx:"), "{line}");
    let out = gdb(
        &elf,
        &k.addr,
        &["info registers rbx rip", "bt 2", "continue"],
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("rbx ") && l.split_whitespace().nth(1) == Some(found.as_str())),
        "rbx {found}: {out}"
    );
    assert!(out.contains("<kjump_checkpoint+1>"), "{out}");
    // The run is over: continuing ends the session with kjump's exit code.
    assert!(
        out.contains("[Inferior 1 (process 1) exited with code 01]"),
        "{out}"
    );
    let (code, stdout, stderr) = k.finish();
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("register rbx"), "{stdout}");
}

#[test]
fn a_dump_resumes_under_gdb_at_its_checkpoint() {
    if !ready("a_dump_resumes_under_gdb_at_its_checkpoint") {
        return;
    }
    let dir = scratch("gdb-resume");
    let elf = guest_elf(&dir);
    let dumps = dir.join("dumps");
    let o = kjump(&[
        "--scenario",
        "ping-pong",
        "--cycles",
        "3",
        "--peer-mem",
        "4M",
        "--dump",
        "every-jump",
        "--dump-dir",
        dumps.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0));
    let dump = dumps.join("c00002-00004-b-resume.core");
    let k = Running::start(&["resume", dump.to_str().unwrap(), "--gdb", "127.0.0.1:0"]);
    let out = gdb(
        &elf,
        &k.addr,
        &["info registers rip rax", "bt", "stepi", "detach"],
    );
    // At the checkpoint, after its `in`: rax holds the answer BACK.
    assert!(out.contains("<kjump_checkpoint+1>"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("rax ") && l.contains("0x4b434142")),
        "{out}"
    );
    assert!(out.contains("#1 ") && out.contains("kexec"), "{out}");
    let (code, stdout, stderr) = k.finish();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("stopped at the dump's checkpoint"),
        "{stderr}"
    );
    assert!(stdout.contains("kjump: ping-pong: pass ("), "{stdout}");
}

/// A raw client: connects to a kjump waiting for gdb on TCP.
fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connects");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

#[test]
fn hostile_clients_end_the_run_with_a_clear_error() {
    if !kvm_or_skip("hostile_clients_end_the_run_with_a_clear_error") {
        return;
    }
    let cases: [(&str, &[u8], &str); 3] = [
        ("garbage", b"hello gdb\n", "the gdb session failed: "),
        ("bad checksum", b"+$g#00", "ChecksumMismatched"),
        (
            "dropped mid-packet",
            b"+$qSupported:multiprocess+;swbreak+",
            "the gdb client closed the connection in the middle of a packet",
        ),
    ];
    for (what, bytes, why) in cases {
        let k = Running::start(&["--gdb", "127.0.0.1:0"]);
        let mut c = connect(&k.addr);
        // One client only: a second connection is refused.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            TcpStream::connect(&k.addr).is_err(),
            "{what}: a second client got in"
        );
        c.write_all(bytes).unwrap();
        drop(c);
        let (code, stdout, stderr) = k.finish();
        assert_eq!(code, Some(2), "{what}: {stdout}\n{stderr}");
        let err = stderr
            .lines()
            .find(|l| l.starts_with("kjump: error: "))
            .unwrap_or_else(|| panic!("{what}: {stderr}"));
        assert!(err.contains(why), "{what}: {err}");
    }
}

#[test]
fn a_client_that_leaves_between_packets_ends_the_session_and_the_run_goes_on_unwatched() {
    if !kvm_or_skip(
        "a_client_that_leaves_between_packets_ends_the_session_and_the_run_goes_on_unwatched",
    ) {
        return;
    }
    let dir = scratch("gdb-leave");
    let sock = dir.join("gdb.sock");
    // A guest stopped in the debugger is not hung: the watchdog waits.
    let k = Running::start(&["--timeout", "1", "--gdb", sock.to_str().unwrap()]);
    assert_eq!(k.addr, sock.display().to_string());
    let mut c = std::os::unix::net::UnixStream::connect(&sock).expect("connects");
    std::thread::sleep(Duration::from_millis(2500));
    // `?` (checksum 0x3f): the stop reason, then leave.
    c.write_all(b"+$?#3f").unwrap();
    let mut reply = [0u8; 64];
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let n = c.read(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]).into_owned();
    assert!(reply.contains("$S05") || reply.contains("$T05"), "{reply}");
    drop(c);
    let (code, stdout, stderr) = k.finish();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("kjump: gdb: the client went away; the run goes on without it"),
        "{stderr}"
    );
    assert!(!sock.exists(), "the socket is removed");
}

#[test]
fn listening_beyond_loopback_needs_to_be_asked_for() {
    // Refused before KVM is touched: runs anywhere.
    let o = kjump(&["--gdb", "0.0.0.0:0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("kjump: error: gdb: 0.0.0.0:0 is reachable from other machines")
            && err.contains("--gdb-allow-remote"),
        "{err}"
    );
}
