//! Bounds on text a caller controls: what is stored is cut to a limit, and what an error
//! quotes back is a short prefix (a 10 KB bad name must not become a 10 KB gRPC status,
//! which is over the 8 KB metadata limit and reaches the client as RESOURCE_EXHAUSTED).

/// Longest reason or message kept from a caller (cancel reasons, executor failure messages):
/// it is copied into every task it names and every event, so a few KiB at most.
pub const MAX_REASON_BYTES: usize = 4096;

/// Most characters of a caller's value an error message quotes.
pub const MAX_QUOTED_CHARS: usize = 64;

/// At most `max_bytes` of `s` (cut at a character boundary, then marked with `…`).
pub fn truncate(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_string();
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `s` quoted for an error message: its first [`MAX_QUOTED_CHARS`] characters, then `…`
/// and the full length when it was cut.
pub fn quote(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        None => format!("{s:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &s[..end], s.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_short_text_and_cuts_long_text_at_a_character_boundary() {
        assert_eq!(truncate("short", 10), "short");
        let long = "é".repeat(1000);
        let cut = truncate(&long, 101);
        assert!(cut.len() <= 101 + "…".len(), "{} bytes", cut.len());
        assert!(cut.ends_with('…') && cut.starts_with("éé"));
    }

    #[test]
    fn quoting_a_long_value_keeps_a_short_prefix_and_says_how_long_it_was() {
        assert_eq!(quote("abc"), "\"abc\"");
        let long = "x".repeat(10_000);
        let q = quote(&long);
        assert!(q.len() < 100, "{q}");
        assert!(q.starts_with(&format!("\"{}\"…", "x".repeat(MAX_QUOTED_CHARS))) && q.ends_with("(10000 bytes)"), "{q}");
    }
}
