//! [`JsonLine`]: bytes proven to be one JSON value, compacted to one line.

use serde::Serialize;

use crate::{MiniStoreError, Result};

/// One JSON value as compact text without a newline: exactly what a journal line holds.
///
/// Build it from untrusted bytes with [`JsonLine::from_slice`] (which validates and strips
/// insignificant whitespace, keeping every token byte-for-byte, so numbers keep their exact
/// text) or from any `Serialize` value with [`JsonLine::from_value`]; append it with
/// [`MiniStore::append_json`](crate::MiniStore::append_json).
///
/// ```
/// use ministore::JsonLine;
///
/// let line = JsonLine::from_slice(b"{\n  \"user\": \"alice\",\n  \"amount\": 1.50\n}\n").unwrap();
/// assert_eq!(line.as_str(), r#"{"user":"alice","amount":1.50}"#);
///
/// assert!(JsonLine::from_slice(b"{\"user\": }").is_err());
/// assert!(JsonLine::from_slice(b"1 2").is_err()); // two values, not one
/// assert!(JsonLine::from_slice(b"").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonLine(String);

impl JsonLine {
    /// Validates that `bytes` are exactly one JSON value (UTF-8, surrounding whitespace
    /// allowed) and returns it compacted to a single line.
    ///
    /// # Errors
    /// [`MiniStoreError::InvalidJson`] with serde_json's description of the first problem
    /// (line and column), for anything else: empty input, trailing data, invalid UTF-8.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let raw: &serde_json::value::RawValue = serde_json::from_slice(bytes)
            .map_err(|e| MiniStoreError::InvalidJson(e.to_string()))?;
        Ok(JsonLine(compact(raw.get())))
    }

    /// Serializes `value` as compact JSON.
    ///
    /// ```
    /// let line = ministore::JsonLine::from_value(&serde_json::json!({"id": 7})).unwrap();
    /// assert_eq!(line.as_str(), r#"{"id":7}"#);
    /// ```
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        serde_json::to_string(value)
            .map(JsonLine)
            .map_err(MiniStoreError::Serialize)
    }

    /// How deeply arrays and objects nest: 0 for a scalar, 1 for `[1]`, 2 for `{"a":[]}`.
    ///
    /// ```
    /// let line = ministore::JsonLine::from_slice(br#"{"a": [1, "[[["]}"#).unwrap();
    /// assert_eq!(line.nesting_depth(), 2);
    /// ```
    pub fn nesting_depth(&self) -> usize {
        let (mut depth, mut deepest) = (0usize, 0usize);
        for (b, in_string) in structure(self.as_bytes()) {
            match b {
                _ if in_string => {}
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        deepest
    }

    /// The compact JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The compact JSON text as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Takes the compact JSON text.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for JsonLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Each byte of valid JSON with whether it belongs to a string (its quotes included).
fn structure(bytes: &[u8]) -> impl Iterator<Item = (u8, bool)> + '_ {
    let (mut in_string, mut escaped) = (false, false);
    bytes.iter().map(move |&b| {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                return (b, true);
            }
            (b, true)
        } else {
            in_string = b == b'"';
            (b, in_string)
        }
    })
}

/// Removes whitespace outside strings. `valid` must be valid JSON, so every newline inside
/// it is insignificant (raw control characters are not allowed inside JSON strings).
fn compact(valid: &str) -> String {
    let bytes = valid.as_bytes();
    if !bytes
        .iter()
        .any(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return valid.to_owned();
    }
    let mut out = Vec::with_capacity(bytes.len());
    for (b, in_string) in structure(bytes) {
        if in_string || !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push(b);
        }
    }
    // Only ASCII whitespace outside strings was removed, so the bytes are still UTF-8.
    String::from_utf8(out).expect("removing ASCII whitespace keeps UTF-8 valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_inside_strings_is_kept() {
        let line =
            JsonLine::from_slice(b" { \"a b\" : \"x \\\" y\\n\" , \"c\" : [ 1 , 2 ] } ").unwrap();
        assert_eq!(line.as_str(), r#"{"a b":"x \" y\n","c":[1,2]}"#);
    }

    #[test]
    fn numbers_keep_their_exact_text() {
        let line = JsonLine::from_slice(b"[1.50, 1e400, 18446744073709551617]").unwrap();
        assert_eq!(line.as_str(), "[1.50,1e400,18446744073709551617]");
    }

    #[test]
    fn invalid_input_is_refused_with_a_position() {
        for bad in [
            &b""[..],
            b"   ",
            b"{",
            b"{\"a\":1}x",
            b"\"\xff\"",
            b"nul",
            b"\"a\nb\"",
        ] {
            let err = JsonLine::from_slice(bad).unwrap_err();
            assert!(
                matches!(err, MiniStoreError::InvalidJson(_)),
                "{bad:?}: {err}"
            );
        }
        let err = JsonLine::from_slice(b"{\"a\": }").unwrap_err().to_string();
        assert!(err.contains("line 1 column"), "{err}");
    }

    #[test]
    fn compacted_output_is_one_line_and_parses_to_the_same_value() {
        let input = b"{\n\t\"k\": [true, null, {\"n\": -0.5e-3}],\r\n \"s\": \"\\u00e9\"\n}";
        let line = JsonLine::from_slice(input).unwrap();
        assert!(!line.as_str().contains('\n'));
        let a: serde_json::Value = serde_json::from_slice(input).unwrap();
        let b: serde_json::Value = serde_json::from_str(line.as_str()).unwrap();
        assert_eq!(a, b);
    }
}
