//! Object keys: `market-data/<kind>/year=YYYY/month=MM/day=DD/hour=HH/
//! data_<YYYYMMDDHHMMSS of the first record>_<partition>_<first offset>.g<generation>.parquet`,
//! partitioned by record time in UTC. The generation is the writer's ownership generation of
//! the partition (see `ledger`): two owners of a partition never write the same key, and a
//! replay by the same owner writes the same keys. A batch that spans hours becomes one object
//! per hour (and per partition). Names without a generation (written before generations
//! existed) read as generation 0.

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

/// The key of the object whose first record is at `first` (time, partition, offset), written
/// by the owner of generation `generation`.
pub fn object_key(
    root: &str,
    kind: Kind,
    first_time: DateTime<Utc>,
    partition: i32,
    first_offset: i64,
    generation: u64,
) -> String {
    format!(
        "{}data_{}_{partition}_{first_offset}.g{generation}.parquet",
        hour_prefix(root, kind, first_time),
        stamp(first_time)
    )
}

/// The record time as it appears in object names, to the second.
pub fn stamp(time: DateTime<Utc>) -> String {
    time.format("%Y%m%d%H%M%S").to_string()
}

/// What an object's file name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectName {
    /// `YYYYMMDDHHMMSS` of the first record.
    pub stamp: String,
    pub partition: i32,
    pub offset: i64,
    pub generation: u64,
}

/// Parses `data_20251119161234_2_1234.g7.parquet` (or the name without `.g7`); `None` for any
/// other name.
pub fn parse_object_name(name: &str) -> Option<ObjectName> {
    let stem = name.strip_prefix("data_")?.strip_suffix(".parquet")?;
    let (stem, generation) = match stem.rsplit_once(".g") {
        Some((s, g)) => (s, g.parse().ok()?),
        None => (stem, 0),
    };
    let mut parts = stem.rsplitn(3, '_');
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let time = parts.next()?;
    (time.len() == 14 && time.bytes().all(|b| b.is_ascii_digit())).then(|| ObjectName {
        stamp: time.to_owned(),
        partition,
        offset,
        generation,
    })
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
    pub fn key(&self, root: &str, generation: u64) -> String {
        let first = self.records[0];
        object_key(
            root,
            self.kind,
            first.record.time(),
            self.partition,
            first.source.origin.offset,
            generation,
        )
    }

    pub fn first_offset(&self) -> i64 {
        self.records[0].source.origin.offset
    }

    pub fn last_offset(&self) -> i64 {
        self.records[self.records.len() - 1].source.origin.offset
    }

    /// The assignment epoch of the group's records (a batch holds one per partition).
    pub fn epoch(&self) -> u64 {
        self.records[0].source.origin.epoch
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
            object_key("market-data", Kind::Tick, t, 2, 1234, 7),
            "market-data/tick/year=2025/month=11/day=19/hour=16/data_20251119161234_2_1234.g7.parquet"
        );
        assert_eq!(
            hour_prefix("market-data", Kind::OrderBook, t),
            "market-data/orderbook/year=2025/month=11/day=19/hour=16/"
        );
    }

    #[test]
    fn object_names_parse_back_to_partition_offset_and_generation() {
        let parsed = |n: &str| parse_object_name(n).map(|o| (o.partition, o.offset, o.generation));
        assert_eq!(
            parsed("data_20251119161234_2_1234.g7.parquet"),
            Some((2, 1234, 7))
        );
        assert_eq!(
            parsed("data_20251119161234_2_1234.parquet"),
            Some((2, 1234, 0))
        );
        assert_eq!(
            parse_object_name("data_20251119161234_2_1234.g7.parquet")
                .unwrap()
                .stamp,
            "20251119161234"
        );
        assert_eq!(
            parse_object_name("data_20251119161234_2_1234.gx.parquet"),
            None
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
        let keys: Vec<String> = group(&batch)
            .iter()
            .map(|g| g.key("market-data", 1))
            .collect();
        assert_eq!(
            keys,
            vec![
                "market-data/tick/year=2025/month=11/day=19/hour=16/data_20251119165959_0_10.g1.parquet",
                "market-data/tick/year=2025/month=11/day=19/hour=17/data_20251119170000_0_11.g1.parquet",
                "market-data/tick/year=2025/month=11/day=19/hour=16/data_20251119163000_1_3.g1.parquet",
            ]
        );
        let sizes: Vec<usize> = group(&batch).iter().map(|g| g.records.len()).collect();
        assert_eq!(sizes, vec![1, 2, 1]);
    }
}
