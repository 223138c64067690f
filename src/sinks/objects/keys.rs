//! Object keys: `market-data/<kind>/year=YYYY/month=MM/day=DD/hour=HH/
//! data_<YYYYMMDDHHMMSS of the first record>_<partition>_<first offset>.parquet`, partitioned by
//! record time in UTC. Keys are deterministic, so a replay of the same records writes the same
//! keys; a batch that spans hours becomes one object per hour (and per partition).

use std::collections::BTreeMap;

use actord_actors::record::Envelope;
use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::pipelines::recorder::model::Market;

/// The two kinds of market data, each under its own prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Tick,
    OrderBook,
}

impl Kind {
    pub fn of(m: &Market) -> Kind {
        match m {
            Market::Tick(_) => Kind::Tick,
            Market::OrderBook(_) => Kind::OrderBook,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tick => "tick",
            Kind::OrderBook => "orderbook",
        }
    }
}

/// The hour prefix of a record time: `market-data/tick/year=2025/month=11/day=19/hour=16/`.
pub fn hour_prefix(root: &str, kind: Kind, time: DateTime<Utc>) -> String {
    format!(
        "{root}/{}/year={:04}/month={:02}/day={:02}/hour={:02}/",
        kind.as_str(),
        time.year(),
        time.month(),
        time.day(),
        time.hour()
    )
}

/// The key of the object whose first record is at `first` (time, partition, offset).
pub fn object_key(
    root: &str,
    kind: Kind,
    first_time: DateTime<Utc>,
    partition: i32,
    first_offset: i64,
) -> String {
    format!(
        "{}data_{}_{partition}_{first_offset}.parquet",
        hour_prefix(root, kind, first_time),
        first_time.format("%Y%m%d%H%M%S")
    )
}

/// The partition and first offset in an object's file name
/// (`data_20251119161234_2_1234.parquet` → `(2, 1234)`); `None` for any other name.
pub fn parse_object_name(name: &str) -> Option<(i32, i64)> {
    let stem = name.strip_prefix("data_")?.strip_suffix(".parquet")?;
    let mut parts = stem.rsplitn(3, '_');
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let time = parts.next()?;
    (time.len() == 14 && time.bytes().all(|b| b.is_ascii_digit())).then_some((partition, offset))
}

/// One object's worth of records: same kind, same partition, same hour.
pub struct Group<'a> {
    pub kind: Kind,
    pub topic: &'a str,
    pub partition: i32,
    pub records: Vec<&'a Envelope<Market>>,
}

impl Group<'_> {
    /// The key of this group's object (named after its first record in offset order).
    pub fn key(&self, root: &str) -> String {
        let first = self.records[0];
        object_key(
            root,
            self.kind,
            first.record.time(),
            self.partition,
            first.source.origin.offset,
        )
    }
}

/// Splits a batch into objects by (kind, topic, partition, UTC hour), each in offset order.
pub fn group(records: &[Envelope<Market>]) -> Vec<Group<'_>> {
    let mut groups: BTreeMap<(Kind, &str, i32, i64), Vec<&Envelope<Market>>> = BTreeMap::new();
    for e in records {
        let hour = e.record.time().timestamp().div_euclid(3600);
        let o = &e.source.origin;
        groups
            .entry((Kind::of(&e.record), o.topic.as_str(), o.partition, hour))
            .or_default()
            .push(e);
    }
    groups
        .into_iter()
        .map(|((kind, topic, partition, _), mut records)| {
            records.sort_by_key(|e| e.source.origin.offset);
            Group {
                kind,
                topic,
                partition,
                records,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipelines::recorder::model::Tick;
    use actord_actors::record::{Acker, Origin, SourceRecord, Topic};

    fn tick(partition: i32, offset: i64, time: &str) -> Envelope<Market> {
        Envelope {
            record: Market::Tick(Tick {
                time: DateTime::parse_from_rfc3339(time)
                    .unwrap()
                    .with_timezone(&Utc),
                symbol: "A".into(),
                price: 1.0,
                volume: offset,
                change: 0.0,
                change_rate: 0.0,
            }),
            source: SourceRecord {
                origin: Origin {
                    topic: Topic::intern("market.tick"),
                    partition,
                    offset,
                    epoch: 1,
                },
                key: None,
                payload: None,
                timestamp_ms: None,
                headers: Vec::new(),
            },
            acker: Acker::new(|_| {}),
            bytes: 0,
        }
    }

    #[test]
    fn keys_follow_the_seed_layout() {
        let t = DateTime::parse_from_rfc3339("2025-11-19T16:12:34.567Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            object_key("market-data", Kind::Tick, t, 2, 1234),
            "market-data/tick/year=2025/month=11/day=19/hour=16/data_20251119161234_2_1234.parquet"
        );
        assert_eq!(
            hour_prefix("market-data", Kind::OrderBook, t),
            "market-data/orderbook/year=2025/month=11/day=19/hour=16/"
        );
    }

    #[test]
    fn object_names_parse_back_to_partition_and_offset() {
        assert_eq!(
            parse_object_name("data_20251119161234_2_1234.parquet"),
            Some((2, 1234))
        );
        assert_eq!(parse_object_name("data_20251119161234.parquet"), None);
        assert_eq!(parse_object_name("data_2025_2_1234.parquet"), None);
        assert_eq!(parse_object_name("other_20251119161234_2_1.parquet"), None);
        assert_eq!(parse_object_name("data_20251119161234_x_1.parquet"), None);
    }

    #[test]
    fn a_batch_spanning_hours_splits_per_hour_and_partition() {
        let batch = vec![
            tick(0, 10, "2025-11-19T16:59:59Z"),
            tick(1, 3, "2025-11-19T16:30:00Z"),
            tick(0, 11, "2025-11-19T17:00:00Z"),
            tick(0, 12, "2025-11-19T17:00:01Z"),
        ];
        let keys: Vec<String> = group(&batch).iter().map(|g| g.key("market-data")).collect();
        assert_eq!(
            keys,
            vec![
                "market-data/tick/year=2025/month=11/day=19/hour=16/data_20251119165959_0_10.parquet",
                "market-data/tick/year=2025/month=11/day=19/hour=17/data_20251119170000_0_11.parquet",
                "market-data/tick/year=2025/month=11/day=19/hour=16/data_20251119163000_1_3.parquet",
            ]
        );
        let sizes: Vec<usize> = group(&batch).iter().map(|g| g.records.len()).collect();
        assert_eq!(sizes, vec![1, 2, 1]);
    }
}
