//! A `log::Log` onto the UART: `[LEVEL] message`, one line per record. The
//! level comes from `kjump.log=` (error, warn, info, debug, trace; default
//! info).

use log::{LevelFilter, Log, Metadata, Record};

use crate::println;

struct UartLogger;

static LOGGER: UartLogger = UartLogger;

impl Log for UartLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            println!("[{:<5}] {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger with the level named by `level` (`kjump.log=`).
/// Returns false (and keeps `info`) when the name is unknown.
pub fn init(level: Option<&str>) -> bool {
    let (filter, known) = match level.map(str::parse::<LevelFilter>) {
        None => (LevelFilter::Info, true),
        Some(Ok(f)) => (f, true),
        Some(Err(_)) => (LevelFilter::Info, false),
    };
    // set_logger only fails when a logger is already set: keep that one.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(filter);
    known
}
