//! `Schedule`: when an entry falls due — a fixed interval, or a 5-field cron expression read in a time zone.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use thiserror::Error;

/// The zone of an entry that names none: the seeds' deployments run on Korean time.
pub const DEFAULT_TIME_ZONE: Tz = chrono_tz::Asia::Seoul;

/// Why a schedule, a time zone or a scheduler's entries are not usable. The config layer adds
/// the TOML key to the message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("invalid interval {input:?}: {reason}")]
    Interval { input: String, reason: String },
    #[error("invalid cron expression {input:?}: {reason}")]
    Cron { input: String, reason: String },
    #[error("unknown time zone {input:?}: expected an IANA name such as \"Asia/Seoul\", \"Europe/Berlin\" or \"UTC\"")]
    TimeZone { input: String },
    #[error("a schedule entry needs a name")]
    EmptyName,
    #[error("schedule entry {0:?} is defined twice")]
    DuplicateEntry(String),
    #[error("schedule entry {entry:?}: the lease ttl must be at least 3 ms, got {ttl:?}")]
    LeaseTtl { entry: String, ttl: Duration },
}

/// When an entry falls due.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// Every `Duration` of elapsed time, evenly spaced in UTC whatever the zone does.
    Every(Duration),
    /// At the wall clock times a cron expression names, in the entry's time zone.
    Cron(CronExpr),
}

/// A parsed 5-field cron expression and the text it came from.
#[derive(Clone, Debug)]
pub struct CronExpr {
    text: String,
    cron: Box<Cron>,
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl CronExpr {
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Schedule {
    /// Reads either form: an interval (`50s`, `10m`, `3d`, `1h30m`) or a cron expression
    /// (`0 */2 * * *`, `@daily`).
    pub fn parse(input: &str) -> Result<Schedule, ScheduleError> {
        let text = input.trim();
        let fields = text.split_whitespace().count();
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        // Five fields, an alias or cron punctuation mean cron; so do several bare numbers
        // (`0 9 1 1` is a cron expression missing a field, not an interval).
        let interval_like = fields < 5
            && compact.starts_with(|c: char| c.is_ascii_digit())
            && compact.chars().all(|c| c.is_ascii_alphanumeric())
            && (fields == 1 || compact.chars().any(|c| c.is_ascii_alphabetic()));
        if interval_like {
            Schedule::every(text)
        } else {
            Schedule::cron(text)
        }
    }

    /// Parses an interval: one or more `<number><unit>` parts, units `ms`, `s`, `m`, `h`, `d`
    /// and `w` (long forms such as `min`, `hours` or `days` too).
    pub fn every(input: &str) -> Result<Schedule, ScheduleError> {
        parse_interval(input).map(Schedule::Every)
    }

    /// Parses a cron expression of exactly five fields (minute, hour, day of month, month, day
    /// of week), as the seeds write them, or an alias such as `@hourly`. `L` (last day of the
    /// month), `W`, `#` and names (`MON`, `JAN`) are understood.
    pub fn cron(input: &str) -> Result<Schedule, ScheduleError> {
        let text = input.trim();
        let err = |reason: String| ScheduleError::Cron {
            input: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(err("the expression is empty".to_owned()));
        }
        if !text.starts_with('@') {
            let fields = text.split_whitespace().count();
            if fields != 5 {
                return Err(err(format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week), found {fields}"
                )));
            }
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(text)
            .map_err(|e| err(e.to_string().trim_end_matches('.').to_owned()))?;
        // An expression that names no real date (the 30th of February) would leave the entry
        // idle forever; say so at start-up instead. Four years from a leap year's start cover
        // every date a 5-field expression can name.
        let probe = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single();
        if let Some(from) = probe {
            let found = cron.find_next_occurrence(&from, true);
            if !matches!(found, Ok(t) if t < from + TimeDelta::days(4 * 366)) {
                return Err(err("it names no date that exists".to_owned()));
            }
        }
        Ok(Schedule::Cron(CronExpr {
            text: text.to_owned(),
            cron: Box::new(cron),
        }))
    }

    /// The first due time strictly after `after`.
    ///
    /// An interval's due times are `anchor + k * every`, so they keep their phase however late
    /// a run starts or a wake-up comes. A cron expression is read on the wall clock of `tz`: a
    /// time that a spring-forward skips runs at the first instant after the gap, and a time
    /// that a fall-back repeats runs once, at its first occurrence. `None` only when the
    /// expression has no further match.
    pub fn next_after(
        &self,
        after: DateTime<Utc>,
        tz: Tz,
        anchor: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(every) => {
                let step = i64::try_from(every.as_millis()).ok()?.max(1);
                if anchor > after {
                    return Some(anchor);
                }
                let since = (after - anchor).num_milliseconds();
                let k = since / step + 1;
                anchor.checked_add_signed(TimeDelta::try_milliseconds(k.checked_mul(step)?)?)
            }
            Schedule::Cron(expr) => expr
                .cron
                .find_next_occurrence(&after.with_timezone(&tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(every) => write!(f, "every {}", format_interval(*every)),
            Schedule::Cron(expr) => f.write_str(&expr.text),
        }
    }
}

/// Reads an IANA time zone name (`Asia/Seoul`, `America/New_York`, `UTC`).
pub fn parse_time_zone(input: &str) -> Result<Tz, ScheduleError> {
    input
        .trim()
        .parse::<Tz>()
        .map_err(|_| ScheduleError::TimeZone {
            input: input.to_owned(),
        })
}

/// `1h30m` style, the inverse of the interval parser.
pub fn format_interval(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

fn parse_interval(input: &str) -> Result<Duration, ScheduleError> {
    let text = input.trim();
    let err = |reason: String| ScheduleError::Interval {
        input: text.to_owned(),
        reason,
    };
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() {
        return Err(err("the interval is empty".to_owned()));
    }
    let mut total: u128 = 0;
    let mut rest = compact.as_str();
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(err(format!(
                "expected a number at {rest:?}, as in 50s, 10m, 2h, 3d or 1h30m"
            )));
        }
        let number: u128 = rest[..digits]
            .parse()
            .map_err(|_| err(format!("{:?} is too large", &rest[..digits])))?;
        rest = &rest[digits..];
        let letters = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        if letters == 0 {
            return Err(err(format!("{number} needs a unit (ms, s, m, h, d or w)")));
        }
        let unit = &rest[..letters];
        let millis: u128 = match unit.to_ascii_lowercase().as_str() {
            "ms" | "msec" | "millis" => 1,
            "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000,
            "d" | "day" | "days" => 86_400_000,
            "w" | "week" | "weeks" => 604_800_000,
            other => {
                return Err(err(format!(
                    "unknown unit {other:?} (expected ms, s, m, h, d or w)"
                )))
            }
        };
        total = number
            .checked_mul(millis)
            .and_then(|v| total.checked_add(v))
            .filter(|v| *v <= u128::from(u64::MAX))
            .ok_or_else(|| err("the interval is too long".to_owned()))?;
        rest = &rest[letters..];
    }
    if total == 0 {
        return Err(err("the interval must be longer than zero".to_owned()));
    }
    Ok(Duration::from_millis(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn cron(s: &str) -> Schedule {
        Schedule::parse(s).unwrap()
    }

    #[test]
    fn parses_intervals() {
        let cases = [
            ("3d", 3 * 86_400),
            ("50s", 50),
            ("10m", 600),
            ("2h", 7_200),
            ("1h30m", 5_400),
            ("1h 30m", 5_400),
            ("2 days", 2 * 86_400),
            ("1w", 7 * 86_400),
        ];
        for (text, secs) in cases {
            assert_eq!(
                Schedule::parse(text).unwrap(),
                Schedule::Every(Duration::from_secs(secs)),
                "{text}"
            );
        }
        assert_eq!(
            Schedule::parse("250ms").unwrap(),
            Schedule::Every(Duration::from_millis(250))
        );
        assert_eq!(Schedule::parse("1h30m").unwrap().to_string(), "every 1h30m");
        assert_eq!(format_interval(Duration::from_secs(3 * 86_400)), "3d");
    }

    #[test]
    fn rejects_bad_intervals_with_a_reason() {
        let msg = |s: &str| Schedule::parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("3x"),
            "invalid interval \"3x\": unknown unit \"x\" (expected ms, s, m, h, d or w)"
        );
        assert_eq!(
            msg("10"),
            "invalid interval \"10\": 10 needs a unit (ms, s, m, h, d or w)"
        );
        assert_eq!(
            msg("0s"),
            "invalid interval \"0s\": the interval must be longer than zero"
        );
        assert!(matches!(
            Schedule::every("h"),
            Err(ScheduleError::Interval { .. })
        ));
    }

    #[test]
    fn parses_cron_and_rejects_bad_expressions() {
        assert_eq!(cron("0 */2 * * *").to_string(), "0 */2 * * *");
        assert!(Schedule::parse("@daily").is_ok());
        assert!(Schedule::parse("0 9 L * *").is_ok());
        assert!(Schedule::parse("30 2 * * MON-FRI").is_ok());
        let msg = |s: &str| Schedule::parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("0 9 * *"),
            "invalid cron expression \"0 9 * *\": expected 5 fields (minute hour day-of-month month day-of-week), found 4"
        );
        assert!(msg("0 0 0 9 * *").contains("found 6"));
        assert!(msg("61 * * * *").starts_with("invalid cron expression \"61 * * * *\": "));
        assert_eq!(
            msg("0 0 30 2 *"),
            "invalid cron expression \"0 0 30 2 *\": it names no date that exists"
        );
        assert!(Schedule::parse("0 0 29 2 *").is_ok());
        assert!(msg("").starts_with("invalid cron expression"));
    }

    #[test]
    fn parses_time_zones() {
        assert_eq!(parse_time_zone("Asia/Seoul").unwrap(), DEFAULT_TIME_ZONE);
        assert_eq!(parse_time_zone(" UTC ").unwrap(), chrono_tz::UTC);
        assert_eq!(
            parse_time_zone("Asia/Seol").unwrap_err().to_string(),
            "unknown time zone \"Asia/Seol\": expected an IANA name such as \"Asia/Seoul\", \"Europe/Berlin\" or \"UTC\""
        );
    }

    #[test]
    fn intervals_keep_their_phase() {
        let every = Schedule::every("10m").unwrap();
        let anchor = utc("2025-01-01T00:00:05Z");
        let tz = DEFAULT_TIME_ZONE;
        assert_eq!(
            every.next_after(anchor, tz, anchor),
            Some(utc("2025-01-01T00:10:05Z"))
        );
        // A late wake-up does not shift later due times.
        assert_eq!(
            every.next_after(utc("2025-01-01T00:23:00Z"), tz, anchor),
            Some(utc("2025-01-01T00:30:05Z"))
        );
        assert_eq!(
            every.next_after(utc("2024-12-31T00:00:00Z"), tz, anchor),
            Some(anchor)
        );
    }

    #[test]
    fn cron_in_seoul_crosses_midnight_and_month_end() {
        let tz = DEFAULT_TIME_ZONE;
        let anchor = utc("2025-01-01T00:00:00Z");
        // 23:30 KST on Jan 31 is 14:30 UTC.
        let t = utc("2025-01-31T14:30:00Z");
        assert_eq!(
            cron("0 0 * * *").next_after(t, tz, anchor),
            Some(utc("2025-01-31T15:00:00Z")) // 00:00 KST Feb 1
        );
        assert_eq!(
            cron("0 */2 * * *").next_after(t, tz, anchor),
            Some(utc("2025-01-31T15:00:00Z"))
        );
        assert_eq!(
            cron("0 0 1 * *").next_after(t, tz, anchor),
            Some(utc("2025-01-31T15:00:00Z"))
        );
        // Last day of February 2025 at 09:00 KST.
        assert_eq!(
            cron("0 9 L * *").next_after(utc("2025-02-01T00:00:00Z"), tz, anchor),
            Some(utc("2025-02-28T00:00:00Z"))
        );
    }

    #[test]
    fn cron_across_dst_in_new_york_and_berlin() {
        let ny = parse_time_zone("America/New_York").unwrap();
        let anchor = utc("2025-01-01T00:00:00Z");
        let at = cron("30 2 * * *");
        // Spring forward, Sunday 9 March 2025: 02:30 does not exist, 03:00 EDT (07:00Z) runs.
        assert_eq!(
            at.next_after(utc("2025-03-09T05:00:00Z"), ny, anchor),
            Some(utc("2025-03-09T07:00:00Z"))
        );
        assert_eq!(
            at.next_after(utc("2025-03-09T07:00:00Z"), ny, anchor),
            Some(utc("2025-03-10T06:30:00Z"))
        );
        // Fall back, Sunday 2 November 2025: 01:30 happens twice and runs once.
        let early = cron("30 1 * * *");
        let first = early.next_after(utc("2025-11-02T04:00:00Z"), ny, anchor);
        assert_eq!(first, Some(utc("2025-11-02T05:30:00Z"))); // 01:30 EDT
        assert_eq!(
            early.next_after(first.unwrap(), ny, anchor),
            Some(utc("2025-11-03T06:30:00Z"))
        );
        let berlin = parse_time_zone("Europe/Berlin").unwrap();
        // 30 March 2025: 02:00 CET jumps to 03:00 CEST (01:00Z).
        assert_eq!(
            cron("0 2 * * *").next_after(utc("2025-03-29T02:00:00Z"), berlin, anchor),
            Some(utc("2025-03-30T01:00:00Z"))
        );
    }
}
