//! Generated malformed messages, interleaved with good ones, for the decoders' property tests.
//!
//! A decoder describes the fields it reads ([`Shape`]) and how to make a good message with the
//! value it must decode to; [`run`] then feeds it at least [`MALFORMED`] generated malformed
//! messages (truncated good ones, wrong types, huge numbers, invalid UTF-8, deep nesting, large
//! messages under Kafka's default `message.max.bytes`, empty and random bytes, wrong shapes,
//! values a rule refuses) with good messages between them. Every malformed one must be an
//! `Err`, every good one `Ok` with the right value, and nothing may panic. The generator is
//! seeded, so a failure names the seed and the case that reproduces it.

use std::collections::BTreeMap;
use std::fmt::Debug;

use actord_actors::record::{Origin, Poison, SourceRecord, Topic};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// Malformed messages per run.
pub const MALFORMED: usize = 10_000;

/// The largest message generated: below Kafka's default `message.max.bytes` (1,048,588) and
/// the producer's default `message.max.bytes` (1,000,000).
pub const LARGEST: usize = 990_000;

/// A small deterministic generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// A number in `low..=high`.
    pub fn range(&mut self, low: i64, high: i64) -> i64 {
        low + (self.next_u64() % (high - low + 1) as u64) as i64
    }

    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// A non-empty identifier-like text, sometimes with non-ASCII letters, quotes and escapes.
    pub fn text(&mut self, max: usize) -> String {
        const PARTS: [&str; 12] = [
            "A", "z", "0", "9", "_", "-", "삼성", "é", "\"", "\\", " ", "Ω",
        ];
        let n = 1 + self.below(max.max(1));
        let mut s: String = (0..n).map(|_| *self.pick(&PARTS)).collect();
        if s.trim().is_empty() {
            s.push('X');
        }
        s
    }

    /// A text of letters and digits only, `1..=max` long.
    pub fn alnum(&mut self, max: usize) -> String {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let n = 1 + self.below(max.max(1));
        (0..n).map(|_| *self.pick(CHARS) as char).collect()
    }
}

/// A time in one of the forms the epoch decoders accept (RFC 3339, epoch seconds with or
/// without a fraction, milliseconds, nanoseconds), and the instant it means.
pub fn any_time(rng: &mut Rng) -> (Value, DateTime<Utc>) {
    // 1973 to 2096: milliseconds here are never read as seconds.
    let ms = rng.range(100_000_000_000, 4_000_000_000_000);
    let at = |nanos: i64| DateTime::from_timestamp_nanos(nanos);
    match rng.below(5) {
        0 => (json!(ms), at(ms * 1_000_000)),
        1 => (json!(ms / 1000), at(ms / 1000 * 1_000_000_000)),
        2 => {
            let n = ms * 1_000_000 + rng.range(0, 999_999);
            (json!(n), at(n))
        }
        3 => (
            json!((ms / 1000) as f64 + 0.25),
            at(ms / 1000 * 1_000_000_000 + 250_000_000),
        ),
        _ => {
            let t = at(ms * 1_000_000);
            let seoul = chrono::FixedOffset::east_opt(9 * 3600).unwrap();
            (json!(t.with_timezone(&seoul).to_rfc3339()), t)
        }
    }
}

/// What a decoder expects of a field it reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Field {
    /// A string.
    Text,
    /// An integer that fits 64 bits.
    Int,
    /// An integer that fits 32 bits.
    Int32,
    /// A finite number.
    Float,
    /// The recorder's time: RFC 3339 or a number since the epoch.
    Epoch,
    /// An RFC 3339 string only.
    Rfc3339,
    /// A JSON object.
    Object,
    /// A JSON array of objects.
    List,
}

/// The fields a decoder requires and reads, and values of them it must refuse.
pub struct Shape {
    pub fields: Vec<(&'static str, Field)>,
    /// `(field, value)`: a good message with `field` set to `value` is poison.
    pub rules: Vec<(&'static str, Value)>,
}

/// Where a generated value goes in the text of a message.
const MARK: &str = "@@poison@@";

/// The kinds of malformed message, each of which a run must have generated.
pub const KINDS: [&str; 11] = [
    "truncated",
    "wrong type",
    "missing field",
    "huge number",
    "invalid UTF-8",
    "deep nesting",
    "large",
    "empty",
    "random bytes",
    "wrong shape",
    "rule",
];

fn text_of(message: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(message).expect("a JSON object serialises")
}

/// `message` with `field` set to the raw JSON text `raw`.
fn with_raw(message: &Map<String, Value>, field: &str, raw: &[u8]) -> Vec<u8> {
    let mut m = message.clone();
    m.insert(field.to_owned(), Value::String(MARK.to_owned()));
    replace_mark(&text_of(&m), raw)
}

fn replace_mark(text: &[u8], raw: &[u8]) -> Vec<u8> {
    let mark = format!("\"{MARK}\"");
    let at = text
        .windows(mark.len())
        .position(|w| w == mark.as_bytes())
        .expect("the mark is in the message");
    [&text[..at], raw, &text[at + mark.len()..]].concat()
}

fn wrong_types(kind: Field) -> Vec<Value> {
    let mut all = vec![
        json!("7"),
        json!(7),
        json!(1.5),
        json!(true),
        json!(false),
        Value::Null,
        json!([]),
        json!({}),
        json!([1, 2]),
        json!({"a": 1}),
    ];
    all.retain(|v| match kind {
        Field::Text | Field::Rfc3339 => !v.is_string(),
        Field::Int | Field::Int32 => !v.is_i64(),
        Field::Float => !v.is_number(),
        // A number is a time, and so is a string of digits to some decoders.
        Field::Epoch => !v.is_number() && v != "7",
        Field::Object => !v.is_object() || v == &json!({}) || v == &json!({"a": 1}),
        Field::List => !v.is_array(),
    });
    match kind {
        Field::Epoch => all.extend([json!("yesterday"), json!(""), json!("2025-13-01T00:00:00Z")]),
        Field::Rfc3339 => all.extend([json!("2025-11-19 16:12"), json!(""), json!("1763568754")]),
        Field::List => all.extend([json!([1]), json!([{}]), json!([[]]), json!(["x"])]),
        _ => {}
    }
    all
}

fn huge_numbers(kind: Field, rng: &mut Rng) -> Vec<u8> {
    let digits = |rng: &mut Rng| {
        // Past f64's range (about 1.8e308) as well as every integer's.
        let n = 310 + rng.below(200);
        let mut s = String::from("9");
        s.extend((1..n).map(|_| char::from(b'0' + rng.below(10) as u8)));
        s
    };
    let common = [
        "1e400".to_owned(),
        "-1e400".to_owned(),
        "1.7976931348623157e309".to_owned(),
        digits(rng),
        format!("-{}", digits(rng)),
    ];
    let own: Vec<String> = match kind {
        Field::Int => vec!["9223372036854775808".into(), "-9223372036854775809".into()],
        Field::Int32 => vec!["2147483648".into(), "-2147483649".into(), "1e10".into()],
        Field::Epoch => vec![
            "18446744073709551615".into(),
            "1e300".into(),
            "-1e300".into(),
        ],
        _ => Vec::new(),
    };
    let all: Vec<&String> = common.iter().chain(own.iter()).collect();
    rng.pick(&all).as_bytes().to_vec()
}

fn invalid_utf8(rng: &mut Rng) -> Vec<u8> {
    const BAD: [&[u8]; 7] = [
        b"\xff",
        b"\xc0\x80",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\x80",
        b"\xe2\x82",
        b"\xfe\xfe",
    ];
    let mut s = b"\"".to_vec();
    s.extend(rng.alnum(8).bytes());
    s.extend(*rng.pick(&BAD));
    s.extend(rng.alnum(8).bytes());
    s.push(b'"');
    s
}

fn nested(depth: usize, objects: bool) -> Vec<u8> {
    if objects {
        let mut s = b"{\"a\":".repeat(depth);
        s.push(b'1');
        s.extend(std::iter::repeat_n(b'}', depth));
        s
    } else {
        let mut s = vec![b'['; depth];
        s.extend(std::iter::repeat_n(b']', depth));
        s
    }
}

/// Whitespace after the opening brace, so the message is about `size` bytes and still means
/// the same.
fn padded(text: &[u8], size: usize) -> Vec<u8> {
    let fill = size.saturating_sub(text.len());
    let mut out = Vec::with_capacity(text.len() + fill);
    out.push(text[0]);
    out.extend(std::iter::repeat_n(b' ', fill));
    out.extend(&text[1..]);
    out
}

/// One malformed message made from the good `message`: its kind and bytes.
pub fn malformed(
    rng: &mut Rng,
    shape: &Shape,
    message: &Map<String, Value>,
) -> (&'static str, Option<Vec<u8>>) {
    let mut kind = *rng.pick(&KINDS);
    // Large messages cost the most to make and to parse: fewer of them, still hundreds.
    while kind == "large" && !rng.one_in(4) {
        kind = *rng.pick(&KINDS);
    }
    (kind, make(rng, shape, message, kind))
}

fn make(
    rng: &mut Rng,
    shape: &Shape,
    message: &Map<String, Value>,
    kind_name: &str,
) -> Option<Vec<u8>> {
    let (field, kind) = *rng.pick(&shape.fields);
    let bytes = match kind_name {
        "truncated" => {
            let text = text_of(message);
            text[..rng.below(text.len())].to_vec()
        }
        "wrong type" => {
            let mut m = message.clone();
            m.insert(field.to_owned(), rng.pick(&wrong_types(kind)).clone());
            text_of(&m)
        }
        "missing field" => {
            let mut m = message.clone();
            m.remove(field);
            text_of(&m)
        }
        "huge number" => with_raw(message, field, &huge_numbers(kind, rng)),
        "invalid UTF-8" => match rng.below(3) {
            // In a field the decoder reads, in one it skips, or in a name.
            0 => with_raw(message, field, &invalid_utf8(rng)),
            1 => with_raw(message, "note", &invalid_utf8(rng)),
            _ => {
                let mut m = message.clone();
                m.insert(MARK.to_owned(), json!(1));
                replace_mark(&text_of(&m), &invalid_utf8(rng))
            }
        },
        "deep nesting" => {
            let depth = *rng.pick(&[2, 64, 129, 1_000, 100_000]) + rng.below(8);
            if rng.one_in(3) {
                // The whole message inside arrays.
                let mut s = vec![b'['; depth];
                s.extend(text_of(message));
                s.extend(std::iter::repeat_n(b']', depth));
                s
            } else {
                with_raw(message, field, &nested(depth, rng.one_in(2)))
            }
        }
        "large" => {
            let size = 100_000 + rng.below(LARGEST - 100_000);
            let inner = *rng.pick(&["wrong type", "missing field", "rule", "invalid UTF-8"]);
            let flawed = make(rng, shape, message, inner).expect("a body");
            if rng.one_in(2) || flawed.len() < 3 {
                padded(&flawed, size)
            } else {
                // The flaw, and a long string in a field of its own.
                let mut out = flawed[..flawed.len() - 1].to_vec();
                out.extend(b",\"filler\":\"");
                out.extend(std::iter::repeat_n(b'x', size));
                out.extend(b"\"}");
                out
            }
        }
        "empty" => match rng.below(3) {
            0 => return None,
            1 => Vec::new(),
            _ => b" \n\t ".to_vec(),
        },
        "random bytes" => {
            let n = 1 + rng.below(4096);
            if rng.one_in(2) {
                rng.bytes(n)
            } else {
                // Printable noise gets past UTF-8 to the JSON parser.
                (0..n)
                    .map(|_| 0x20 + rng.below(0x5f) as u8)
                    .collect::<Vec<u8>>()
            }
        }
        "wrong shape" => {
            let whole = Value::String(String::from_utf8(text_of(message)).expect("UTF-8"));
            let shapes = [
                json!([]),
                json!(42),
                json!("text"),
                Value::Null,
                json!(true),
                json!([1, 2, 3]),
                json!([Value::Object(message.clone())]),
                // Encoded twice: a JSON string holding the message.
                whole,
            ];
            serde_json::to_vec(rng.pick(&shapes)).expect("serialises")
        }
        "rule" => {
            let (field, value) = rng.pick(&shape.rules);
            let mut m = message.clone();
            m.insert((*field).to_owned(), value.clone());
            text_of(&m)
        }
        other => unreachable!("{other}"),
    };
    Some(bytes)
}

/// A record of `topic` with `payload`.
pub fn record(topic: &str, payload: Option<Vec<u8>>) -> SourceRecord {
    SourceRecord {
        origin: Origin {
            topic: Topic::intern(topic),
            partition: 0,
            offset: 0,
            epoch: 1,
        },
        key: None,
        payload,
        timestamp_ms: None,
        headers: Vec::new(),
    }
}

/// What a run fed the decoder.
#[derive(Debug)]
pub struct Tally {
    pub good: usize,
    pub malformed: BTreeMap<&'static str, usize>,
}

/// Feeds `decode` [`MALFORMED`] malformed messages of `shape` with good ones from `good`
/// between them (about one in four), and checks every answer.
pub fn run<T: PartialEq + Debug>(
    seed: u64,
    shape: &Shape,
    mut good: impl FnMut(&mut Rng) -> (Map<String, Value>, T),
    decode: impl Fn(Option<Vec<u8>>) -> Result<T, Poison>,
) -> Tally {
    let mut rng = Rng::new(seed);
    let mut tally = Tally {
        good: 0,
        malformed: BTreeMap::new(),
    };
    let mut bad = 0;
    let mut case = 0u64;
    while bad < MALFORMED {
        case += 1;
        let (message, want) = good(&mut rng);
        if rng.one_in(4) {
            let mut text = text_of(&message);
            if rng.one_in(100) {
                text = padded(&text, 100_000 + rng.below(LARGEST - 100_000));
            }
            match decode(Some(text.clone())) {
                Ok(got) => assert_eq!(got, want, "seed {seed}, case {case}: a good message"),
                Err(e) => panic!(
                    "seed {seed}, case {case}: a good message refused ({e}): {}",
                    String::from_utf8_lossy(&text[..text.len().min(2000)])
                ),
            }
            tally.good += 1;
        } else {
            let (kind, bytes) = malformed(&mut rng, shape, &message);
            if let Ok(got) = decode(bytes.clone()) {
                let shown = bytes
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(&b[..b.len().min(2000)]).into_owned());
                panic!("seed {seed}, case {case}: {kind} accepted as {got:?}: {shown:?}");
            }
            *tally.malformed.entry(kind).or_default() += 1;
            bad += 1;
        }
    }
    for kind in KINDS {
        assert!(
            tally.malformed.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} message generated: {tally:?}"
        );
    }
    assert!(tally.good >= MALFORMED / 4, "{tally:?}");
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic() {
        let (mut a, mut b) = (Rng::new(3), Rng::new(3));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        assert_ne!(Rng::new(3).next_u64(), Rng::new(4).next_u64());
    }

    #[test]
    fn a_mark_is_replaced_by_raw_text() {
        let m = json!({"a": 1, "b": "x"}).as_object().unwrap().clone();
        assert_eq!(
            with_raw(&m, "b", b"1e400"),
            br#"{"a":1,"b":1e400}"#.to_vec()
        );
        assert_eq!(padded(b"{}", 5), b"{   }".to_vec());
    }
}
