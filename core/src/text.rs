//! Guest text made safe to print.
//!
//! Console lines, log lines, panic messages and verdict texts come from the
//! guest, which may be buggy or hostile: raw, an escape sequence would clear
//! the user's screen, set the terminal's title or forge a `kjump: … pass`
//! line, and a newline would break the one-line error promise. Before any of
//! it reaches a terminal (or a one-line error), control characters are
//! written as escapes: ESC as `\x1b`, newline as `\n`, C1 controls and
//! bidirectional overrides as `\u{…}`. [`quote`] also quotes and cuts a
//! message, for the middle of an error line.

use std::borrow::Cow;
use std::fmt::Write as _;

/// How many characters of a guest message an error line quotes.
pub const QUOTE_MAX: usize = 200;

/// Whether `c` must not reach a terminal as is: C0 controls and DEL, C1
/// controls, and the Unicode controls that reorder the text around them
/// (U+200E/F, U+202A–U+202E, U+2066–U+2069: "Trojan Source").
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// `s` with every control character escaped (`\x1b`, `\n`, `\u{9b}`, …);
/// everything else, backslashes included, as is. Borrowed when there is
/// nothing to escape.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` in double quotes, escaped as [`escape`] does and with `\` and `"`
/// escaped too (so the quotes cannot be forged), cut after `max` characters
/// with a marker saying how many were left out: one line, whatever `s` is.
pub fn quote(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 16);
    out.push('"');
    let mut chars = s.chars();
    for c in chars.by_ref().take(max) {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if is_unsafe(c) => push_escaped(&mut out, c),
            c => out.push(c),
        }
    }
    out.push('"');
    let rest = chars.count();
    if rest > 0 {
        let _ = write!(out, "… (cut: {rest} more characters)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_left_alone() {
        let s = "a: cycle 2: back from b, state intact (ü, 0x1f, \\n)";
        assert!(matches!(escape(s), Cow::Borrowed(_)));
        assert_eq!(escape(s), s);
    }

    #[test]
    fn terminal_controls_are_escaped() {
        // Clear the screen, set the title, forge a verdict line.
        let hostile = "\x1b[2J\x1b]0;owned\x07\rkjump: ping-pong: pass\n\t\0\x7f";
        assert_eq!(
            escape(hostile),
            "\\x1b[2J\\x1b]0;owned\\x07\\rkjump: ping-pong: pass\\n\\t\\x00\\x7f"
        );
        // C1 CSI and a right-to-left override.
        assert_eq!(escape("a\u{9b}2Jb\u{202e}c"), "a\\u{9b}2Jb\\u{202e}c");
        assert!(!escape(hostile).chars().any(|c| c.is_control()));
    }

    #[test]
    fn quotes_are_one_line_and_cut_with_a_marker() {
        assert_eq!(quote("oops", QUOTE_MAX), "\"oops\"");
        assert_eq!(quote("say \"hi\" \\", 20), "\"say \\\"hi\\\" \\\\\"");
        let long = "line\n".repeat(1000);
        let q = quote(&long, QUOTE_MAX);
        assert!(!q.contains('\n'), "{q}");
        assert!(q.starts_with("\"line\\nline\\n"), "{q}");
        assert!(q.ends_with("\"… (cut: 4800 more characters)"), "{q}");
        // Cut at characters, not bytes.
        assert_eq!(quote("ééé", 2), "\"éé\"… (cut: 1 more characters)");
    }
}
