//! Time: the clock, and the date, timestamp and duration formats the providers, the config and
//! the CLI read and write. Calendar arithmetic is jiff's and config durations are humantime's;
//! nothing here counts days by hand.

use std::time::Duration;

use jiff::civil;
use jiff::Timestamp;

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// Unix seconds of a date and time of the proleptic Gregorian calendar read as UTC; `None`
/// if there is no such date or time. A leap second (`:60`) counts as the second after `:59`.
pub fn utc_seconds(
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
) -> Option<i64> {
    let leap = i64::from(second == 60);
    let time = civil::Time::new(
        i8::try_from(hour).ok()?,
        i8::try_from(minute).ok()?,
        i8::try_from(second - leap).ok()?,
        0,
    )
    .ok()?;
    let at = civil_date(year, month, day)?.to_datetime(time);
    Some(jiff::tz::Offset::UTC.to_timestamp(at).ok()?.as_second() + leap)
}

/// Unix seconds of midnight UTC at the start of a calendar date; `None` if there is no such
/// date.
pub fn utc_midnight(year: i64, month: i64, day: i64) -> Option<i64> {
    utc_seconds(year, month, day, 0, 0, 0)
}

fn civil_date(year: i64, month: i64, day: i64) -> Option<civil::Date> {
    civil::Date::new(i16::try_from(year).ok()?, i8::try_from(month).ok()?, i8::try_from(day).ok()?)
        .ok()
}

/// Unix seconds of an RFC 3339 timestamp with its offset (`2026-11-22T10:00:00.123Z`,
/// `…+01:00`); `None` for anything without an offset or otherwise unreadable.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    text.parse::<Timestamp>().ok().map(Timestamp::as_second)
}

/// Unix milliseconds as UTC `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, whole seconds).
pub fn format_utc(ms: i64) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(at) => at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        // Outside jiff's range (years -9999..=9999): no stored time is, but say what it was.
        Err(_) => format!("@{ms}ms"),
    }
}

/// Unix milliseconds in UTC in a `strftime` pattern (`%Y-%m-%d`, `%H:%M:%S%.3f`), for the
/// providers' own timestamp formats; `@{ms}ms` outside jiff's range.
pub fn format_utc_as(ms: i64, pattern: &str) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(at) => at.strftime(pattern).to_string(),
        Err(_) => format!("@{ms}ms"),
    }
}

/// A config duration such as `45s`, `30m`, `2h`, `3d` or `500ms` (humantime's units, which
/// also allow combinations such as `1h 30m`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text).ok()
}

/// How long before `now_ms` the instant `at_ms` was, to the second (`12m 3s`); zero if later.
pub fn format_age(now_ms: i64, at_ms: i64) -> String {
    let secs = u64::try_from(now_ms.saturating_sub(at_ms) / 1000).unwrap_or(0);
    format_duration(Duration::from_secs(secs))
}

/// A duration as the config writes it (`5s`, `1h`, `3days`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn civil_times_to_unix_seconds() {
        assert_eq!(utc_seconds(1970, 1, 1, 0, 0, 0), Some(0));
        assert_eq!(utc_seconds(2024, 2, 29, 23, 59, 59), Some(1_709_251_199));
        assert_eq!(utc_seconds(2016, 12, 31, 23, 59, 60), Some(1_483_228_800));
        assert_eq!(utc_midnight(2000, 3, 1), Some(951_868_800));
        for (y, m, d, h, mi, s) in [
            (2023, 2, 29, 0, 0, 0),
            (2018, 13, 1, 0, 0, 0),
            (2018, 6, 31, 0, 0, 0),
            (2018, 6, 13, 24, 0, 0),
            (2018, 6, 13, 0, 60, 0),
            (2018, 6, 13, 0, 0, 61),
            (2018, 0, 1, 0, 0, 0),
        ] {
            assert_eq!(utc_seconds(y, m, d, h, mi, s), None, "{y}-{m}-{d} {h}:{mi}:{s}");
        }
    }

    #[test]
    fn rfc3339_needs_an_offset() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-20T10:14:05.123Z"), Some(1_795_169_645));
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00-00:30"), Some(1800));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00"), None);
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn config_durations() {
        assert_eq!(parse_duration("45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("3d"), Some(Duration::from_secs(3 * 86_400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h 30m"), Some(Duration::from_secs(5400)));
        for bad in ["", "5", "s", "-1s", "5 parsecs"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
