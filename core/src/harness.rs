//! The harness port, VMM side: decodes the [`HarnessMsg`] a guest points at
//! with `out dx, eax` on [`HARNESS_PORT`].
//!
//! Every address the guest hands over is checked against guest RAM through
//! vm-memory before anything is read; a bad message is a [`HarnessError`]
//! (a guest protocol error that ends the run), never a VMM crash.

use std::fmt;

use kjump_abi::abi::{
    ExceptionArgs, HARNESS_PORT, HarnessMsg, MAX_TEXT, MSG_MAGIC, MsgKind, Role, vector_name,
};
use vm_memory::{Bytes, GuestAddress};

use crate::GuestMem;

/// More `Log` messages than this in one VM is a flood, not a log.
pub const MAX_LOG_MESSAGES: u64 = 100_000;

/// A message from the guest, decoded and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HarnessEvent {
    /// A kernel came up.
    Hello { role: Role, text: String },
    /// A line for the log.
    Log { text: String },
    /// Cycles completed so far.
    Progress { cycles: u64 },
    /// The scenario's end, as the guest sees it.
    Verdict { pass: bool, text: String },
    /// The guest panicked (`file:line: message`).
    Panic { text: String },
    /// A CPU exception reached the guest's IDT; the frame it pushed.
    Exception {
        vector: u64,
        error_code: u64,
        rip: u64,
        cs: u64,
        rflags: u64,
        rsp: u64,
        cr2: u64,
    },
    /// The kimage the guest is about to jump with (see [`kjump_abi::abi::KimageArgs`]).
    Kimage { args: [u64; 8] },
}

impl fmt::Display for HarnessEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hello { role, text } => write!(f, "hello from {}: {text}", role.name()),
            Self::Log { text } => write!(f, "log: {text}"),
            Self::Progress { cycles } => write!(f, "progress: {cycles} cycles"),
            Self::Verdict { pass, text } => {
                write!(
                    f,
                    "verdict: {}: {text}",
                    if *pass { "pass" } else { "fail" }
                )
            }
            Self::Panic { text } => write!(f, "panic: {text}"),
            Self::Exception {
                vector,
                error_code,
                rip,
                cs,
                rflags,
                rsp,
                cr2,
            } => write!(
                f,
                "exception {} (vector {vector}, error code {error_code:#x}) at rip={rip:#x} \
                 cs={cs:#x} rflags={rflags:#x} rsp={rsp:#x} cr2={cr2:#x}",
                vector_name(*vector)
            ),
            Self::Kimage { args } => write!(f, "kimage {args:#x?}"),
        }
    }
}

/// A message the VMM refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HarnessError {
    /// the message is not in RAM
    #[error("message at {addr:#x} is outside guest RAM")]
    MessageOutsideRam { addr: u64 },
    /// wrong magic
    #[error("message at {addr:#x} has magic {magic:#010x}, not {MSG_MAGIC:#010x} (\"KJMP\")")]
    BadMagic { addr: u64, magic: u32 },
    /// unknown kind
    #[error("message at {addr:#x} has unknown kind {kind}")]
    UnknownKind { addr: u64, kind: u32 },
    /// text too long
    #[error("message at {addr:#x} has a text of {len} bytes (at most {MAX_TEXT})")]
    TextTooLong { addr: u64, len: u64 },
    /// text outside RAM
    #[error("message at {addr:#x} points at text {ptr:#x}+{len} outside guest RAM")]
    TextOutsideRam { addr: u64, ptr: u64, len: u64 },
    /// unknown role
    #[error("hello message at {addr:#x} names unknown role {role}")]
    BadRole { addr: u64, role: u64 },
    /// verdict neither pass nor fail
    #[error("verdict message at {addr:#x} has value {value} (0 pass, 1 fail)")]
    BadVerdict { addr: u64, value: u64 },
    /// too many log messages
    #[error("more than {MAX_LOG_MESSAGES} log messages: the guest floods the harness port")]
    Flood,
    /// an access the protocol does not have
    #[error(
        "{len}-byte {dir} on harness port {port:#x} (the protocol has `out` of 4 bytes on {HARNESS_PORT:#x} and `in` of 4 bytes on the checkpoint port)"
    )]
    BadPortAccess {
        port: u16,
        len: usize,
        dir: &'static str,
    },
}

/// Decodes harness messages for one VM, counting them against the flood limit.
#[derive(Debug, Default)]
pub struct Harness {
    logs: u64,
}

impl Harness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads and checks the message at guest-physical `addr`.
    pub fn decode(&mut self, mem: &GuestMem, addr: u64) -> Result<HarnessEvent, HarnessError> {
        let mut raw = [0u8; HarnessMsg::SIZE];
        mem.read_slice(&mut raw, GuestAddress(addr))
            .map_err(|_| HarnessError::MessageOutsideRam { addr })?;
        let msg = HarnessMsg::from_bytes(&raw);
        if msg.magic != MSG_MAGIC {
            return Err(HarnessError::BadMagic {
                addr,
                magic: msg.magic,
            });
        }
        let kind = MsgKind::from_u32(msg.kind).ok_or(HarnessError::UnknownKind {
            addr,
            kind: msg.kind,
        })?;
        let text = read_text(mem, addr, &msg)?;
        let a = msg.args;
        Ok(match kind {
            MsgKind::Hello => HarnessEvent::Hello {
                role: Role::from_u64(a[0]).ok_or(HarnessError::BadRole { addr, role: a[0] })?,
                text,
            },
            MsgKind::Log => {
                self.logs += 1;
                if self.logs > MAX_LOG_MESSAGES {
                    return Err(HarnessError::Flood);
                }
                HarnessEvent::Log { text }
            }
            MsgKind::Progress => HarnessEvent::Progress { cycles: a[0] },
            MsgKind::Verdict => HarnessEvent::Verdict {
                pass: match a[0] {
                    0 => true,
                    1 => false,
                    value => return Err(HarnessError::BadVerdict { addr, value }),
                },
                text,
            },
            MsgKind::Panic => HarnessEvent::Panic { text },
            MsgKind::Exception => HarnessEvent::Exception {
                vector: a[ExceptionArgs::VECTOR],
                error_code: a[ExceptionArgs::ERROR_CODE],
                rip: a[ExceptionArgs::RIP],
                cs: a[ExceptionArgs::CS],
                rflags: a[ExceptionArgs::RFLAGS],
                rsp: a[ExceptionArgs::RSP],
                cr2: a[ExceptionArgs::CR2],
            },
            MsgKind::Kimage => HarnessEvent::Kimage { args: a },
        })
    }
}

/// The message's text: `text_len` bytes at `text_ptr` (none when the length
/// is 0), checked to lie in RAM; invalid UTF-8 is replaced, not refused.
fn read_text(mem: &GuestMem, addr: u64, msg: &HarnessMsg) -> Result<String, HarnessError> {
    let (ptr, len) = (msg.text_ptr, msg.text_len);
    if len == 0 {
        return Ok(String::new());
    }
    if len > MAX_TEXT {
        return Err(HarnessError::TextTooLong { addr, len });
    }
    if ptr.checked_add(len).is_none() {
        return Err(HarnessError::TextOutsideRam { addr, ptr, len });
    }
    let mut buf = vec![0u8; len as usize];
    mem.read_slice(&mut buf, GuestAddress(ptr))
        .map_err(|_| HarnessError::TextOutsideRam { addr, ptr, len })?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kjump_abi::layout;

    const RAM: u64 = 32 << 20;
    const MSG: u64 = 0x10_0000;
    const TEXT: u64 = 0x10_1000;

    fn mem() -> GuestMem {
        GuestMem::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
    }

    fn put(mem: &GuestMem, msg: &HarnessMsg, text: &[u8]) {
        mem.write_slice(&msg.to_bytes(), GuestAddress(MSG)).unwrap();
        mem.write_slice(text, GuestAddress(TEXT)).unwrap();
    }

    fn msg(kind: MsgKind, args: &[u64], text: &[u8]) -> HarnessMsg {
        let mut m = HarnessMsg::new(kind);
        m.args[..args.len()].copy_from_slice(args);
        if !text.is_empty() {
            m.text_ptr = TEXT;
            m.text_len = text.len() as u64;
        }
        m
    }

    fn decode(m: &HarnessMsg, text: &[u8]) -> Result<HarnessEvent, HarnessError> {
        let mem = mem();
        put(&mem, m, text);
        Harness::new().decode(&mem, MSG)
    }

    #[test]
    fn every_kind_decodes() {
        let t = b"kernel a up";
        assert_eq!(
            decode(&msg(MsgKind::Hello, &[1], t), t),
            Ok(HarnessEvent::Hello {
                role: Role::B,
                text: "kernel a up".into()
            })
        );
        assert_eq!(
            decode(&msg(MsgKind::Log, &[], b"x"), b"x"),
            Ok(HarnessEvent::Log { text: "x".into() })
        );
        assert_eq!(
            decode(&msg(MsgKind::Progress, &[42], b""), b""),
            Ok(HarnessEvent::Progress { cycles: 42 })
        );
        assert_eq!(
            decode(&msg(MsgKind::Verdict, &[1], b"bad"), b"bad"),
            Ok(HarnessEvent::Verdict {
                pass: false,
                text: "bad".into()
            })
        );
        assert_eq!(
            decode(&msg(MsgKind::Verdict, &[0], b""), b""),
            Ok(HarnessEvent::Verdict {
                pass: true,
                text: String::new()
            })
        );
        assert_eq!(
            decode(
                &msg(MsgKind::Panic, &[7], b"main.rs:7: oops"),
                b"main.rs:7: oops"
            ),
            Ok(HarnessEvent::Panic {
                text: "main.rs:7: oops".into()
            })
        );
        let e = decode(
            &msg(
                MsgKind::Exception,
                &[6, 0, 0x20_1234, 8, 0x46, 0x30_0000, 0],
                b"",
            ),
            b"",
        )
        .unwrap();
        assert_eq!(
            e,
            HarnessEvent::Exception {
                vector: 6,
                error_code: 0,
                rip: 0x20_1234,
                cs: 8,
                rflags: 0x46,
                rsp: 0x30_0000,
                cr2: 0
            }
        );
        assert!(e.to_string().contains("#UD invalid opcode"));
        let args = [1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(
            decode(&msg(MsgKind::Kimage, &args, b""), b""),
            Ok(HarnessEvent::Kimage { args })
        );
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let t = [b'o', 0xff, b'k'];
        assert_eq!(
            decode(&msg(MsgKind::Log, &[], &t), &t),
            Ok(HarnessEvent::Log {
                text: "o\u{fffd}k".into()
            })
        );
    }

    #[test]
    fn hostile_message_addresses_are_refused() {
        let mem = mem();
        let mut h = Harness::new();
        for addr in [RAM, RAM - 87, RAM - 1, u64::MAX, u64::MAX - 40, 0xc000_0000] {
            assert_eq!(
                h.decode(&mem, addr),
                Err(HarnessError::MessageOutsideRam { addr })
            );
        }
        // The last 88 bytes of RAM are fine.
        mem.write_slice(
            &msg(MsgKind::Progress, &[1], b"").to_bytes(),
            GuestAddress(RAM - 88),
        )
        .unwrap();
        assert_eq!(
            h.decode(&mem, RAM - 88),
            Ok(HarnessEvent::Progress { cycles: 1 })
        );
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut m = msg(MsgKind::Log, &[], b"");
        m.magic = 0x1234;
        assert_eq!(
            decode(&m, b""),
            Err(HarnessError::BadMagic {
                addr: MSG,
                magic: 0x1234
            })
        );
        let mut m = msg(MsgKind::Log, &[], b"");
        m.kind = 99;
        assert_eq!(
            decode(&m, b""),
            Err(HarnessError::UnknownKind {
                addr: MSG,
                kind: 99
            })
        );
        // Roles are a, b and c (hibernate's restore kernel).
        assert_eq!(
            decode(&msg(MsgKind::Hello, &[3], b""), b""),
            Err(HarnessError::BadRole { addr: MSG, role: 3 })
        );
        assert_eq!(
            decode(&msg(MsgKind::Verdict, &[2], b""), b""),
            Err(HarnessError::BadVerdict {
                addr: MSG,
                value: 2
            })
        );
        // All zeroes (an unwritten buffer) is not a message.
        assert!(matches!(
            Harness::new().decode(&mem(), 0x20_0000),
            Err(HarnessError::BadMagic { magic: 0, .. })
        ));
    }

    #[test]
    fn hostile_text_pointers_are_refused() {
        let cases = [
            (TEXT, MAX_TEXT + 1, "too long"),
            (u64::MAX, 2, "wraps"),
            (u64::MAX - 10, MAX_TEXT, "wraps"),
            (RAM - 2, 3, "runs off the end of RAM"),
            (RAM, 1, "starts past RAM"),
            (layout::MMIO_HOLE_START, 8, "in the hole"),
        ];
        for (ptr, len, why) in cases {
            let mut m = msg(MsgKind::Log, &[], b"");
            m.text_ptr = ptr;
            m.text_len = len;
            let r = decode(&m, b"");
            assert!(
                matches!(
                    r,
                    Err(HarnessError::TextTooLong { .. } | HarnessError::TextOutsideRam { .. })
                ),
                "{why}: {r:?}"
            );
        }
        // A zero length with a wild pointer is just no text.
        let mut m = msg(MsgKind::Log, &[], b"");
        m.text_ptr = u64::MAX;
        assert_eq!(
            decode(&m, b""),
            Ok(HarnessEvent::Log {
                text: String::new()
            })
        );
        // The longest text that ends at the last byte of RAM is fine.
        let mem = mem();
        let mut m = msg(MsgKind::Log, &[], b"");
        m.text_ptr = RAM - MAX_TEXT;
        m.text_len = MAX_TEXT;
        put(&mem, &m, b"");
        assert!(Harness::new().decode(&mem, MSG).is_ok());
    }

    #[test]
    fn log_floods_are_cut_off() {
        let mem = mem();
        put(&mem, &msg(MsgKind::Log, &[], b""), b"");
        let mut h = Harness::new();
        for _ in 0..MAX_LOG_MESSAGES {
            assert!(h.decode(&mem, MSG).is_ok());
        }
        assert_eq!(h.decode(&mem, MSG), Err(HarnessError::Flood));
        // Other messages do not count.
        put(&mem, &msg(MsgKind::Progress, &[1], b""), b"");
        assert!(Harness::new().decode(&mem, MSG).is_ok());
    }

    #[test]
    fn errors_read_as_one_line() {
        let e = HarnessError::MessageOutsideRam { addr: 0xdead_0000 };
        assert_eq!(e.to_string(), "message at 0xdead0000 is outside guest RAM");
        let e = HarnessError::BadPortAccess {
            port: 0x7e4,
            len: 1,
            dir: "in",
        };
        assert!(!e.to_string().contains('\n'));
    }
}
