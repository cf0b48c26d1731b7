//! The guest console: a 16550 UART at 0x3f8 (vm-superio) whose output is cut
//! into lines and printed with the guest's name in front, `[a] text`.
//!
//! Output goes to stdout, or into a shared buffer ([`ConsoleSink::capture`])
//! so that tests read what the guest printed without a terminal.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};

use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

use kjump_core::text::escape;

/// First port of the UART (COM1).
pub const SERIAL_PORT: u16 = 0x3f8;
/// One past its last port.
pub const SERIAL_PORT_END: u16 = 0x400;

/// A line longer than this is printed in pieces (a guest that never sends a
/// newline must not grow the VMM's memory).
pub const MAX_LINE: usize = 4096;

/// Where console lines go.
#[derive(Clone, Debug, Default)]
pub enum ConsoleSink {
    /// Printed on the VMM's stdout.
    #[default]
    Stdout,
    /// Kept in memory, each line with its `[name] ` prefix.
    Capture(Arc<Mutex<Vec<String>>>),
    /// Dropped (`-q`).
    Discard,
}

impl ConsoleSink {
    /// A capturing sink and the buffer it fills.
    pub fn capture() -> (Self, Arc<Mutex<Vec<String>>>) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        (Self::Capture(buf.clone()), buf)
    }

    fn emit(&self, line: String) {
        match self {
            Self::Stdout => {
                // A closed stdout (`kjump | head`) must not end the run.
                let _ = writeln!(io::stdout().lock(), "{line}");
            }
            Self::Capture(buf) => buf
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line),
            Self::Discard => {}
        }
    }
}

/// The UART's output side: collects bytes into lines.
#[derive(Debug)]
pub struct ConsoleWriter {
    name: String,
    sink: ConsoleSink,
    line: Vec<u8>,
}

impl ConsoleWriter {
    pub fn new(name: &str, sink: ConsoleSink) -> Self {
        Self {
            name: name.to_owned(),
            sink,
            line: Vec::new(),
        }
    }

    pub fn set_name(&mut self, name: &str) {
        name.clone_into(&mut self.name);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Prints what is left of an unfinished line.
    pub fn flush_line(&mut self) {
        if !self.line.is_empty() {
            self.emit_line();
        }
    }

    /// Prints the collected line, its control characters escaped (the
    /// guest must not drive the user's terminal).
    fn emit_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let line = format!("[{}] {}", self.name, escape(&text));
        self.line.clear();
        self.sink.emit(line);
    }

    fn push(&mut self, b: u8) {
        match b {
            // A line that was only "\r\n" is still a line.
            b'\n' => self.emit_line(),
            b'\r' => {}
            _ => {
                self.line.push(b);
                if self.line.len() >= MAX_LINE {
                    self.flush_line();
                }
            }
        }
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.push(b);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Lines are emitted whole; vm-superio flushes after every byte.
        Ok(())
    }
}

impl Drop for ConsoleWriter {
    fn drop(&mut self) {
        self.flush_line();
    }
}

/// The UART has no interrupt line in kjump (no irqchip): the guest polls.
#[derive(Debug, Default)]
pub struct NoInterrupt;

impl Trigger for NoInterrupt {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The COM1 device.
pub struct Console {
    uart: Serial<NoInterrupt, NoEvents, ConsoleWriter>,
}

impl Console {
    pub fn new(name: &str, sink: ConsoleSink) -> Self {
        Self {
            uart: Serial::new(NoInterrupt, ConsoleWriter::new(name, sink)),
        }
    }

    /// Handles an `in` from `port` (inside `SERIAL_PORT..SERIAL_PORT_END`).
    /// Every byte of a wider or repeated access reads the same register.
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        let offset = (port - SERIAL_PORT) as u8;
        for b in data {
            *b = self.uart.read(offset);
        }
    }

    /// Handles an `out` to `port`.
    pub fn write(&mut self, port: u16, data: &[u8]) {
        let offset = (port - SERIAL_PORT) as u8;
        for &b in data {
            // Only the output writer can fail, and ours does not.
            if let Err(e) = self.uart.write(offset, b) {
                log::warn!("serial write failed: {e}");
            }
        }
    }

    pub fn state(&self) -> SerialState {
        self.uart.state()
    }

    /// Replaces the UART's registers, keeping its output.
    pub fn set_state(
        &mut self,
        state: &SerialState,
    ) -> Result<(), vm_superio::serial::Error<io::Error>> {
        // `Serial` has no setter: rebuild it around the same writer. The
        // state's FIFO is checked first so that a bad state leaves the UART
        // as it was.
        Serial::from_state(state, NoInterrupt, NoEvents, io::sink())?;
        let placeholder = Serial::new(NoInterrupt, ConsoleWriter::new("", ConsoleSink::Stdout));
        let writer = std::mem::replace(&mut self.uart, placeholder).into_writer();
        self.uart = Serial::from_state(state, NoInterrupt, NoEvents, writer)
            .expect("the state was accepted a moment ago");
        Ok(())
    }

    pub fn set_name(&mut self, name: &str) {
        self.uart.writer_mut().set_name(name);
    }

    pub fn name(&self) -> &str {
        self.uart.writer().name()
    }

    /// Prints an unfinished last line.
    pub fn flush(&mut self) {
        self.uart.writer_mut().flush_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u16 = SERIAL_PORT;
    const IER: u16 = SERIAL_PORT + 1;
    const FCR: u16 = SERIAL_PORT + 2;
    const LCR: u16 = SERIAL_PORT + 3;
    const MCR: u16 = SERIAL_PORT + 4;
    const LSR: u16 = SERIAL_PORT + 5;
    const SCR: u16 = SERIAL_PORT + 7;

    fn lines(buf: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
        buf.lock().unwrap().clone()
    }

    #[test]
    fn output_is_split_into_prefixed_lines() {
        let (sink, buf) = ConsoleSink::capture();
        let mut c = Console::new("a", sink);
        c.write(THR, b"hello\r\nwor");
        assert_eq!(lines(&buf), ["[a] hello"]);
        c.write(THR, b"ld\n\n");
        c.set_name("b");
        c.write(THR, b"from b");
        assert_eq!(lines(&buf), ["[a] hello", "[a] world", "[a] "]);
        c.flush();
        assert_eq!(lines(&buf).last().unwrap(), "[b] from b");
        c.write(THR, &[0xff, b'x', b'\n']);
        assert_eq!(lines(&buf).last().unwrap(), "[b] \u{fffd}x");
    }

    #[test]
    fn control_characters_are_escaped() {
        let (sink, buf) = ConsoleSink::capture();
        let mut c = Console::new("a", sink);
        // Clear the screen, set the title, then a forged verdict line.
        c.write(THR, b"\x1b[2J\x1b]0;owned\x07kjump: ping-pong: pass\x9b\n");
        c.write(THR, "bidi \u{202e}olleh\n".as_bytes());
        assert_eq!(
            lines(&buf),
            [
                "[a] \\x1b[2J\\x1b]0;owned\\x07kjump: ping-pong: pass\u{fffd}",
                "[a] bidi \\u{202e}olleh"
            ]
        );
    }

    #[test]
    fn endless_lines_are_cut() {
        let (sink, buf) = ConsoleSink::capture();
        let mut c = Console::new("a", sink);
        c.write(THR, &vec![b'x'; MAX_LINE * 2 + 1]);
        assert_eq!(lines(&buf).len(), 2);
        drop(c);
        assert_eq!(
            lines(&buf).len(),
            3,
            "the rest is printed when the console goes"
        );
    }

    #[test]
    fn the_guests_uart_init_sequence_is_accepted() {
        let (sink, buf) = ConsoleSink::capture();
        let mut c = Console::new("a", sink);
        // What a 16550 driver writes: IER off, DLAB, divisor, 8N1, FIFO, MCR.
        c.write(IER, &[0x00]);
        c.write(LCR, &[0x80]);
        c.write(THR, &[0x01]); // DLL
        c.write(IER, &[0x00]); // DLM
        c.write(LCR, &[0x03]);
        c.write(FCR, &[0xc7]);
        c.write(MCR, &[0x0b]);
        c.write(SCR, &[0x5a]);
        let mut b = [0u8];
        c.read(SCR, &mut b);
        assert_eq!(b[0], 0x5a);
        c.read(LSR, &mut b);
        assert_ne!(b[0] & 0x20, 0, "transmitter empty");
        let s = c.state();
        assert_eq!(
            (s.baud_divisor_low, s.line_control, s.modem_control),
            (1, 3, 0x0b)
        );
        // The divisor bytes did not reach the console.
        c.write(THR, b"ok\n");
        assert_eq!(lines(&buf), ["[a] ok"]);
    }

    #[test]
    fn loopback_self_test_works() {
        let (sink, buf) = ConsoleSink::capture();
        let mut c = Console::new("a", sink);
        c.write(MCR, &[0x1e]); // loopback
        c.write(THR, &[0xae]);
        let mut b = [0u8];
        c.read(THR, &mut b);
        assert_eq!(b[0], 0xae);
        c.write(MCR, &[0x0f]);
        assert!(lines(&buf).is_empty());
    }

    #[test]
    fn state_can_be_replaced_behind_the_guests_back() {
        let (sink, buf) = ConsoleSink::capture();
        let mut c = Console::new("a", sink);
        c.write(THR, b"par");
        let mut s = c.state();
        s.scratch = 0x42;
        s.line_control = 0x1b;
        c.set_state(&s).unwrap();
        assert_eq!(c.state().scratch, 0x42);
        c.write(THR, b"t\n");
        assert_eq!(
            lines(&buf),
            ["[a] part"],
            "the writer and its half line survive"
        );
        s.in_buffer = vec![0; 1000];
        assert!(c.set_state(&s).is_err());
        assert_eq!(c.state().scratch, 0x42);
    }
}
