//! A sensor reading as read from the topic: a JSON object and its record time.
//!
//! The time comes from the configured field, or the first of `timestamp`, `ts`, `time`,
//! `event_time` present: RFC 3339 (any offset), or a number since the Unix epoch whose unit
//! follows from its magnitude (below 10^11 seconds, fractions allowed; below 10^14
//! milliseconds; below 10^17 microseconds; else nanoseconds); a string of digits counts as that
//! number. A message that is not a JSON object, or has no usable time, is poison.
//!
//! The fields of a message are kept as a short list in message order, their names shared
//! between readings ([`Names`]): a run decodes millions of messages with the same few fields,
//! and a map with an owned key per field and message cost more than the rest of the decoding.

use std::collections::HashSet;
use std::sync::Arc;

use actord_actors::record::{Poison, SourceRecord};
use chrono::{DateTime, Utc};
use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::pipelines::recorder::model::timestamp;

/// The fields tried, in order, when no timestamp field is configured.
pub const DEFAULT_TIME_FIELDS: [&str; 4] = ["timestamp", "ts", "time", "event_time"];

/// A field name, one allocation shared by the readings that have the field.
pub type Name = Arc<str>;

/// The top-level fields of a message, in message order. A name given twice keeps its last
/// value, as in a JSON object read into a map; two readings with the same fields in another
/// order are equal.
#[derive(Debug, Clone, Default)]
pub struct Fields(Vec<(Name, Value)>);

impl PartialEq for Fields {
    fn eq(&self, other: &Fields) -> bool {
        self.len() == other.len() && self.iter().all(|(n, v)| other.get(n) == Some(v))
    }
}

impl Fields {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| &**n == name).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Name, &Value)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn insert(&mut self, name: Name, value: Value) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }
}

impl std::ops::Index<&str> for Fields {
    type Output = Value;

    fn index(&self, name: &str) -> &Value {
        self.get(name).unwrap_or(&Value::Null)
    }
}

impl From<Map<String, Value>> for Fields {
    fn from(map: Map<String, Value>) -> Self {
        Fields(map.into_iter().map(|(k, v)| (Name::from(k), v)).collect())
    }
}

/// The field names seen so far, so that readings share them. Holds at most [`Names::MAX`];
/// past that (messages whose keys keep changing) a name is allocated per reading.
#[derive(Clone, Debug, Default)]
pub struct Names(HashSet<Name>);

impl Names {
    pub const MAX: usize = 4096;

    fn name(&mut self, s: &str) -> Name {
        if let Some(n) = self.0.get(s) {
            return n.clone();
        }
        let n = Name::from(s);
        if self.0.len() < Self::MAX {
            self.0.insert(n.clone());
        }
        n
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One message: its top-level fields and its record time.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub fields: Fields,
    pub time: DateTime<Utc>,
}

/// Decodes a message; `field` is the configured timestamp field, if any.
pub fn decode(r: &SourceRecord, field: Option<&str>) -> Result<Reading, Poison> {
    decode_with(r, field, &mut Names::default())
}

/// [`decode`], sharing field names through `names`.
pub fn decode_with(
    r: &SourceRecord,
    field: Option<&str>,
    names: &mut Names,
) -> Result<Reading, Poison> {
    let bytes = match r.payload.as_deref() {
        None | Some([]) => return Err(Poison::new("EmptyMessage", "the message has no value")),
        Some(b) => b,
    };
    let fields = object(bytes, names)?;
    let (name, raw) = match field {
        Some(f) => (
            f,
            fields.get(f).ok_or_else(|| {
                Poison::new("MissingTimestamp", format!("no field {f:?} in the message"))
            })?,
        ),
        None => DEFAULT_TIME_FIELDS
            .iter()
            .find_map(|f| fields.get(f).filter(|v| !v.is_null()).map(|v| (*f, v)))
            .ok_or_else(|| {
                Poison::new(
                    "MissingTimestamp",
                    format!("none of {} in the message", DEFAULT_TIME_FIELDS.join(", ")),
                )
            })?,
    };
    let time = match raw {
        Value::String(s) if !s.is_empty() && s.trim().bytes().all(|b| b.is_ascii_digit()) => s
            .trim()
            .parse::<i64>()
            .map_err(|e| Poison::new("InvalidTimestamp", format!("{name}: {e}")))
            .and_then(|n| timestamp(&Value::from(n))),
        v => timestamp(v),
    }
    .map_err(|p| Poison::new("InvalidTimestamp", format!("{name}: {}", p.message)))?;
    Ok(Reading { fields, time })
}

/// The fields of a message that must be a JSON object.
fn object(bytes: &[u8], names: &mut Names) -> Result<Fields, Poison> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Poison::new("JsonError", format!("the message is not UTF-8: {e}")))?;
    if !text.trim_start().starts_with('{') {
        // Not JSON, or JSON but not an object: the full parser tells which.
        return match serde_json::from_str::<Value>(text) {
            Err(e) => Err(Poison::new("JsonError", e.to_string())),
            Ok(_) => Err(Poison::new(
                "NotAnObject",
                "expected a JSON object of sensor fields",
            )),
        };
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let fields = Object(names)
        .deserialize(&mut de)
        .and_then(|f| de.end().map(|()| f))
        .map_err(|e| Poison::new("JsonError", e.to_string()))?;
    Ok(fields)
}

/// Reads a JSON object into [`Fields`], naming its fields through [`Names`].
struct Object<'n>(&'n mut Names);

impl<'de> DeserializeSeed<'de> for Object<'_> {
    type Value = Fields;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Fields, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Object<'_> {
    type Value = Fields;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields(Vec::with_capacity(map.size_hint().unwrap_or(8)));
        while let Some(key) = map.next_key_seed(Key)? {
            let name = self.0.name(&key);
            fields.insert(name, map.next_value()?);
        }
        Ok(fields)
    }
}

/// A key as written: borrowed from the message unless it holds escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actord_actors::record::{Origin, Topic};

    fn rec(json: &str) -> SourceRecord {
        SourceRecord {
            origin: Origin {
                topic: Topic::intern("fms-temphum"),
                partition: 0,
                offset: 0,
                epoch: 1,
            },
            key: None,
            payload: Some(json.as_bytes().to_vec()),
            timestamp_ms: None,
            headers: Vec::new(),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_first_present_default_field_gives_the_time() {
        let r = decode(&rec(r#"{"ts": 1763568754, "time": "x"}"#), None).unwrap();
        assert_eq!(r.time, at("2025-11-19T16:12:34Z"));
        let r = decode(
            &rec(r#"{"event_time": "2025-11-20T00:12:34+09:00", "v": 1}"#),
            None,
        )
        .unwrap();
        assert_eq!(r.time, at("2025-11-19T15:12:34Z"));
        assert_eq!(r.fields["v"], 1);
    }

    #[test]
    fn epoch_units_follow_the_magnitude() {
        for (v, want) in [
            ("1763568754", "2025-11-19T16:12:34Z"),
            ("1763568754.5", "2025-11-19T16:12:34.5Z"),
            ("1763568754123", "2025-11-19T16:12:34.123Z"),
            ("1763568754123456", "2025-11-19T16:12:34.123456Z"),
            ("1763568754123456789", "2025-11-19T16:12:34.123456789Z"),
            ("\"1763568754123\"", "2025-11-19T16:12:34.123Z"),
        ] {
            let r = decode(&rec(&format!(r#"{{"timestamp": {v}}}"#)), None).unwrap();
            assert_eq!(r.time, at(want), "{v}");
        }
    }

    #[test]
    fn a_configured_field_is_the_only_one_read() {
        let r = decode(
            &rec(r#"{"timestamp": 1, "measured": "2025-11-19T16:12:34Z"}"#),
            Some("measured"),
        )
        .unwrap();
        assert_eq!(r.time, at("2025-11-19T16:12:34Z"));
        let e = decode(&rec(r#"{"timestamp": 1763568754}"#), Some("measured")).unwrap_err();
        assert_eq!(e.class, "MissingTimestamp");
    }

    #[test]
    fn messages_without_a_usable_time_are_poison() {
        for (json, class) in [
            ("", "EmptyMessage"),
            ("not json", "JsonError"),
            ("[1, 2]", "NotAnObject"),
            (r#"{"temperature": 21.5}"#, "MissingTimestamp"),
            (r#"{"timestamp": "yesterday"}"#, "InvalidTimestamp"),
            (r#"{"timestamp": true}"#, "InvalidTimestamp"),
        ] {
            assert_eq!(decode(&rec(json), None).unwrap_err().class, class, "{json}");
        }
    }

    use crate::pipelines::poison::{self, any_time, Field, Rng, Shape};
    use serde_json::json;

    fn good_reading(rng: &mut Rng) -> (Map<String, Value>, Reading) {
        let (mut ts, time) = any_time(rng);
        if ts.is_i64() && rng.one_in(3) {
            // A string of digits counts as the number.
            ts = json!(ts.to_string());
        }
        let mut m = json!({
            "timestamp": ts,
            "temperature": rng.range(-4_000, 6_000) as f64 / 100.0,
            "humidity": rng.range(0, 100),
            "device": rng.text(10),
        });
        if rng.one_in(3) {
            m["location"] = json!({"site": rng.text(6), "floor": [rng.range(-3, 90)]});
        }
        let fields = m.as_object().unwrap().clone();
        (
            fields.clone(),
            Reading {
                fields: fields.into(),
                time,
            },
        )
    }

    #[test]
    fn generated_malformed_readings_are_all_poison_and_good_ones_decode() {
        let shape = Shape {
            fields: vec![("timestamp", Field::Epoch)],
            rules: vec![
                ("timestamp", json!("9999-01-01T00:00:00Z")),
                ("timestamp", json!("99999999999999999999")),
                ("timestamp", json!(" ")),
                ("timestamp", json!("12a")),
                ("timestamp", json!(-1.0e17)),
            ],
        };
        let tally = poison::run(31, &shape, good_reading, |payload| {
            decode(&poison::record("fms-temphum", payload), None)
        });
        eprintln!("readings: {tally:?}");
    }
}
