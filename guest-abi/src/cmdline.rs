//! The kernel command line: `key=value` words separated by spaces, as
//! `kjump.role=a kjump.scenario=ping-pong kjump.cycles=100
//! kexec_jump_back_entry=0x1000`.

// The keys the VMM puts on kernel A's command line and the kernels read
// (A passes them on to B, the VMM to a restore kernel C). Those of one
// scenario or one facility live with it: `fault::KEY`,
// `vmcore::CRASHKERNEL_KEY`, `vmcore::BACKUP_SIZE_KEY`,
// `virtio::CMDLINE_KEY`.

/// The kernel's role: `a`, `b` or `c`.
pub const ROLE_KEY: &str = "kjump.role";
/// The scenario (`ping-pong`, `hibernate`, ...).
pub const SCENARIO_KEY: &str = "kjump.scenario";
/// How many A→B→A cycles.
pub const CYCLES_KEY: &str = "kjump.cycles";
/// How B is kept off A's memory: `swap` or `backup`.
pub const MODE_KEY: &str = "kjump.mode";
/// The size of B's region (a size: `64M`).
pub const PEER_MEM_KEY: &str = "kjump.peer_mem";
/// The guest's log level.
pub const LOG_KEY: &str = "kjump.log";

/// Looks up the value of `key` (the last occurrence wins, as in Linux).
pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .rev()
        .filter_map(|w| w.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// True when the bare word `flag` (or `flag=…`) is present.
pub fn has(cmdline: &str, flag: &str) -> bool {
    cmdline
        .split_ascii_whitespace()
        .any(|w| w == flag || w.split_once('=').is_some_and(|(k, _)| k == flag))
}

/// Parses a number: decimal, or hexadecimal with `0x`.
pub fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Parses a size: a number with an optional `K`, `M` or `G` suffix.
pub fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    parse_u64(num)?.checked_mul(1u64 << shift)
}

/// Why the bytes at `cmd_line_ptr` are not a usable command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdlineError {
    /// No NUL within this many bytes.
    NotTerminated(usize),
    /// Not UTF-8: the first bad byte is at this offset.
    NotUtf8(usize),
}

impl core::fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotTerminated(n) => write!(f, "command line has no NUL within {n} bytes"),
            Self::NotUtf8(o) => write!(f, "command line is not UTF-8 (bad byte at offset {o})"),
        }
    }
}

/// The command line in `buf` up to its NUL (the zero page points at a
/// NUL-terminated string; `buf` is the most the kernel is willing to read).
pub fn from_nul_terminated(buf: &[u8]) -> Result<&str, CmdlineError> {
    let len = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(CmdlineError::NotTerminated(buf.len()))?;
    core::str::from_utf8(&buf[..len]).map_err(|e| CmdlineError::NotUtf8(e.valid_up_to()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_flags() {
        let c = "kjump.role=a  kjump.cycles=100 quiet kjump.role=b kexec_jump_back_entry=0x1f000";
        assert_eq!(get(c, "kjump.role"), Some("b"));
        assert_eq!(get(c, "kjump.cycles").and_then(parse_u64), Some(100));
        assert_eq!(
            get(c, "kexec_jump_back_entry").and_then(parse_u64),
            Some(0x1f000)
        );
        assert_eq!(get(c, "kjump"), None);
        assert!(has(c, "quiet"));
        assert!(has(c, "kjump.cycles"));
        assert!(!has(c, "kjump.cycle"));
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("0x1000"), Some(4096));
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999G"), None);
    }

    #[test]
    fn reads_nul_terminated_utf8() {
        assert_eq!(
            from_nul_terminated(b"kjump.role=b\0garbage"),
            Ok("kjump.role=b")
        );
        assert_eq!(from_nul_terminated(b"\0"), Ok(""));
        assert_eq!(
            from_nul_terminated(b"abc"),
            Err(CmdlineError::NotTerminated(3))
        );
        assert_eq!(
            from_nul_terminated(b"ab\xffc\0"),
            Err(CmdlineError::NotUtf8(2))
        );
    }
}
