//! [`JsonLine`]: bytes proven to be one JSON value, compacted to one line.

use serde::{Deserialize, Serialize};

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
        // The raw value is the text serde_json has checked, UTF-8 included: no second pass.
        let raw: &serde_json::value::RawValue = serde_json::from_slice(bytes)
            .map_err(|e| MiniStoreError::InvalidJson(e.to_string()))?;
        Ok(JsonLine(compact(raw.get())))
    }

    /// Like [`from_slice`](Self::from_slice), but the bytes are read once, as a `T`: one
    /// pass checks the JSON syntax and whatever `T`'s `Deserialize` demands (a schema, a
    /// number range), and the `T` comes back beside the line. serde_json's nesting limit
    /// (128 levels, the one that fails included) applies.
    ///
    /// ```
    /// use ministore::JsonLine;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Order {
    ///     id: u64,
    /// }
    ///
    /// let (line, order) = JsonLine::from_slice_as::<Order>(b"{ \"id\": 7 }").unwrap();
    /// assert_eq!((line.as_str(), order.id), (r#"{"id":7}"#, 7));
    ///
    /// assert!(JsonLine::from_slice_as::<Order>(br#"{"id": -1}"#).is_err());
    /// ```
    ///
    /// # Errors
    /// [`MiniStoreError::InvalidJson`] with serde_json's description of the first problem,
    /// whether the bytes are not JSON or not a `T`.
    pub fn from_slice_as<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<(Self, T)> {
        let value: T = serde_json::from_slice(bytes)
            .map_err(|e| MiniStoreError::InvalidJson(e.to_string()))?;
        // serde_json checks the UTF-8 only of the strings `T` reads, so check all of it.
        let text =
            std::str::from_utf8(bytes).map_err(|e| MiniStoreError::InvalidJson(e.to_string()))?;
        Ok((JsonLine(compact(text)), value))
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
        let bytes = self.as_bytes();
        for (run, _) in runs(bytes).filter(|(_, string)| !string) {
            for b in &bytes[run] {
                match b {
                    b'[' | b'{' => {
                        depth += 1;
                        deepest = deepest.max(depth);
                    }
                    b']' | b'}' => depth = depth.saturating_sub(1),
                    _ => {}
                }
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

/// Valid JSON text in runs, in order: the text between strings, and each string (its
/// quotes included), with whether the run is a string. Strings are crossed with `memchr`,
/// not byte by byte: they are most of a typical record.
fn runs(bytes: &[u8]) -> impl Iterator<Item = (std::ops::Range<usize>, bool)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let start = at;
        if start >= bytes.len() {
            return None;
        }
        if bytes[start] != b'"' {
            at = memchr::memchr(b'"', &bytes[start..]).map_or(bytes.len(), |k| start + k);
            return Some((start..at, false));
        }
        // To the first quote no backslash escapes; a backslash always escapes the byte
        // after it. Bounded by the end should the text end inside a string.
        let mut i = start + 1;
        at = loop {
            match memchr::memchr2(b'"', b'\\', &bytes[i..]) {
                Some(k) if bytes[i + k] == b'\\' => i = (i + k + 2).min(bytes.len()),
                Some(k) => break i + k + 1,
                None => break bytes.len(),
            }
        };
        Some((start..at, true))
    })
}

/// Removes whitespace outside strings. `valid` must be valid JSON, so every newline inside
/// it is insignificant (raw control characters are not allowed inside JSON strings).
fn compact(valid: &str) -> String {
    let bytes = valid.as_bytes();
    let removed = match memchr::memchr2(b'\\', b'\r', bytes) {
        None => without_whitespace(valid, unescaped_whitespace(bytes)),
        // Escapes: strings are found one by one.
        Some(_) => without_whitespace(
            valid,
            runs(bytes)
                .filter(|(_, string)| !string)
                .flat_map(|(run, _)| run)
                .filter(|&i| matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r'))
                .map(|i| i..i + 1),
        ),
    };
    removed.unwrap_or_else(|| valid.to_owned())
}

/// The stretches of whitespace outside strings in valid JSON that has no backslash (most
/// records) and no `\r`. There, a byte is inside a string exactly when an odd number of
/// quotes come before it; and only a space can be, as a raw tab or newline is never inside
/// a valid string. So `memchr` finds the candidates, and only the first of each stretch
/// needs the count: a stretch that starts inside a string is all spaces, inside it.
fn unescaped_whitespace(bytes: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let is_space = |b: &u8| matches!(b, b' ' | b'\n' | b'\t');
    let (mut at, mut quotes, mut counted_to) = (0, 0usize, 0);
    std::iter::from_fn(move || {
        loop {
            let start = at + memchr::memchr3(b' ', b'\n', b'\t', &bytes[at..])?;
            at = start + bytes[start..].iter().take_while(|b| is_space(b)).count();
            quotes += bytes[counted_to..start]
                .iter()
                .filter(|&&b| b == b'"')
                .count();
            counted_to = start;
            if quotes % 2 == 0 {
                return Some(start..at);
            }
        }
    })
}

/// `valid` without the byte ranges `gaps` (of ASCII bytes, in order); `None` if there are
/// none, so the caller copies `valid` once.
fn without_whitespace(
    valid: &str,
    gaps: impl Iterator<Item = std::ops::Range<usize>>,
) -> Option<String> {
    let (mut out, mut copied) = (None::<String>, 0);
    for gap in gaps {
        // Gaps are of ASCII bytes: they start and end at char boundaries.
        out.get_or_insert_with(|| String::with_capacity(valid.len()))
            .push_str(&valid[copied..gap.start]);
        copied = gap.end;
    }
    let mut out = out?;
    out.push_str(&valid[copied..]);
    Some(out)
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
    fn escaped_quotes_and_backslashes_end_strings_where_json_says() {
        let input = br#" [ "a\\" , "b\" c" , "\\\"" , "\u0022 \\" , { "k" : "v v" } ] "#;
        let line = JsonLine::from_slice(input).unwrap();
        assert_eq!(
            line.as_str(),
            r#"["a\\","b\" c","\\\"","\u0022 \\",{"k":"v v"}]"#
        );
        assert_eq!(line.nesting_depth(), 2);
        let a: serde_json::Value = serde_json::from_slice(input).unwrap();
        let b: serde_json::Value = serde_json::from_str(line.as_str()).unwrap();
        assert_eq!(a, b);
        let deep = JsonLine::from_slice(br#"{"a": "[{\"[", "b": [[{"c": "]]]"}]]}"#).unwrap();
        assert_eq!(deep.nesting_depth(), 4);
    }

    /// Any value, printed with whitespace everywhere JSON allows it, compacts to exactly
    /// serde_json's compact text, and its depth is counted right: strings full of quotes,
    /// backslashes, brackets and whitespace included.
    mod any_value {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        fn regex(pattern: &str) -> proptest::string::RegexGeneratorStrategy<String> {
            proptest::string::string_regex(pattern).unwrap()
        }

        /// Values whose strings are drawn from `chars` (a regex class).
        fn value(chars: &'static str) -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                regex(&format!("[{chars}]{{0,12}}")).prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 32, 4, move |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(regex(&format!("[{chars}]{{0,4}}")), inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Strings that print with escapes (quotes, backslashes, control characters).
        const ESCAPED: &str = " \"\\\\\n\t\r{}\\[\\]:,aé😀";
        /// Strings that print without a backslash: the other way through `compact`.
        const PLAIN: &str = " {}\\[\\]:,aé😀";

        fn depth(value: &Value) -> usize {
            match value {
                Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
                Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
                _ => 0,
            }
        }

        fn check(value: &Value) -> Result<(), TestCaseError> {
            let pretty = serde_json::to_string_pretty(value).unwrap();
            for spaced in [format!(" \n{pretty}\t\r\n"), format!(" {pretty}\n")] {
                let line = JsonLine::from_slice(spaced.as_bytes()).unwrap();
                prop_assert_eq!(line.as_str(), serde_json::to_string(value).unwrap());
                prop_assert_eq!(line.nesting_depth(), depth(value));
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn compacts_to_serde_jsons_own_text(value in value(ESCAPED)) {
                check(&value)?;
            }

            #[test]
            fn compacts_to_serde_jsons_own_text_without_escapes(value in value(PLAIN)) {
                check(&value)?;
            }
        }
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
