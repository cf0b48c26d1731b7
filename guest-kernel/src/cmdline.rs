//! The kernel command line: `key=value` words separated by spaces, as
//! `kjump.role=a kjump.scenario=ping-pong kjump.cycles=100
//! kexec_jump_back_entry=0x1000`.

/// Looks up the value of `key` (the last occurrence wins, as in Linux).
pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .last()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_flags() {
        let c = "kjump.role=a  kjump.cycles=100 quiet kjump.role=b kexec_jump_back_entry=0x1f000";
        assert_eq!(get(c, "kjump.role"), Some("b"));
        assert_eq!(get(c, "kjump.cycles").and_then(parse_u64), Some(100));
        assert_eq!(get(c, "kexec_jump_back_entry").and_then(parse_u64), Some(0x1f000));
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
}
