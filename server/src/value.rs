//! Conversions between JSON text and `google.protobuf.Value`, the structured form that
//! grpcurl shows as plain JSON.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::Value as Json;

use crate::error::ServerError;

/// Largest integer a double holds exactly; integral numbers up to this are written
/// without a fraction (`1`, not `1.0`), as a person typing them expects.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

/// Deepest nesting of arrays and objects accepted in a record: what serde_json (the
/// store's own `replay`, and most Rust programs) reads back; its limit of 128 includes
/// the level that fails.
pub const MAX_DEPTH: usize = 127;

/// Deepest nesting sent as a `Value`. Protobuf decoders stop at 100 nested messages
/// (Python's upb, grpcurl's Go decoder at 100 too), and each JSON level takes up to three
/// (a `Value`, a `Struct`, a map entry) under the reply's own two: 32 levels fit.
pub const MAX_VALUE_DEPTH: usize = 32;

/// Largest record sent as a `Value`, in bytes of JSON. The value form is for people; it
/// takes several times the memory of the JSON (up to ~28x for arrays of small numbers),
/// and larger records come as exact payload. Its encoded form then stays far under the 4
/// MiB message limit of gRPC clients' defaults.
pub const MAX_VALUE_JSON: usize = 256 * 1024;

/// Most memory the `Value` of a record of [`MAX_VALUE_JSON`] bytes can take, by
/// [`heap_bytes`]: what a reader reserves for one converted record.
pub const MAX_VALUE_HEAP: usize = 32 * MAX_VALUE_JSON;

/// The one rule for what a record may be: JSON that every common reader reads back.
/// Beyond being one JSON value (checked by the store), it is nested at most
/// [`MAX_DEPTH`] levels, holds no number outside a double's range (`1e999`) and no string
/// with a lone surrogate escape (`"\ud800"`), which serde_json, Python's `json` with
/// protobuf, and JavaScript cannot all read (RFC 7493, I-JSON). Anything accepted can be
/// read as payload, and as a value wherever a `Value` can carry it (see [`to_wire`]).
pub fn check_readable(line: &ministore::JsonLine) -> Result<(), ServerError> {
    if line.nesting_depth() > MAX_DEPTH {
        return Err(ServerError::InvalidArgument(format!(
            "payload is nested deeper than {MAX_DEPTH} levels of arrays and objects"
        )));
    }
    serde_json::from_str::<Readable>(line.as_str()).map_err(|e| {
        ServerError::InvalidArgument(format!(
            "payload is JSON that common readers cannot read back ({e}); numbers must fit a double and \\u escapes must not be lone surrogates"
        ))
    })?;
    Ok(())
}

/// `payload` as a record line if it is one JSON value that follows the rule of
/// [`check_readable`]. Its bytes are read once: deserializing [`Readable`] checks the syntax,
/// the numbers and escapes, and the nesting (serde_json's own limit is [`MAX_DEPTH`]). Only a
/// refused payload is read again, by the separate checks, so that the error names the rule
/// it breaks.
pub fn readable_line(journal: &str, payload: &[u8]) -> Result<ministore::JsonLine, ServerError> {
    match ministore::JsonLine::from_slice_as::<Readable>(payload) {
        Ok((line, Readable)) => Ok(line),
        Err(one_pass) => {
            let line = ministore::JsonLine::from_slice(payload)
                .map_err(|e| ServerError::store(journal, e))?;
            check_readable(&line)?;
            Err(ServerError::store(journal, one_pass))
        }
    }
}

/// Deserializes any JSON without keeping it, failing where serde_json's `Value` would:
/// numbers out of a double's range and lone surrogates (serde_json's own `IgnoredAny` skips
/// over both).
struct Readable;

impl<'de> serde::Deserialize<'de> for Readable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Readable)
    }
}

impl<'de> serde::de::Visitor<'de> for Readable {
    type Value = Readable;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_str<E>(self, _: &str) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_unit<E>(self) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Readable, A::Error> {
        while seq.next_element::<Readable>()?.is_some() {}
        Ok(Readable)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Readable, A::Error> {
        while map.next_entry::<Readable, Readable>()?.is_some() {}
        Ok(Readable)
    }
}

/// The record's body in `format`. A record that a `Value` cannot carry to common clients
/// (deeper than [`MAX_VALUE_DEPTH`], larger than [`MAX_VALUE_JSON`], or not readable as
/// one, as records stored before [`check_readable`] may be) is sent as its exact payload
/// even in the value format: every record is readable in every format.
pub fn to_wire(json: String, as_value: bool) -> ministore::proto::record::Body {
    use ministore::proto::record::Body;
    if as_value && let Some(value) = value_form(&json) {
        return Body::Value(value);
    }
    Body::Payload(json.into_bytes())
}

fn value_form(json: &str) -> Option<Value> {
    if json.len() > MAX_VALUE_JSON {
        return None;
    }
    let parsed: Json = serde_json::from_str(json).ok()?;
    (depth(&parsed) <= MAX_VALUE_DEPTH).then(|| from_json(&parsed))
}

fn depth(json: &Json) -> usize {
    match json {
        Json::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Json::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The memory a `Value` holds, for the read budget: its nodes, strings and maps. A value
/// takes several times its JSON text (about 16x for small numbers in arrays).
pub fn heap_bytes(value: &Value) -> usize {
    const NODE: usize = std::mem::size_of::<Value>();
    // A BTreeMap entry: the key and value inline, plus node overhead shared among ~11.
    const ENTRY: usize = std::mem::size_of::<String>() + NODE + 16;
    NODE + match &value.kind {
        Some(Kind::StringValue(s)) => s.capacity(),
        Some(Kind::ListValue(list)) => {
            list.values.capacity() * NODE
                + list
                    .values
                    .iter()
                    .map(|v| heap_bytes(v) - NODE)
                    .sum::<usize>()
        }
        Some(Kind::StructValue(s)) => s
            .fields
            .iter()
            .map(|(k, v)| ENTRY + k.capacity() + heap_bytes(v) - NODE)
            .sum(),
        _ => 0,
    }
}

/// The JSON value of a protobuf `Value`. An unset kind is `null`; NaN and infinities,
/// which JSON cannot hold, are refused.
pub fn to_json(value: &Value) -> Result<Json, ServerError> {
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::NumberValue(n)) => number(*n)?,
        Some(Kind::ListValue(list)) => {
            Json::Array(list.values.iter().map(to_json).collect::<Result<_, _>>()?)
        }
        Some(Kind::StructValue(s)) => Json::Object(
            s.fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v)?)))
                .collect::<Result<_, ServerError>>()?,
        ),
    })
}

fn number(n: f64) -> Result<Json, ServerError> {
    if n.fract() == 0.0 && n.abs() <= MAX_EXACT {
        return Ok(Json::from(n as i64));
    }
    serde_json::Number::from_f64(n)
        .map(Json::Number)
        .ok_or_else(|| {
            ServerError::InvalidArgument(format!(
                "value holds the number {n}, which JSON cannot represent"
            ))
        })
}

/// The protobuf `Value` of a JSON value. Numbers become doubles (as protobuf's JSON
/// mapping does); use the payload form where integers beyond 2^53 must stay exact.
fn from_json(json: &Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(from_json).collect(),
        }),
        Json::Object(map) => Kind::StructValue(Struct {
            fields: map.iter().map(|(k, v)| (k.clone(), from_json(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_numbers_stay_integers() {
        let v = Value {
            kind: Some(Kind::NumberValue(42.0)),
        };
        assert_eq!(to_json(&v).unwrap().to_string(), "42");
        let v = Value {
            kind: Some(Kind::NumberValue(0.5)),
        };
        assert_eq!(to_json(&v).unwrap().to_string(), "0.5");
    }

    fn line(s: &str) -> ministore::JsonLine {
        ministore::JsonLine::from_slice(s.as_bytes()).unwrap()
    }

    #[test]
    fn nesting_is_limited_outside_strings_only_to_what_serde_json_reads_back() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(check_readable(&line(&ok)).is_ok());
        assert!(serde_json::from_str::<Json>(&ok).is_ok());
        let deep = format!("[{ok}]");
        assert!(check_readable(&line(&deep)).is_err());
        assert!(serde_json::from_str::<Json>(&deep).is_err());
        let in_string = format!("[\"{}\\\"\"]", "[".repeat(500));
        assert!(check_readable(&line(&in_string)).is_ok());
    }

    /// The one pass accepts exactly what the separate checks accept, as the same line.
    #[test]
    fn reading_a_payload_once_agrees_with_the_separate_checks() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let mut cases: Vec<Vec<u8>> = [
            r#" { "a b" : "x \" y" , "n" : [ 1.50 , -0.0, 1e300 ] } "#,
            "1e999",
            "[-1e400]",
            r#""\ud800""#,
            r#""\ud83d\ude00""#,
            "123456789012345678901234567890",
            r#"{"a":1}x"#,
            "{\"a\": }",
            "",
            "  ",
            "\"a\nb\"",
            "\u{c}1",
            r#"{"é":"ü"}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        cases.push(b"\"\xff\"".to_vec());
        cases.push(b"{\"\xc3\":1}".to_vec());
        cases.push(nested(MAX_DEPTH).into_bytes());
        cases.push(nested(MAX_DEPTH + 1).into_bytes());
        cases.push(format!("{{\"a\":{}}}", nested(MAX_DEPTH - 1)).into_bytes());
        cases.push(format!("{{\"a\":{}}}", nested(MAX_DEPTH)).into_bytes());
        for case in cases {
            let separate = ministore::JsonLine::from_slice(&case)
                .map_err(|e| ServerError::store("j", e))
                .and_then(|line| check_readable(&line).map(|()| line));
            let once = readable_line("j", &case);
            match (&once, &separate) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                _ => panic!(
                    "{:?}: once {once:?}, separately {separate:?}",
                    String::from_utf8_lossy(&case)
                ),
            }
        }
    }

    #[test]
    fn numbers_out_of_range_and_lone_surrogates_are_refused() {
        for bad in ["1e999", "[-1e400]", r#""\ud800""#, r#"{"a":"x\udc00y"}"#] {
            assert!(check_readable(&line(bad)).is_err(), "{bad} was accepted");
        }
        for good in [
            "1e300",
            r#""\ud83d\ude00""#,
            "123456789012345678901234567890",
            "-0.0",
        ] {
            assert!(check_readable(&line(good)).is_ok(), "{good} was refused");
        }
    }

    #[test]
    fn records_a_value_cannot_carry_are_sent_as_payload() {
        use ministore::proto::record::Body;
        let deep = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
        assert!(matches!(
            to_wire(deep(MAX_VALUE_DEPTH), true),
            Body::Value(_)
        ));
        assert_eq!(
            to_wire(deep(MAX_VALUE_DEPTH + 1), true),
            Body::Payload(deep(MAX_VALUE_DEPTH + 1).into_bytes())
        );
        // Stored before the rule: sent as it is.
        assert_eq!(
            to_wire("1e999".into(), true),
            Body::Payload(b"1e999".to_vec())
        );
        let big = format!("[{}1]", "1,".repeat(MAX_VALUE_JSON / 2));
        assert!(matches!(to_wire(big, true), Body::Payload(_)));
        assert!(matches!(to_wire("[1,2]".into(), true), Body::Value(_)));
        assert!(matches!(to_wire("[1,2]".into(), false), Body::Payload(_)));
    }

    #[test]
    fn heap_bytes_counts_nodes_and_strings_within_the_reserved_bound() {
        let v = value_form(r#"["abcdef",1,{"k":2}]"#).unwrap();
        let node = std::mem::size_of::<Value>();
        // The list, its three items, the number in the object; the two strings.
        assert!(heap_bytes(&v) >= 5 * node + "abcdef".len() + "k".len());
        // The worst shapes of the largest record sent as a value stay within the bound.
        let numbers = format!("[{}1]", "1,".repeat(MAX_VALUE_JSON / 2 - 2));
        let fields = format!(
            "{{{}\"\":1}}",
            (0..MAX_VALUE_JSON / 12)
                .map(|i| format!("\"{i:x}\":1,"))
                .collect::<String>()
        );
        for json in [numbers, fields] {
            assert!(json.len() <= MAX_VALUE_JSON);
            let heap = heap_bytes(&value_form(&json).unwrap());
            assert!(heap <= MAX_VALUE_HEAP, "{heap} > {MAX_VALUE_HEAP}");
        }
    }

    #[test]
    fn nan_is_refused() {
        let v = Value {
            kind: Some(Kind::NumberValue(f64::NAN)),
        };
        assert!(to_json(&v).is_err());
    }

    #[test]
    fn round_trip_through_text() {
        let text = r#"{"a":[1,true,null,"x"],"b":{"c":2.5}}"#;
        let value = value_form(text).unwrap();
        let back = to_json(&value).unwrap();
        assert_eq!(back, serde_json::from_str::<Json>(text).unwrap());
    }
}
