//! Text that came from outside the process (plugins, ZooKeeper nodes, the API's answers),
//! made safe to log or print: [`one_line`] escapes every character that could start a new
//! line, move the cursor, recolour a terminal or reorder what a reader sees, so that one
//! message is always exactly one line and says what it says.

use std::{borrow::Cow, fmt::Write};

/// `text` with every control character (C0, DEL, C1: newline, CR, ESC, NEL, …), line and
/// paragraph separator (U+2028/2029) and bidirectional formatting character (U+061C,
/// U+200E/200F, U+202A–202E, U+2066–2069) written as an escape: `\n`, `\r`, `\t`, else
/// `\u{1b}`. Borrowed when nothing needed escaping (the common case costs one scan).
pub fn one_line(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`one_line`], cut to at most `max` bytes (on a character boundary) with ` [truncated]`
/// after the cut. The cut is made before escaping, so the result may be longer than `max`
/// by the escapes' length: at most 6 times for a message of nothing but escapes.
pub fn one_line_bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return one_line(text).into_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = one_line(&text[..end]).into_owned();
    out.push_str(" [truncated]");
    out
}

/// A URL with the password of its user part replaced by `***`.
pub use fleetmeter_serve::redact_url;

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_hidden() {
        assert_eq!(
            redact_url("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("https://fleet:hunter2@api.example/"),
            "https://fleet:***@api.example/"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:4000/"),
            "http://127.0.0.1:4000/"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        let text = "sensor ready: 21.5 °C, \\n stays as typed";
        assert!(matches!(one_line(text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn a_forged_log_line_stays_on_one_line() {
        let forged = "ok\n2026-01-01T00:00:00Z ERROR fleetmeter: leader lost\r\x1b[2K\x1b[31mred";
        let escaped = one_line(forged);
        assert_eq!(
            escaped,
            "ok\\n2026-01-01T00:00:00Z ERROR fleetmeter: leader lost\\r\\u{1b}[2K\\u{1b}[31mred"
        );
        assert!(!escaped.chars().any(char::is_control));
    }

    #[test]
    fn separators_c1_and_bidi_controls_are_escaped() {
        assert_eq!(one_line("a\u{2028}b\u{85}c"), "a\\u{2028}b\\u{85}c");
        assert_eq!(one_line("x\u{202e}gnp.exe"), "x\\u{202e}gnp.exe");
        assert_eq!(one_line("\0\x7f\t"), "\\u{0}\\u{7f}\\t");
    }

    #[test]
    fn bounded_cuts_on_a_char_boundary_then_escapes() {
        assert_eq!(one_line_bounded("short", 10), "short");
        assert_eq!(one_line_bounded("ééé", 3), "é [truncated]");
        assert_eq!(one_line_bounded("a\nbcdef", 3), "a\\nb [truncated]");
    }
}
