//! The progress bar of long runs (indicatif).

use std::io;

/// A progress bar over cycles on stderr; hidden when stderr is not a
/// terminal (CI logs, tests), so that it never mixes into captured output.
#[derive(Debug)]
pub struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    pub fn new(total_cycles: u64) -> Self {
        use std::io::IsTerminal;
        if !io::stderr().is_terminal() {
            return Self::hidden();
        }
        let bar = indicatif::ProgressBar::new(total_cycles);
        let style = indicatif::ProgressStyle::with_template(
            "{spinner} cycle {pos}/{len} [{bar:30}] {elapsed_precise} eta {eta} {msg}",
        )
        .expect("the template is valid")
        .progress_chars("=> ");
        bar.set_style(style);
        Self { bar }
    }

    pub fn hidden() -> Self {
        Self {
            bar: indicatif::ProgressBar::hidden(),
        }
    }

    pub fn is_hidden(&self) -> bool {
        self.bar.is_hidden()
    }

    /// Cycles completed so far.
    pub fn set_cycle(&self, n: u64) {
        self.bar.set_position(n);
    }

    pub fn set_message(&self, msg: impl Into<String>) {
        self.bar.set_message(msg.into());
    }

    /// Runs `f` (e.g. printing a line) with the bar cleared.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_hidden_without_a_terminal() {
        // `cargo test` captures stderr through a pipe.
        use std::io::IsTerminal;
        let p = Progress::new(10);
        assert_eq!(p.is_hidden(), !io::stderr().is_terminal());
        p.set_cycle(3);
        p.finish();
    }
}
