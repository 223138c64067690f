//! A sensor reading as read from the topic: a JSON object and its record time.
//!
//! The time comes from the configured field, or the first of `timestamp`, `ts`, `time`,
//! `event_time` present: RFC 3339 (any offset), or a number since the Unix epoch whose unit
//! follows from its magnitude (below 10^11 seconds, fractions allowed; below 10^14
//! milliseconds; below 10^17 microseconds; else nanoseconds); a string of digits counts as that
//! number. A message that is not a JSON object, or has no usable time, is poison.

use actord_actors::record::{Poison, SourceRecord};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::pipelines::from_json;
use crate::pipelines::recorder::model::timestamp;

/// The fields tried, in order, when no timestamp field is configured.
pub const DEFAULT_TIME_FIELDS: [&str; 4] = ["timestamp", "ts", "time", "event_time"];

/// One message: its top-level fields and its record time.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub fields: Map<String, Value>,
    pub time: DateTime<Utc>,
}

/// Decodes a message; `field` is the configured timestamp field, if any.
pub fn decode(r: &SourceRecord, field: Option<&str>) -> Result<Reading, Poison> {
    let bytes = match r.payload.as_deref() {
        None | Some([]) => return Err(Poison::new("EmptyMessage", "the message has no value")),
        Some(b) => b,
    };
    let value: Value = from_json(bytes).map_err(|e| Poison::new("JsonError", e))?;
    let Value::Object(fields) = value else {
        return Err(Poison::new(
            "NotAnObject",
            "expected a JSON object of sensor fields",
        ));
    };
    let (name, raw) = match field {
        Some(f) => (
            f,
            fields.get(f).ok_or_else(|| {
                Poison::new("MissingTimestamp", format!("no field {f:?} in the message"))
            })?,
        ),
        None => DEFAULT_TIME_FIELDS
            .iter()
            .find_map(|f| fields.get(*f).filter(|v| !v.is_null()).map(|v| (*f, v)))
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
        (fields.clone(), Reading { fields, time })
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
