//! The harness port, VMM side: `Harness::decode` on messages in a small
//! guest memory (64 KiB at 0, a hole, 16 KiB below 1 MiB), at addresses
//! and with text pointers from the input, several decodes per input with
//! guest writes in between, through one `Harness` (its log count is the
//! state a flood is measured with).
//!
//! Input: a 2-byte length and that many bytes of RAM (from address 0 up),
//! then operations: decode at an address (in the low region, around the
//! high region, or any u64) or write bytes into RAM.
//!
//! Asserts: every result is exactly what a plain model computes from a
//! plain copy of RAM: a message or text not wholly in RAM is refused with
//! its address, an accepted message's text is the lossy UTF-8 of exactly
//! `text_len` bytes at `text_ptr`, all in RAM, and so on for every kind and
//! error; below the flood limit a fresh `Harness` decodes the same; errors
//! are one line.
#![no_main]

use kjump_abi::abi::{ExceptionArgs, HarnessMsg, MAX_TEXT, MSG_MAGIC, MsgKind, Role};
use kjump_core::harness::{Harness, HarnessError, HarnessEvent, MAX_LOG_MESSAGES};
use kjump_fuzz::{RAM, Ram};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let fill_len = usize::from(u.arbitrary::<u16>()?);
    let fill = u.bytes(fill_len.min(u.len()))?;
    let mut ram = Ram::new(fill);
    let mut h = Harness::new();
    let mut logs = 0u64;
    for _ in 0..64 {
        if u.is_empty() {
            break;
        }
        let high = RAM[1].0;
        match u.int_in_range(0..=4u8)? {
            0 => {
                let at = u64::from(u.arbitrary::<u16>()?);
                let len = u.int_in_range(0..=96)?;
                ram.write(at, u.bytes(len)?);
            }
            1 => decode(&ram, &mut h, &mut logs, u64::from(u.arbitrary::<u16>()?)),
            2 => {
                let off = u.int_in_range(0..=RAM[1].1 + 0x100)?;
                decode(&ram, &mut h, &mut logs, high - 0x80 + off);
            }
            3 => decode(&ram, &mut h, &mut logs, u.arbitrary()?),
            _ => {
                // A message with a text pointer from the input, written
                // at an address from the input.
                let at = u64::from(u.arbitrary::<u16>()?);
                let mut m =
                    HarnessMsg::new(MsgKind::from_u32(u.int_in_range(1..=7)?).expect("1..=7"));
                m.args[0] = u.int_in_range(0..=2)?;
                m.text_ptr = if u.arbitrary()? {
                    u.arbitrary()?
                } else {
                    u64::from(u.arbitrary::<u16>()?)
                };
                m.text_len = if u.arbitrary()? {
                    u.arbitrary()?
                } else {
                    u.int_in_range(0..=MAX_TEXT + 1)?
                };
                ram.write(at, &m.to_bytes());
                decode(&ram, &mut h, &mut logs, at);
            }
        }
    }
    Ok(())
}

fn decode(ram: &Ram, h: &mut Harness, logs: &mut u64, addr: u64) {
    let got = h.decode(&ram.mem, addr);
    let want = model(ram, addr);
    if matches!(want, Ok(HarnessEvent::Log { .. })) {
        *logs += 1;
    }
    assert!(*logs <= MAX_LOG_MESSAGES, "inputs are too short to flood");
    assert_eq!(got, want, "message at {addr:#x}");
    // The state is a log count; below the limit it changes nothing.
    assert_eq!(Harness::new().decode(&ram.mem, addr), got);
    if let Err(e) = got {
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

/// What decoding the message at `addr` must give, from the plain copy.
fn model(ram: &Ram, addr: u64) -> std::result::Result<HarnessEvent, HarnessError> {
    let raw = ram
        .read(addr, HarnessMsg::SIZE)
        .ok_or(HarnessError::MessageOutsideRam { addr })?;
    let msg = HarnessMsg::from_bytes(raw.try_into().expect("88 bytes"));
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
    let (ptr, len) = (msg.text_ptr, msg.text_len);
    let text = if len == 0 {
        String::new()
    } else if len > MAX_TEXT {
        return Err(HarnessError::TextTooLong { addr, len });
    } else {
        let bytes = ram
            .read(ptr, len as usize)
            .ok_or(HarnessError::TextOutsideRam { addr, ptr, len })?;
        String::from_utf8_lossy(bytes).into_owned()
    };
    let a = msg.args;
    Ok(match kind {
        MsgKind::Hello => HarnessEvent::Hello {
            role: match a[0] {
                0 => Role::A,
                1 => Role::B,
                2 => Role::C,
                role => return Err(HarnessError::BadRole { addr, role }),
            },
            text,
        },
        MsgKind::Log => HarnessEvent::Log { text },
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
