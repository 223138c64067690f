//! Market data as it arrives on Kafka, and its decoding.
//!
//! A tick is `{"symbol", "price", "volume", "change", "change_rate", "timestamp"}`; an order book
//! is `{"symbol", "timestamp", "bids": [{"price", "quantity"}], "asks": [...]}`. `timestamp` is
//! RFC 3339 or a number since the Unix epoch whose unit follows from its magnitude: below 1e11
//! seconds (fractions allowed), below 1e14 milliseconds, below 1e17 microseconds, else
//! nanoseconds. Anything else is poison.

use actord_actors::record::{Poison, SourceRecord};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use std::borrow::Cow;

use crate::pipelines::from_json_borrowed;

#[derive(Clone, Debug, PartialEq)]
pub struct Tick {
    pub time: DateTime<Utc>,
    pub symbol: String,
    pub price: f64,
    pub volume: i64,
    pub change: f64,
    pub change_rate: f64,
}

#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
pub struct Level {
    pub price: f64,
    pub quantity: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OrderBook {
    pub time: DateTime<Utc>,
    pub symbol: String,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Market {
    Tick(Tick),
    OrderBook(OrderBook),
}

impl Market {
    pub fn time(&self) -> DateTime<Utc> {
        match self {
            Market::Tick(t) => t.time,
            Market::OrderBook(o) => o.time,
        }
    }
}

/// Whether a topic carries order books (its name mentions `orderbook`, in any case, with `_`,
/// `-` or `.` anywhere in it) or ticks. Asked for every record: it allocates nothing.
pub fn is_orderbook_topic(topic: &str) -> bool {
    const WORD: &[u8] = b"orderbook";
    let letters = || {
        topic
            .bytes()
            .filter(|b| !matches!(b, b'_' | b'-' | b'.'))
            .map(|b| b.to_ascii_lowercase())
    };
    let len = letters().count();
    (0..=len.saturating_sub(WORD.len()))
        .take_while(|_| len >= WORD.len())
        .any(|start| {
            letters()
                .skip(start)
                .take(WORD.len())
                .eq(WORD.iter().copied())
        })
}

// Producers may add fields; only the documented ones are read.
#[derive(Deserialize)]
struct RawTick<'a> {
    symbol: String,
    price: f64,
    volume: i64,
    change: f64,
    change_rate: f64,
    #[serde(borrow)]
    timestamp: Stamp<'a>,
}

// Producers may add fields; only the documented ones are read.
#[derive(Deserialize)]
struct RawOrderBook<'a> {
    symbol: String,
    #[serde(borrow)]
    timestamp: Stamp<'a>,
    bids: Vec<Level>,
    asks: Vec<Level>,
}

/// A message's timestamp as written, read without building a JSON value: a number, or a
/// string borrowed from the message (owned only when it holds escapes). Any other JSON value is
/// kept as it is, so that [`stamp_time`] rejects it as poison with the value in its message.
pub enum Stamp<'a> {
    Int(i64),
    Float(f64),
    Text(Cow<'a, str>),
    Other(Value),
}

impl Stamp<'_> {
    /// The value as JSON text, for a poison message.
    fn json(&self) -> String {
        match self {
            Stamp::Int(i) => i.to_string(),
            Stamp::Float(f) => Value::from(*f).to_string(),
            Stamp::Text(t) => Value::from(t.as_ref()).to_string(),
            Stamp::Other(v) => v.to_string(),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Stamp<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Stamp<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a timestamp")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Stamp<'de>, E> {
                Ok(Stamp::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Stamp<'de>, E> {
                Ok(i64::try_from(v).map_or(Stamp::Other(Value::from(v)), Stamp::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Stamp<'de>, E> {
                Ok(Stamp::Float(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Stamp<'de>, E> {
                Ok(Stamp::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Stamp<'de>, E> {
                Ok(Stamp::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Stamp<'de>, E> {
                Ok(Stamp::Text(Cow::Owned(v)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Stamp<'de>, E> {
                Ok(Stamp::Other(Value::Bool(v)))
            }
            fn visit_unit<E>(self) -> Result<Stamp<'de>, E> {
                Ok(Stamp::Other(Value::Null))
            }
            fn visit_none<E>(self) -> Result<Stamp<'de>, E> {
                Ok(Stamp::Other(Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, a: A) -> Result<Stamp<'de>, A::Error> {
                Value::deserialize(serde::de::value::SeqAccessDeserializer::new(a))
                    .map(Stamp::Other)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, a: A) -> Result<Stamp<'de>, A::Error> {
                Value::deserialize(serde::de::value::MapAccessDeserializer::new(a))
                    .map(Stamp::Other)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Decodes a record by its topic's kind.
pub fn decode(r: &SourceRecord) -> Result<Market, Poison> {
    let bytes = r
        .payload
        .as_deref()
        .ok_or_else(|| Poison::new("EmptyMessage", "the message has no value"))?;
    if is_orderbook_topic(r.origin.topic.as_str()) {
        let raw: RawOrderBook =
            from_json_borrowed(bytes).map_err(|e| Poison::new("InvalidOrderBook", e))?;
        Ok(Market::OrderBook(OrderBook {
            time: stamp_time(&raw.timestamp)?,
            symbol: symbol(raw.symbol)?,
            bids: raw.bids,
            asks: raw.asks,
        }))
    } else {
        let raw: RawTick = from_json_borrowed(bytes).map_err(|e| Poison::new("InvalidTick", e))?;
        for (name, v) in [
            ("price", raw.price),
            ("change", raw.change),
            ("change_rate", raw.change_rate),
        ] {
            if !v.is_finite() {
                return Err(Poison::new(
                    "InvalidTick",
                    format!("{name} is not a finite number"),
                ));
            }
        }
        Ok(Market::Tick(Tick {
            time: stamp_time(&raw.timestamp)?,
            symbol: symbol(raw.symbol)?,
            price: raw.price,
            volume: raw.volume,
            change: raw.change,
            change_rate: raw.change_rate,
        }))
    }
}

fn symbol(s: String) -> Result<String, Poison> {
    if s.is_empty() || s.contains('\0') {
        return Err(Poison::new(
            "InvalidSymbol",
            format!("{s:?} is not a symbol"),
        ));
    }
    Ok(s)
}

/// RFC 3339, or epoch seconds / milliseconds / microseconds / nanoseconds by magnitude.
pub fn timestamp(v: &Value) -> Result<DateTime<Utc>, Poison> {
    let stamp = match v {
        Value::String(s) => Stamp::Text(Cow::Borrowed(s)),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Stamp::Int(i),
            (None, None, Some(f)) => Stamp::Float(f),
            _ => Stamp::Other(v.clone()),
        },
        other => Stamp::Other(other.clone()),
    };
    stamp_time(&stamp)
}

/// [`timestamp`] of a [`Stamp`].
pub fn stamp_time(v: &Stamp<'_>) -> Result<DateTime<Utc>, Poison> {
    let bad = |why: &str| Poison::new("InvalidTimestamp", format!("{}: {why}", v.json()));
    let float = |f: f64| -> Result<i128, Poison> {
        if !f.is_finite() || f.abs() >= 1e11 {
            return Err(bad("a fractional timestamp must be in seconds"));
        }
        // Whole seconds and the fraction apart: f64 cannot hold epoch nanoseconds exactly.
        let secs = f.trunc();
        Ok(secs as i128 * 1_000_000_000 + ((f - secs) * 1e9).round() as i128)
    };
    let nanos = |n: i128| {
        i64::try_from(n)
            .map(DateTime::from_timestamp_nanos)
            .map_err(|_| bad("out of range"))
    };
    let parsed = match v {
        Stamp::Text(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| bad(&e.to_string()))?,
        Stamp::Int(i) => {
            let i = *i as i128;
            nanos(match i.abs() {
                a if a < 100_000_000_000 => i * 1_000_000_000,
                a if a < 100_000_000_000_000 => i * 1_000_000,
                a if a < 100_000_000_000_000_000 => i * 1_000,
                _ => i,
            })?
        }
        Stamp::Float(f) => nanos(float(*f)?)?,
        Stamp::Other(Value::Number(n)) => {
            nanos(float(n.as_f64().ok_or_else(|| bad("not a number"))?)?)?
        }
        Stamp::Other(_) => return Err(bad("expected an RFC 3339 string or a number")),
    };
    // Both sinks store nanoseconds since the epoch in 64 bits.
    if parsed.timestamp_nanos_opt().is_none() {
        return Err(bad("outside the years 1677 to 2262"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actord_actors::record::{Origin, Topic};

    fn rec(topic: &str, json: &str) -> SourceRecord {
        SourceRecord {
            origin: Origin {
                topic: Topic::intern(topic),
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

    #[test]
    fn timestamps_by_magnitude_and_text() {
        let want = DateTime::parse_from_rfc3339("2025-11-19T16:12:34Z")
            .unwrap()
            .with_timezone(&Utc);
        for v in [
            serde_json::json!("2025-11-19T16:12:34Z"),
            serde_json::json!("2025-11-20T01:12:34+09:00"),
            serde_json::json!(1_763_568_754),
            serde_json::json!(1_763_568_754_000i64),
            serde_json::json!(1_763_568_754_000_000i64),
            serde_json::json!(1_763_568_754_000_000_000i64),
            serde_json::json!(1_763_568_754.0),
        ] {
            assert_eq!(timestamp(&v).unwrap(), want, "{v}");
        }
        assert_eq!(
            timestamp(&serde_json::json!(1_763_568_754.25))
                .unwrap()
                .timestamp_subsec_millis(),
            250
        );
        for bad in [
            serde_json::json!("yesterday"),
            serde_json::json!(true),
            serde_json::json!(1.7e15),
            serde_json::json!("9999-01-01T00:00:00Z"),
        ] {
            assert_eq!(
                timestamp(&bad).unwrap_err().class,
                "InvalidTimestamp",
                "{bad}"
            );
        }
    }

    #[test]
    fn timestamps_in_a_message_decode_as_their_json_values_would() {
        let tick = |ts: &str| {
            decode(&rec(
                "market.tick",
                &format!(
                    r#"{{"symbol":"A","price":1.0,"volume":1,"change":0,"change_rate":0,"timestamp":{ts}}}"#
                ),
            ))
        };
        let want = timestamp(&serde_json::json!("2025-11-19T16:12:34Z")).unwrap();
        for ts in [
            r#""2025-11-19T16:12:34Z""#,
            // An escape in the string: read into an owned string instead of borrowed.
            r#""2025-11-19T16:12:34\u005A""#,
            r#""2025\u002d11-19T16:12:34Z""#,
            "1763568754",
            "1763568754000",
            "1763568754.0",
        ] {
            assert_eq!(tick(ts).unwrap().time(), want, "{ts}");
        }
        for ts in [
            "true",
            "null",
            "[1]",
            r#"{"a":1}"#,
            "18446744073709551615",
            "-1.5e17",
        ] {
            let e = tick(ts).unwrap_err();
            assert_eq!(e.class, "InvalidTimestamp", "{ts}");
            let value: Value = serde_json::from_str(ts).unwrap();
            assert_eq!(e.message, timestamp(&value).unwrap_err().message, "{ts}");
        }
    }

    #[test]
    fn decodes_by_topic_kind() {
        let t = decode(&rec(
            "market.tick",
            r#"{"symbol":"005930","price":71000.0,"volume":10,"change":500.0,"change_rate":0.71,"timestamp":1763568754000}"#,
        ))
        .unwrap();
        assert!(matches!(t, Market::Tick(ref t) if t.symbol == "005930" && t.volume == 10));
        let extra = decode(&rec(
            "market.tick",
            r#"{"symbol":"A","price":1.0,"volume":1,"change":0,"change_rate":0,"timestamp":1,"exchange":"KRX"}"#,
        ));
        assert!(extra.is_ok(), "fields a producer adds are ignored");
        let o = decode(&rec(
            "market.orderbook",
            r#"{"symbol":"005930","timestamp":"2025-11-19T16:12:34Z","bids":[{"price":70900,"quantity":3}],"asks":[]}"#,
        ))
        .unwrap();
        assert!(matches!(o, Market::OrderBook(ref o) if o.bids.len() == 1 && o.asks.is_empty()));
    }

    #[test]
    fn anything_else_is_poison() {
        let cases = [
            ("market.tick", "not json", "InvalidTick"),
            (
                "market.tick",
                r#"{"symbol":"A","price":1,"volume":1,"change":0,"timestamp":1}"#,
                "InvalidTick",
            ),
            (
                "market.tick",
                r#"{"symbol":"A","price":1,"volume":1.5,"change":0,"change_rate":0,"timestamp":1}"#,
                "InvalidTick",
            ),
            (
                "market.tick",
                r#"{"symbol":"","price":1,"volume":1,"change":0,"change_rate":0,"timestamp":1}"#,
                "InvalidSymbol",
            ),
            (
                "market.tick",
                r#"{"symbol":"A","price":1,"volume":1,"change":0,"change_rate":0,"timestamp":"soon"}"#,
                "InvalidTimestamp",
            ),
            (
                "market.orderbook",
                r#"{"symbol":"A","timestamp":1,"bids":[{"price":1}],"asks":[]}"#,
                "InvalidOrderBook",
            ),
        ];
        for (topic, json, class) in cases {
            assert_eq!(
                decode(&rec(topic, json)).unwrap_err().class,
                class,
                "{json}"
            );
        }
    }

    #[test]
    fn orderbook_topics_are_recognised_by_name() {
        assert!(is_orderbook_topic("market.orderbook"));
        assert!(is_orderbook_topic("MARKET_ORDER_BOOK"));
        assert!(is_orderbook_topic("order-book"));
        assert!(is_orderbook_topic("x.Order.Book.v2"));
        assert!(!is_orderbook_topic("market.tick"));
        assert!(!is_orderbook_topic("orderboo"));
        assert!(!is_orderbook_topic("order_bo_x_ok"));
        assert!(!is_orderbook_topic(""));
    }

    use crate::pipelines::poison::{self, any_time, Field, Rng, Shape};
    use serde_json::{json, Map};

    fn cents(rng: &mut Rng) -> f64 {
        rng.range(-100_000_000_000, 100_000_000_000) as f64 / 100.0
    }

    fn good_tick(rng: &mut Rng) -> (Map<String, Value>, Market) {
        let (ts, time) = any_time(rng);
        let tick = Tick {
            time,
            symbol: rng.text(12),
            price: cents(rng),
            volume: rng.next_u64() as i64,
            change: cents(rng),
            change_rate: cents(rng),
        };
        let mut m = json!({
            "symbol": tick.symbol, "price": tick.price, "volume": tick.volume,
            "change": tick.change, "change_rate": tick.change_rate, "timestamp": ts,
        });
        if rng.one_in(3) {
            m["exchange"] = json!({"name": rng.text(5), "deep": [[[{"a": 1}]]]});
        }
        (m.as_object().unwrap().clone(), Market::Tick(tick))
    }

    fn good_book(rng: &mut Rng) -> (Map<String, Value>, Market) {
        let (ts, time) = any_time(rng);
        let levels = |rng: &mut Rng| {
            (0..rng.below(6))
                .map(|_| Level {
                    price: cents(rng),
                    quantity: rng.range(0, 1_000_000) as f64 / 10.0,
                })
                .collect::<Vec<_>>()
        };
        let book = OrderBook {
            time,
            symbol: rng.text(12),
            bids: levels(rng),
            asks: levels(rng),
        };
        let m = json!({
            "symbol": book.symbol, "timestamp": ts, "bids": book.bids, "asks": book.asks,
        });
        (m.as_object().unwrap().clone(), Market::OrderBook(book))
    }

    #[test]
    fn generated_malformed_ticks_are_all_poison_and_good_ones_decode() {
        let shape = Shape {
            fields: vec![
                ("symbol", Field::Text),
                ("price", Field::Float),
                ("volume", Field::Int),
                ("change", Field::Float),
                ("change_rate", Field::Float),
                ("timestamp", Field::Epoch),
            ],
            rules: vec![
                ("symbol", json!("")),
                ("symbol", json!("A\u{0}B")),
                ("volume", json!(1.0)),
                ("timestamp", json!("9999-01-01T00:00:00Z")),
                ("timestamp", json!(-1.0e17)),
                ("timestamp", json!(1.5e15)),
            ],
        };
        let tally = poison::run(11, &shape, good_tick, |payload| {
            decode(&poison::record("market.tick", payload))
        });
        eprintln!("ticks: {tally:?}");
    }

    #[test]
    fn generated_malformed_order_books_are_all_poison_and_good_ones_decode() {
        let shape = Shape {
            fields: vec![
                ("symbol", Field::Text),
                ("timestamp", Field::Epoch),
                ("bids", Field::List),
                ("asks", Field::List),
            ],
            rules: vec![
                ("symbol", json!("")),
                ("bids", json!([{"price": 1.0}])),
                ("asks", json!([{"quantity": 1.0}])),
                ("bids", json!([{"price": "1", "quantity": 1}])),
                ("asks", json!([{"price": 1, "quantity": null}])),
                ("timestamp", json!("0000-01-01T00:00:00Z")),
            ],
        };
        let tally = poison::run(12, &shape, good_book, |payload| {
            decode(&poison::record("market.orderbook", payload))
        });
        eprintln!("order books: {tally:?}");
    }
}
