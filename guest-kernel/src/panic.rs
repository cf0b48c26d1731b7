//! The panic handler: `file:line: message` on the UART and through the
//! harness port, then the CPU stops. A panic while panicking (in the
//! formatting, or in the harness client) only halts.

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use kjump_abi::textbuf::TextBuf;

use crate::println;
use crate::sync::Exclusive;
use crate::{cpu, harness};

static PANICKING: AtomicBool = AtomicBool::new(false);
/// The message text (used once, see `PANICKING`).
static TEXT: Exclusive<TextBuf<1024>> = Exclusive::new(TextBuf::new());

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    if PANICKING.swap(true, Ordering::Relaxed) {
        cpu::halt_forever();
    }
    let (file, line) = info
        .location()
        .map_or(("<unknown>", 0), |l| (l.file(), l.line()));
    TEXT.with(|buf| {
        buf.format(format_args!("{file}:{line}: {}", info.message()));
        let text = buf.as_str();
        println!(
            "panic: {text}{}",
            if buf.truncated() { " [truncated]" } else { "" }
        );
        harness::panic_msg(line, text);
    });
    cpu::halt_forever()
}
