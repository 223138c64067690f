//! Run modes (`incremental`, `fresh`, `continue [--from-date D]`) and the from-date syntax:
//! `YYYY-MM-DD[THH:MM[:SS]][offset]`, read in Asia/Seoul when no offset is given.

use actord_actors::scheduler::Tz;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

/// Korea Standard Time, the zone of dates without an offset and of the object partitions.
pub const KST: Tz = Tz::Asia__Seoul;

/// Where a run starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From the group's committed offsets; from the earliest where there are none.
    Incremental,
    /// From the beginning of every partition, whatever was committed; replaces what earlier
    /// runs wrote for the records still in the topic.
    Fresh,
    /// From the first record at or after this time (older records are skipped on the client
    /// too); without a time, like `Incremental`.
    Continue(Option<DateTime<Utc>>),
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Incremental => "incremental",
            Mode::Fresh => "fresh",
            Mode::Continue(_) => "continue",
        }
    }

    /// The time older records are skipped below.
    pub fn from(&self) -> Option<DateTime<Utc>> {
        match self {
            Mode::Continue(from) => *from,
            _ => None,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Continue(Some(t)) => write!(
                f,
                "continue from {}",
                t.with_timezone(&KST).format("%Y-%m-%dT%H:%M:%S%:z")
            ),
            m => f.write_str(m.name()),
        }
    }
}

/// A mode by name, with the from-date that only `continue` takes.
pub fn parse(name: &str, from_date: Option<&str>) -> Result<Mode, String> {
    let from = from_date
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(parse_date)
        .transpose()?;
    match (name.trim(), from) {
        ("incremental", None) => Ok(Mode::Incremental),
        ("fresh", None) => Ok(Mode::Fresh),
        ("continue", from) => Ok(Mode::Continue(from)),
        ("incremental" | "fresh", Some(_)) => Err(format!(
            "a from-date applies to mode \"continue\" only, not {name:?}"
        )),
        (other, _) => Err(format!(
            "expected one of incremental, fresh, continue, found {other:?}"
        )),
    }
}

/// `YYYY-MM-DD[THH:MM[:SS]][offset]`; the offset is `Z`, `+09:00` or `+0900`; without one the
/// time is Asia/Seoul's.
pub fn parse_date(text: &str) -> Result<DateTime<Utc>, String> {
    let bad = || {
        format!(
            "expected a date YYYY-MM-DD[THH:MM[:SS]][offset] such as 2025-11-19 or 2025-11-19T09:30+09:00, found {text:?}"
        )
    };
    let t = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    let (local, offset) = split_offset(t).ok_or_else(bad)?;
    let naive = if local.len() == 10 {
        NaiveDate::parse_from_str(local, "%Y-%m-%d")
            .map(|d| d.and_time(NaiveTime::MIN))
            .map_err(|_| bad())?
    } else {
        let local = local.replacen(' ', "T", 1);
        NaiveDateTime::parse_from_str(&local, "%Y-%m-%dT%H:%M:%S")
            .or_else(|_| NaiveDateTime::parse_from_str(&local, "%Y-%m-%dT%H:%M"))
            .map_err(|_| bad())?
    };
    match offset {
        Some(off) => off
            .from_local_datetime(&naive)
            .single()
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(bad),
        // Seoul has had no DST since 1988: every local time is unambiguous.
        None => KST
            .from_local_datetime(&naive)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(bad),
    }
}

/// Splits a trailing `Z` / `±HH:MM` / `±HHMM` offset off a date or date-time.
fn split_offset(t: &str) -> Option<(&str, Option<FixedOffset>)> {
    if let Some(local) = t.strip_suffix('Z').or_else(|| t.strip_suffix('z')) {
        return Some((local, Some(FixedOffset::east_opt(0)?)));
    }
    // An offset can only follow a time (after the `T`), where no other sign appears.
    let Some(tpos) = t.find(['T', ' ']) else {
        return Some((t, None));
    };
    let Some(sign_at) = t[tpos..].find(['+', '-']).map(|i| i + tpos) else {
        return Some((t, None));
    };
    let (local, off) = t.split_at(sign_at);
    let sign = if off.starts_with('-') { -1 } else { 1 };
    let digits: String = off[1..].chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = digits[2..].parse().ok()?;
    Some((
        local,
        Some(FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60))?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_date_without_offset_is_midnight_in_seoul() {
        assert_eq!(
            parse_date("2025-11-19").unwrap(),
            utc("2025-11-18T15:00:00Z")
        );
        assert_eq!(
            parse_date("2025-11-19T09:30").unwrap(),
            utc("2025-11-19T00:30:00Z")
        );
        assert_eq!(
            parse_date("2025-11-19T09:30:15").unwrap(),
            utc("2025-11-19T00:30:15Z")
        );
    }

    #[test]
    fn an_offset_wins_over_seoul() {
        assert_eq!(
            parse_date("2025-11-19T00:00Z").unwrap(),
            utc("2025-11-19T00:00:00Z")
        );
        assert_eq!(
            parse_date("2025-11-19T09:00+0900").unwrap(),
            utc("2025-11-19T00:00:00Z")
        );
        assert_eq!(
            parse_date("2025-11-19T01:00:00-02:00").unwrap(),
            utc("2025-11-19T03:00:00Z")
        );
    }

    #[test]
    fn malformed_dates_and_modes_are_refused() {
        for bad in [
            "2025-13-01",
            "19.11.2025",
            "2025-11-19T25:00",
            "2025-11-19T09:00+9",
        ] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
        assert!(parse("sideways", None).is_err());
        assert!(parse("fresh", Some("2025-11-19")).is_err());
        assert_eq!(parse("continue", None).unwrap(), Mode::Continue(None));
        assert_eq!(
            parse("continue", Some("2025-11-19")).unwrap().from(),
            Some(utc("2025-11-18T15:00:00Z"))
        );
    }
}
