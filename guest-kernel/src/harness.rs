//! The harness-port client (see `kjump_abi::abi`): every message is an
//! `out dx, eax` of its physical address on `HARNESS_PORT`. Messages and
//! their text live in the kernel's image (statics, stack), which is
//! identity-mapped below 4 GiB, so a virtual address is the physical one.

use core::arch::asm;
use core::fmt;

use kjump_abi::abi::{HARNESS_PORT, HarnessMsg, MAX_TEXT, MsgKind, Role};

use crate::sync::Exclusive;

/// A text buffer the size of the harness's formatting buffer, for callers
/// that build a message's text themselves (`core::fmt::Write`, truncating).
pub type TextBuf = kjump_abi::textbuf::TextBuf<1024>;

/// Formatting buffer for messages with formatted text.
static TEXT: Exclusive<TextBuf> = Exclusive::new(TextBuf::new());

/// The physical address of a kernel object, checked to fit the port's 32 bits.
fn phys32<T: ?Sized>(p: *const T) -> u32 {
    let addr = p.cast::<u8>() as u64;
    u32::try_from(addr).expect("harness messages live below 4 GiB (identity-mapped kernel memory)")
}

/// Sends a message. The VMM reads it (and its text) during the `out`; the
/// buffers may be reused once this returns.
pub fn send(msg: &HarnessMsg) {
    let ptr = core::ptr::from_ref(msg);
    phys32(ptr);
    // SAFETY: `out` hands the VMM the address of `msg` (checked to fit in
    // eax), which stays borrowed, alive and unchanged, until the instruction
    // completes; the VMM only reads guest memory for it. The pointer itself
    // is the operand and there is no `nomem`, so the compiler has written
    // the message (and its text) to memory before the `out`.
    unsafe {
        asm!("out dx, eax", in("dx") HARNESS_PORT, in("rax") ptr, options(nostack, preserves_flags))
    };
}

/// Sends a message of `kind` with `args` and `text` (cut to `MAX_TEXT`, at a
/// character boundary: the VMM wants UTF-8).
pub fn send_text(kind: MsgKind, args: [u64; 8], text: &str) {
    let mut len = text.len().min(MAX_TEXT as usize);
    while !text.is_char_boundary(len) {
        len -= 1;
    }
    let mut msg = HarnessMsg::new(kind);
    msg.args = args;
    if len > 0 {
        msg.text_ptr = u64::from(phys32(text.as_ptr()));
        msg.text_len = len as u64;
    }
    send(&msg);
}

/// Sends a message whose text is formatted into the shared buffer.
pub fn send_fmt(kind: MsgKind, args: [u64; 8], text: fmt::Arguments<'_>) {
    TEXT.with(|buf| send_text(kind, args, buf.format(text)));
}

/// First message of a kernel: its role.
pub fn hello(role: Role) {
    send_fmt(
        MsgKind::Hello,
        [role as u64, 0, 0, 0, 0, 0, 0, 0],
        format_args!("kjump guest kernel {}", role.name()),
    );
}

/// A line of log text for the report.
#[allow(dead_code, reason = "API for the kexec scenarios (kernel/kexec.rs)")]
pub fn log(text: &str) {
    send_text(MsgKind::Log, [0; 8], text);
}

/// A formatted line of log text for the report.
#[allow(dead_code, reason = "API for the kexec scenarios (kernel/kexec.rs)")]
pub fn log_fmt(text: fmt::Arguments<'_>) {
    send_fmt(MsgKind::Log, [0; 8], text);
}

/// `cycles` cycles are done.
#[allow(dead_code, reason = "API for the kexec scenarios (kernel/kexec.rs)")]
pub fn progress(cycles: u64) {
    send_text(MsgKind::Progress, [cycles, 0, 0, 0, 0, 0, 0, 0], "");
}

/// The scenario's outcome (the VMM ends the run on it).
pub fn verdict(pass: bool, text: &str) {
    send_text(
        MsgKind::Verdict,
        [u64::from(!pass), 0, 0, 0, 0, 0, 0, 0],
        text,
    );
}

/// The scenario's outcome, with formatted text.
pub fn verdict_fmt(pass: bool, text: fmt::Arguments<'_>) {
    send_fmt(
        MsgKind::Verdict,
        [u64::from(!pass), 0, 0, 0, 0, 0, 0, 0],
        text,
    );
}

/// A panic: `text` is `file:line: message`, `line` goes in `args[0]`.
pub fn panic_msg(line: u32, text: &str) {
    send_text(MsgKind::Panic, [u64::from(line), 0, 0, 0, 0, 0, 0, 0], text);
}

/// The kimage the kernel is about to jump with (indices: `abi::KimageArgs`).
#[allow(dead_code, reason = "API for the kexec scenarios (kernel/kexec.rs)")]
pub fn kimage(args: [u64; 8]) {
    send_text(MsgKind::Kimage, args, "");
}

/// A message whose text pointer is far outside guest RAM (the
/// `wild-pointer` fault): the VMM must refuse it as a protocol error.
pub fn wild_pointer() {
    let mut msg = HarnessMsg::new(MsgKind::Log);
    msg.text_ptr = 0xdead_beef_0000;
    msg.text_len = 16;
    send(&msg);
}
