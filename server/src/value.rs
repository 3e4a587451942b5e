//! Conversions between JSON text and `google.protobuf.Value`, the structured form that
//! grpcurl shows as plain JSON.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::Value as Json;

use crate::error::ServerError;

/// Largest integer a double holds exactly; integral numbers up to this are written
/// without a fraction (`1`, not `1.0`), as a person typing them expects.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

/// Deepest nesting of arrays and objects accepted in a record: what serde_json (and so
/// the `value` form of Replay and Stream) can decode, and what protobuf decoders allow.
pub const MAX_DEPTH: usize = 128;

/// Refuses records nested deeper than [`MAX_DEPTH`]: every stored record must be readable
/// in every format.
pub fn check_depth(line: &ministore::JsonLine) -> Result<(), ServerError> {
    if line.nesting_depth() > MAX_DEPTH {
        return Err(ServerError::InvalidArgument(format!(
            "payload is nested deeper than {MAX_DEPTH} levels of arrays and objects"
        )));
    }
    Ok(())
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

/// The protobuf `Value` of stored JSON text. Numbers become doubles (as protobuf's JSON
/// mapping does); use the payload form where integers beyond 2^53 must stay exact.
pub fn from_json_text(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str::<Json>(text).map(|json| from_json(&json))
}

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

    #[test]
    fn nesting_is_limited_outside_strings_only() {
        let line = |s: &str| ministore::JsonLine::from_slice(s.as_bytes()).unwrap();
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(check_depth(&line(&ok)).is_ok());
        let deep = format!("[{ok}]");
        assert!(check_depth(&line(&deep)).is_err());
        let in_string = format!("[\"{}\\\"\"]", "[".repeat(500));
        assert!(check_depth(&line(&in_string)).is_ok());
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
        let value = from_json_text(text).unwrap();
        let back = to_json(&value).unwrap();
        assert_eq!(back, serde_json::from_str::<Json>(text).unwrap());
    }
}
