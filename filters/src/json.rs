//! JSON text written by hand where a serializer would cost more than the work around it:
//! the audit record's entry text and the per-request access-log line.

/// Non-zero when a byte of the (little-endian) word `v` is below 0x20, or a `"`, or a `\`.
/// (The usual bit tricks: `v - n·ONES & !v & HIGH` marks bytes below `n` for n ≤ 0x80; a
/// byte equal to `c` is a zero byte of `v ^ c·ONES`.) It may flag a byte after a flagged
/// one, never miss one — so a word is flagged exactly when it holds such a byte.
fn special(v: u64) -> u64 {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    let below = |v: u64, n: u64| v.wrapping_sub(n * ONES) & !v & HIGH;
    below(v, 0x20) | below(v ^ (u64::from(b'"') * ONES), 1) | below(v ^ (u64::from(b'\\') * ONES), 1)
}

/// Whether a byte must be escaped in a JSON string: `"`, `\` or a control character.
fn escaped(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Appends `text` as a JSON string: quotes, backslashes and control characters (as
/// `\u00XX`) escaped, everything else (UTF-8 included) as it is. Nearly every field needs no
/// escape at all: it is checked eight bytes at a time and copied whole.
#[inline]
pub fn push_string(out: &mut String, text: &str) {
    if needs_escaping(text.as_bytes()) {
        return push_escaped(out, text);
    }
    out.reserve(text.len() + 2);
    push_plain_string(out, text);
}

/// Appends `text` as a JSON string with no check: for a text the caller knows holds no
/// byte to escape (see [`needs_escaping`]); with one, the result is not JSON.
#[inline]
pub fn push_plain_string(out: &mut String, text: &str) {
    out.push('"');
    out.push_str(text);
    out.push('"');
}

/// [`push_string`] for a text that holds a byte to escape.
#[cold]
fn push_escaped(out: &mut String, text: &str) {
    out.push('"');
    let mut clean = 0;
    for (i, b) in text.bytes().enumerate() {
        if escaped(b) {
            // `i` is at an ASCII byte, so a character boundary.
            out.push_str(text.get(clean..i).unwrap_or_default());
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.push_str("\\u00");
                    out.push(char::from(HEX[usize::from(b >> 4)]));
                    out.push(char::from(HEX[usize::from(b & 0xf)]));
                }
            }
            clean = i + 1;
        }
    }
    out.push_str(text.get(clean..).unwrap_or_default());
    out.push('"');
}

/// Whether any byte is `"`, `\` or a control character, a word at a time: the words are
/// or-ed together without a branch each (fields are short), and the bytes after the last
/// whole word are checked as the last eight bytes again (a byte checked twice changes
/// nothing) — or one by one in a text shorter than a word.
pub fn needs_escaping(bytes: &[u8]) -> bool {
    // `try_from` of an eight-byte slice cannot fail: a whole word is one load.
    let word = |w: &[u8]| special(u64::from_le_bytes(<[u8; 8]>::try_from(w).unwrap_or_default()));
    let mut words = bytes.chunks_exact(8);
    let mut found = 0;
    for w in &mut words {
        found |= word(w);
    }
    if !words.remainder().is_empty() {
        match bytes.len().checked_sub(8) {
            Some(from) => found |= word(bytes.get(from..).unwrap_or_default()),
            None => return bytes.iter().copied().any(escaped),
        }
    }
    found != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_special_byte_is_escaped_wherever_it_falls_in_the_eight_byte_steps() {
        // Each of the bytes that need escaping, and some that do not, at every position
        // of strings up to 24 bytes (three steps), among plain text and multi-byte UTF-8.
        for odd in ["\"", "\\", "\u{0}", "\u{1f}", "\n", " ", "\u{7f}", "é", "漢"] {
            for len in 0..24 {
                for at in 0..=len {
                    let text = format!("{}{odd}{}", "a".repeat(at), "b".repeat(len - at));
                    let mut out = String::new();
                    push_string(&mut out, &text);
                    let back: String = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
                    assert_eq!(back, text);
                    assert!(!out.bytes().any(|b| b < 0x20), "{out:?} holds a raw control byte");
                }
            }
        }
    }

    #[test]
    fn a_text_needs_escaping_exactly_when_a_byte_of_it_does_at_any_length_and_position() {
        // Lengths around the word size and its multiples, where the last word is read
        // again (overlapping) or padded.
        for odd in [b'"', b'\\', 0, 0x1f, b'\n', b' ', 0x7f, 0xc3, b'a'] {
            for len in (1..26).chain(30..100) {
                for at in 0..len {
                    let mut text = vec![b'x'; len];
                    text[at] = odd;
                    let plain = odd < 0x20 || odd == b'"' || odd == b'\\';
                    assert_eq!(needs_escaping(&text), plain, "{odd:#x} at {at} of {len}");
                }
            }
        }
        assert!(!needs_escaping(b""));
    }

    #[test]
    fn the_word_at_a_time_check_agrees_with_a_byte_at_a_time_one() {
        let plain = |bytes: &[u8]| bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        // Every byte value at every position of a word, among bytes that are one away from
        // those that need escaping (0x1f/0x20, 0x21/0x22/0x23, 0x5b/0x5c/0x5d) and bytes with
        // the top bit set (UTF-8), where a borrow could mislead the check. A flagged word
        // must hold a byte that needs escaping, and a word holding one must be flagged.
        let fillers = [b'a', 0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xa2, 0xdc, 0xff];
        for at in 0..8 {
            for filler in fillers {
                for b in 0..=255u8 {
                    let mut word = [filler; 8];
                    word[at] = b;
                    assert_eq!(special(u64::from_le_bytes(word)) != 0, plain(&word), "{word:x?}");
                }
            }
        }
    }
}
