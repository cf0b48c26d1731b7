//! A fixed-size text buffer for `core::fmt` output that truncates instead of
//! failing: the guest formats harness messages, panics and exception reports
//! into static buffers of this type (no heap), and a message that is too long
//! must still be reported, cut short.

use core::fmt;

/// Up to `N` bytes of UTF-8 text; writes past the end are dropped at a
/// character boundary and remembered in [`TextBuf::truncated`].
#[derive(Clone, Copy)]
pub struct TextBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
    truncated: bool,
}

impl<const N: usize> Default for TextBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> TextBuf<N> {
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            truncated: false,
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.truncated = false;
    }

    pub fn as_str(&self) -> &str {
        // Only whole characters of `&str`s are ever copied in.
        core::str::from_utf8(&self.buf[..self.len]).expect("TextBuf holds whole UTF-8 characters")
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when some text did not fit.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Formats `args` into the cleared buffer and returns the text.
    pub fn format(&mut self, args: fmt::Arguments<'_>) -> &str {
        self.clear();
        // Our `write_str` never fails; a `Display` impl that does only cuts
        // the text short.
        let _ = fmt::write(self, args);
        self.as_str()
    }
}

impl<const N: usize> fmt::Write for TextBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        self.truncated |= take < s.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_truncates_at_char_boundaries() {
        let mut b = TextBuf::<8>::new();
        assert_eq!(b.format(format_args!("{}:{}", "ab", 12)), "ab:12");
        assert!(!b.truncated());
        // "é" is two bytes: 7 bytes of ASCII leave room for one byte only.
        assert_eq!(b.format(format_args!("1234567é!")), "1234567");
        assert!(b.truncated());
        assert_eq!(b.len(), 7);
        assert_eq!(b.format(format_args!("{}", "0123456789")), "01234567");
        b.clear();
        assert!(b.is_empty() && !b.truncated());
    }
}
