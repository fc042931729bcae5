//! Names probe shows come from other people's processes: a thread names
//! itself (`prctl(PR_SET_NAME)`), a program picks its symbols and paths.
//! Written raw, an escape sequence in one would drive root's terminal, and a
//! newline would split a table row. Every name is made visible here, once,
//! where it enters probe, so that every output (text, live view, metrics,
//! timeline, JSON) shows the same safe text.

use std::fmt::Write;

/// `text` with control characters as `\xNN` (and `\` as `\\`, so that the
/// result reads back unambiguously); other text unchanged.
pub fn visible(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => shown.push_str("\\\\"),
            // C0, DEL and C1: the 8-bit escape introducers among them.
            c if c.is_control() => {
                let _ = write!(shown, "\\x{:02x}", u32::from(c));
            }
            c => shown.push(c),
        }
    }
    shown
}

/// Bytes that should be text (invalid UTF-8 shown as U+FFFD), made visible.
pub fn visible_bytes(bytes: &[u8]) -> String {
    visible(&String::from_utf8_lossy(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(visible("worker-1"), "worker-1");
        assert_eq!(visible("\x1b]0;owned\x07"), "\\x1b]0;owned\\x07");
        assert_eq!(visible("a\nb\tc\u{9b}2J"), "a\\x0ab\\x09c\\x9b2J");
        assert_eq!(visible("C:\\x1b"), "C:\\\\x1b");
        assert_eq!(visible_bytes(b"\xff\x1b[?1049l"), "\u{fffd}\\x1b[?1049l");
    }
}
