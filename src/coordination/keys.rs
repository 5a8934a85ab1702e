//! Key segments: names placed between `/` in etcd keys (flows, topics, members, groups) are percent-encoded here,
//! so the coordination and checkpoint keys share one encoding.
//!
//! Invariant: an encoded segment never holds `/`, and decoding it gives back exactly the name encoded, so one
//! name's key never falls under another name's prefix nor parses as another key.

use std::fmt::Write as _;

/// `segment` with every byte outside `A-Z a-z 0-9 - . _ ~` as `%XX`, so it never holds `/`.
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The inverse of [`encode_segment`]; `None` for a malformed escape or bytes that are not UTF-8.
pub fn decode_segment(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = segment.get(at + 1..at + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_and_never_hold_a_slash() {
        for name in ["east-to-west", "a.b_c~d", "team a/orders", "100%", "ünï/cödé", ""] {
            let encoded = encode_segment(name);
            assert!(!encoded.contains('/'), "{encoded}");
            assert_eq!(decode_segment(&encoded).as_deref(), Some(name));
        }
        assert_eq!(encode_segment("east-to-west"), "east-to-west", "valid flow names stay readable");
        assert_eq!(decode_segment("%2"), None);
        assert_eq!(decode_segment("%zz"), None);
        assert_eq!(decode_segment("%FF"), None, "not UTF-8");
    }
}
