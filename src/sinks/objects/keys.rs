//! Object keys: `<prefix>/<stream>/year=YYYY/month=MM/day=DD[/hour=HH]/
//! data_<YYYYMMDDHHMMSS of the first record>_<partition>_<first offset>.g<generation>.parquet`.
//!
//! A [`Layout`] holds the prefix, the time zone and the granularity (hour or day). The
//! partition directory and the time in the name are the record time in that time zone; the
//! stream (e.g. `tick`) is the pipeline's (see [`super::parquet::ParquetFormat::stream`]) and
//! an empty stream or prefix adds no level. The generation is the writer's ownership
//! generation of the partition (see `ledger`): two owners of a partition never write the same
//! key, and a replay by the same owner writes the same keys. A batch that spans periods becomes
//! one object per period (and per stream and partition). Names without a generation (written
//! before generations existed) read as generation 0.

use std::collections::BTreeMap;

use actord_actors::record::Envelope;
use actord_actors::scheduler::Tz;
use chrono::{DateTime, Datelike, Offset, TimeZone, Timelike, Utc};

use super::parquet::ParquetFormat;

/// How long one partition directory spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// `year=/month=/day=/hour=`
    Hour,
    /// `year=/month=/day=`
    Day,
}

impl Granularity {
    fn seconds(self) -> i64 {
        match self {
            Granularity::Hour => 3_600,
            Granularity::Day => 86_400,
        }
    }
}

/// Where a sink's objects go and how they are named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
    time_zone: Tz,
    granularity: Granularity,
}

impl Layout {
    /// `prefix` is trimmed of `/`; an empty prefix puts the streams at the root of the bucket or
    /// directory.
    pub fn new(prefix: impl Into<String>, time_zone: Tz, granularity: Granularity) -> Self {
        Layout {
            prefix: prefix.into().trim_matches('/').to_owned(),
            time_zone,
            granularity,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// Seconds since the epoch of the wall-clock time in the layout's time zone.
    fn local_seconds(&self, time: DateTime<Utc>) -> i64 {
        let utc = time.timestamp();
        if matches!(self.time_zone, Tz::UTC | Tz::Etc__UTC) {
            // The common case needs no look-up of the zone's offsets.
            return utc;
        }
        let offset = self
            .time_zone
            .offset_from_utc_datetime(&time.naive_utc())
            .fix()
            .local_minus_utc();
        utc + i64::from(offset)
    }

    /// The partition period of a record time: the count of local hours or days since the
    /// epoch. Records of one period share a directory.
    pub fn period(&self, time: DateTime<Utc>) -> i64 {
        self.local_seconds(time)
            .div_euclid(self.granularity.seconds())
    }

    /// The directory of a stream's records at `time`, ending in `/`:
    /// `market-data/tick/year=2025/month=11/day=19/hour=16/`.
    pub fn dir(&self, stream: &str, time: DateTime<Utc>) -> String {
        let local = DateTime::from_timestamp(self.local_seconds(time), 0)
            .unwrap_or_default()
            .naive_utc();
        let mut out = String::with_capacity(self.prefix.len() + stream.len() + 48);
        for level in [self.prefix.as_str(), stream] {
            if !level.is_empty() {
                out.push_str(level);
                out.push('/');
            }
        }
        out.push_str(&format!(
            "year={:04}/month={:02}/day={:02}/",
            local.year(),
            local.month(),
            local.day()
        ));
        if self.granularity == Granularity::Hour {
            out.push_str(&format!("hour={:02}/", local.hour()));
        }
        out
    }

    /// The key of the object whose first record is at `first_time`, `partition`,
    /// `first_offset`, written by the owner of generation `generation`.
    pub fn key(
        &self,
        stream: &str,
        first_time: DateTime<Utc>,
        partition: i32,
        first_offset: i64,
        generation: u64,
    ) -> String {
        format!(
            "{}data_{}_{partition}_{first_offset}.g{generation}.parquet",
            self.dir(stream, first_time),
            self.stamp(first_time)
        )
    }

    /// The record time as it appears in object names, to the second, in the layout's time
    /// zone.
    pub fn stamp(&self, time: DateTime<Utc>) -> String {
        DateTime::from_timestamp(self.local_seconds(time), 0)
            .unwrap_or_default()
            .format("%Y%m%d%H%M%S")
            .to_string()
    }
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

/// One object's worth of records: same stream, topic, partition and period.
pub struct Group<'a, R> {
    pub stream: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub records: Vec<&'a Envelope<R>>,
}

impl<R> Group<'_, R> {
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

/// Splits a batch into objects by (stream, topic, partition, period), each in offset order.
pub fn group<'a, F: ParquetFormat>(
    format: &'a F,
    layout: &Layout,
    records: &'a [Envelope<F::Record>],
) -> Vec<Group<'a, F::Record>> {
    type Slot<'a> = (&'a str, &'a str, i32, i64);
    let mut groups: BTreeMap<Slot<'a>, Vec<&'a Envelope<F::Record>>> = BTreeMap::new();
    for e in records {
        let period = layout.period(format.time(&e.record));
        let o = &e.source.origin;
        groups
            .entry((
                format.stream(&e.record),
                o.topic.as_str(),
                o.partition,
                period,
            ))
            .or_default()
            .push(e);
    }
    groups
        .into_iter()
        .map(|((stream, topic, partition, _), mut records)| {
            records.sort_by_key(|e| e.source.origin.offset);
            Group {
                stream,
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
    use crate::sinks::objects::parquet::tests::{reading, Readings};

    fn time(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn hourly_utc_keys_follow_the_seed_layout() {
        let layout = Layout::new("market-data/", Tz::UTC, Granularity::Hour);
        let t = time("2025-11-19T16:12:34.567Z");
        assert_eq!(
            layout.key("tick", t, 2, 1234, 7),
            "market-data/tick/year=2025/month=11/day=19/hour=16/data_20251119161234_2_1234.g7.parquet"
        );
        assert_eq!(
            layout.dir("orderbook", t),
            "market-data/orderbook/year=2025/month=11/day=19/hour=16/"
        );
    }

    #[test]
    fn daily_keys_follow_the_time_zone_around_its_midnight() {
        let kst = Layout::new("", Tz::Asia__Seoul, Granularity::Day);
        // 14:59:59 UTC is 23:59:59 KST, 15:00 UTC the next day's midnight.
        let before = time("2025-11-19T14:59:59Z");
        let after = time("2025-11-19T15:00:00Z");
        assert_eq!(
            kst.key("", before, 0, 41, 1),
            "year=2025/month=11/day=19/data_20251119235959_0_41.g1.parquet"
        );
        assert_eq!(
            kst.key("", after, 3, 42, 2),
            "year=2025/month=11/day=20/data_20251120000000_3_42.g2.parquet"
        );
        assert_eq!(kst.period(after), kst.period(before) + 1);
        let prefixed = Layout::new("fms", Tz::Asia__Seoul, Granularity::Day);
        assert_eq!(
            prefixed.dir("temphum", after),
            "fms/temphum/year=2025/month=11/day=20/"
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
    fn a_batch_spanning_periods_splits_per_period_and_partition() {
        let layout = Layout::new("market-data", Tz::UTC, Granularity::Hour);
        let batch = vec![
            reading(0, 10, "2025-11-19T16:59:59Z", 1.0),
            reading(1, 3, "2025-11-19T16:30:00Z", 1.0),
            reading(0, 11, "2025-11-19T17:00:00Z", 1.0),
            reading(0, 12, "2025-11-19T17:00:01Z", 1.0),
        ];
        let groups = group(&Readings, &layout, &batch);
        let keys: Vec<String> = groups
            .iter()
            .map(|g| {
                layout.key(
                    g.stream,
                    g.records[0].record.time,
                    g.partition,
                    g.first_offset(),
                    1,
                )
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                "market-data/year=2025/month=11/day=19/hour=16/data_20251119165959_0_10.g1.parquet",
                "market-data/year=2025/month=11/day=19/hour=17/data_20251119170000_0_11.g1.parquet",
                "market-data/year=2025/month=11/day=19/hour=16/data_20251119163000_1_3.g1.parquet",
            ]
        );
        let sizes: Vec<usize> = groups.iter().map(|g| g.records.len()).collect();
        assert_eq!(sizes, vec![1, 2, 1]);
        // The same records by KST day: one object per partition.
        let daily = Layout::new("", Tz::Asia__Seoul, Granularity::Day);
        let sizes: Vec<usize> = group(&Readings, &daily, &batch)
            .iter()
            .map(|g| g.records.len())
            .collect();
        assert_eq!(sizes, vec![3, 1]);
    }
}
