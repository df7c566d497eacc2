//! Schedules: the cron lines of `when = { schedule = "30 20 * * fri" }`, evaluated in the
//! venue's time zone.
//!
//! A line has five fields — minute (0–59), hour (0–23), day of month (1–31), month (1–12
//! or `jan`…`dec`), day of week (0–7, 0 and 7 both Sunday, or `sun`…`sat`) — each `*`, a
//! number, a range `a-b`, a list `a,b,c`, or a step `*/n` / `a-b/n`; names are
//! case-insensitive. Day of month and day of week follow Vixie cron: when both fields are
//! restricted (neither starts with `*`), a day matching either is enough; otherwise a day
//! must match both (so a `*` field is no restriction at all).
//!
//! Invariants:
//! - A [`Schedule`] is only made by [`Schedule::parse`], so its sets are never empty and
//!   hold only in-range values (day of week 7 is stored as 0).
//! - [`Schedule::next_after`] is pure and bounded: it walks the calendar month by month and
//!   day by day, skipping months, days and hours that cannot match, and gives up after
//!   [`HORIZON_YEARS`] years; it never steps minute by minute through the years.
//! - Daylight saving: a local time that does not exist (the spring-forward gap) never fires
//!   — the schedule goes on to its next match; a local time that happens twice (the
//!   fall-back fold) fires once, at its first occurrence.
//! - Errors are `String`s that name the field and say why, e.g.
//!   `day of week: 8 is out of range 0–7`.

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};

/// The longest cron line accepted. A line listing every value of every field explicitly
/// is well under this; the cap keeps a pasted wall of text out of errors and traces.
pub const MAX_LINE_LEN: usize = 1024;

/// How far ahead [`Schedule::next_after`] looks before it says "never". Eight years is the
/// longest gap between two matches of any satisfiable line (`0 0 29 2 *` across 2100,
/// which is not a leap year), plus one for the partial start year; anything without a
/// match in that window never matches (e.g. `0 0 31 2 *`). The brief's "~5 years" is
/// covered; the extra years cost a few hundred cheap month/day checks for a line that
/// never fires.
pub const HORIZON_YEARS: i16 = 9;

/// A parsed cron line. Equality compares the source line too, so two spellings of the same
/// times (`fri` and `5`) are different schedules — as they are different rule text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The line as given, without surrounding whitespace: what traces and errors show.
    source: String,
    /// Bit n: minute n (0–59).
    minutes: u64,
    /// Bit n: hour n (0–23).
    hours: u32,
    /// Bit n: day of month n (1–31).
    days: u32,
    /// Bit n: month n (1–12).
    months: u16,
    /// Bit n: weekday n, 0 = Sunday … 6 = Saturday (cron's 7 is folded into 0).
    weekdays: u8,
    /// The day-of-month field starts with `*` (Vixie's rule: then it is no restriction).
    days_star: bool,
    /// The day-of-week field starts with `*`.
    weekdays_star: bool,
}

/// What one of the five fields allows.
struct Field {
    /// The field's name in errors, as a person says it.
    name: &'static str,
    min: u32,
    max: u32,
    /// Three-letter names, `names[i]` standing for `min_name + i`.
    names: &'static [&'static str],
    min_name: u32,
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    min_name: 0,
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    min_name: 0,
};
const DAY_OF_MONTH: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
    min_name: 0,
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
    min_name: 1,
};
const DAY_OF_WEEK: Field = Field {
    name: "day of week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    min_name: 0,
};

/// One parsed field: its value set and whether it was written starting with `*`.
struct Parsed {
    bits: u64,
    star: bool,
}

impl Schedule {
    /// Parses a five-field cron line.
    ///
    /// The error names the field and why (`day of week: 8 is out of range 0–7`), and where
    /// a likely intent is clear it says what to write instead (`@daily`, `5/15`, a range
    /// that wraps around).
    pub fn parse(line: &str) -> Result<Schedule, String> {
        let line = line.trim();
        if line.len() > MAX_LINE_LEN {
            return Err(format!(
                "the schedule is {} characters long, over the limit of {MAX_LINE_LEN}",
                line.len()
            ));
        }
        if line.starts_with('@') {
            return Err(format!(
                "`{}` shorthands are not supported; write the five fields, e.g. `0 0 * * *` for @daily, `0 * * * *` for @hourly",
                shorten(line)
            ));
        }
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields.len() != 5 {
            let hint = if fields.len() > 5 {
                " (a seconds or a year field is not supported)"
            } else {
                ""
            };
            return Err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), got {}{hint}",
                fields.len()
            ));
        }
        let minute = parse_field(fields[0], &MINUTE)?;
        let hour = parse_field(fields[1], &HOUR)?;
        let dom = parse_field(fields[2], &DAY_OF_MONTH)?;
        let month = parse_field(fields[3], &MONTH)?;
        let dow = parse_field(fields[4], &DAY_OF_WEEK)?;
        // 7 is Sunday as 0 is; keep one bit per weekday. Truncation is exact: only bits 0–7
        // can be set for this field.
        let weekdays = ((dow.bits & 0x7f) | ((dow.bits >> 7) & 1)) as u8;
        Ok(Schedule {
            source: line.to_string(),
            minutes: minute.bits,
            hours: hour.bits as u32,
            days: dom.bits as u32,
            months: month.bits as u16,
            weekdays,
            days_star: dom.star,
            weekdays_star: dow.star,
        })
    }

    /// The line this schedule was parsed from (trimmed).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The first minute strictly after `after_ms` (Unix ms) that matches, as Unix ms, in
    /// zone `tz`; `None` if none within [`HORIZON_YEARS`] years (e.g. `0 0 31 2 *`) or past
    /// the end of jiff's range (year 9999).
    ///
    /// The walk is in local (civil) time: months not in the set are skipped whole, then days
    /// not matching, then hours; only a matching hour's minutes are looked at. A local time
    /// in a spring-forward gap is skipped; one in a fall-back fold resolves to its first
    /// instant, and since that instant is at or before any `after_ms` taken from the fold's
    /// second pass, the fold's repeat never fires again.
    pub fn next_after(&self, after_ms: i64, tz: &TimeZone) -> Option<i64> {
        let after = Timestamp::from_millisecond(after_ms).ok()?;
        // Any civil time before `start` maps (earliest instant) to before `after`, so the
        // walk may begin at `start`'s minute. Earliest-instant resolution is monotonic in
        // civil time, so the first candidate past `after` in civil order is the answer.
        let start = tz.to_datetime(after);
        let (sy, sm, sd, sh, smin) = (
            start.year(),
            start.month(),
            start.day(),
            start.hour(),
            start.minute(),
        );
        for year in sy..=sy.saturating_add(HORIZON_YEARS) {
            let first_month = if year == sy { sm } else { 1 };
            for month in first_month..=12 {
                if self.months & (1 << month) == 0 {
                    continue;
                }
                // Fails only past jiff's last year: nothing later can match either.
                let first = Date::new(year, month, 1).ok()?;
                let in_start_month = year == sy && month == sm;
                let first_day = if in_start_month { sd } else { 1 };
                let weekday_of_1st = first.weekday().to_sunday_zero_offset();
                for day in first_day..=first.days_in_month() {
                    let weekday = (weekday_of_1st + day - 1) % 7;
                    if !self.day_matches(day, weekday) {
                        continue;
                    }
                    let on_start_day = in_start_month && day == sd;
                    let first_hour = if on_start_day { sh } else { 0 };
                    for hour in first_hour..24 {
                        if self.hours & (1 << hour) == 0 {
                            continue;
                        }
                        let first_minute = if on_start_day && hour == sh { smin } else { 0 };
                        for minute in first_minute..60 {
                            if self.minutes & (1 << minute) == 0 {
                                continue;
                            }
                            let Ok(dt) = DateTime::new(year, month, day, hour, minute, 0, 0) else {
                                continue;
                            };
                            if let Some(ms) = first_instant(tz, dt)
                                && ms > after_ms
                            {
                                return Some(ms);
                            }
                        }
                    }
                }
            }
        }
        None
    }

    /// Vixie cron's day rule: both fields restricted → either may match; otherwise both
    /// must (a `*` field matches every day, so that is "the other one decides").
    fn day_matches(&self, day: i8, weekday: i8) -> bool {
        let dom = self.days & (1 << day) != 0;
        let dow = self.weekdays & (1 << weekday) != 0;
        if self.days_star || self.weekdays_star {
            dom && dow
        } else {
            dom || dow
        }
    }
}

/// The first instant (Unix ms) of local time `dt` in `tz`; `None` when `dt` does not exist
/// there (a spring-forward gap) or is outside jiff's range.
fn first_instant(tz: &TimeZone, dt: DateTime) -> Option<i64> {
    let ambiguous = tz.to_ambiguous_timestamp(dt);
    if matches!(ambiguous.offset(), AmbiguousOffset::Gap { .. }) {
        return None;
    }
    ambiguous.earlier().ok().map(|ts| ts.as_millisecond())
}

/// Parses one field into its set of values.
fn parse_field(text: &str, field: &Field) -> Result<Parsed, String> {
    let name = field.name;
    let mut bits = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(format!(
                "{name}: an empty item in the list `{}` (two commas, or one at an end?)",
                shorten(text)
            ));
        }
        let (range, step) = match item.split_once('/') {
            None => (item, None),
            Some((range, step)) => (range, Some(step)),
        };
        let (lo, hi) = if range == "*" {
            (field.min, field.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let lo = parse_value(a, field)?;
            let hi = parse_value(b, field)?;
            if lo > hi {
                let hint = if field.names.len() == 7 && hi == 0 {
                    format!("write {lo}-7 (7 is Sunday too)")
                } else {
                    format!("split it, as {lo}-{},{}-{hi}", field.max, field.min)
                };
                return Err(format!(
                    "{name}: the range `{}` goes backwards; ranges do not wrap around, {hint}",
                    shorten(range)
                ));
            }
            (lo, hi)
        } else {
            let value = parse_value(range, field)?;
            if step.is_some() {
                return Err(format!(
                    "{name}: `{}` steps from a single value; a step needs `*` or a range, write {value}-{}/… or */…",
                    shorten(item),
                    field.max
                ));
            }
            (value, value)
        };
        let step = match step {
            None => 1,
            Some(s) => parse_step(s, field)?,
        };
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(Parsed {
        bits,
        star: text.starts_with('*'),
    })
}

/// Parses a step: a positive number. A step wider than the range is allowed (as in cron)
/// and selects only the range's start.
fn parse_step(text: &str, field: &Field) -> Result<u32, String> {
    let name = field.name;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{name}: the step `{}` is not a number (write */15, 0-30/5)",
            shorten(text)
        ));
    }
    match text.parse::<u32>() {
        Ok(0) => Err(format!("{name}: a step of 0 never advances; use 1 or more")),
        // A step past the field's span selects only the start; cap it so the set-building
        // loop cannot overflow.
        Ok(n) => Ok(n.min(field.max + 1)),
        Err(_) => Ok(field.max + 1),
    }
}

/// Parses a value: a number in the field's range, or (month, day of week) a name.
fn parse_value(text: &str, field: &Field) -> Result<u32, String> {
    let name = field.name;
    let (min, max) = (field.min, field.max);
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(format!(
                "{name}: {} is out of range {min}–{max}",
                shorten(text)
            )),
        };
    }
    if let Some(i) = field
        .names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(text))
    {
        // `i` indexes a table of at most 12 names.
        return Ok(field.min_name + i as u32);
    }
    if text.is_empty() {
        return Err(format!(
            "{name}: a range is missing a number (write a-b, like 1-5)"
        ));
    }
    if field.names.is_empty() {
        Err(format!(
            "{name}: `{}` is not a number {min}–{max}",
            shorten(text)
        ))
    } else {
        Err(format!(
            "{name}: `{}` is neither a number {min}–{max} nor a name ({}…{})",
            shorten(text),
            field.names[0],
            field.names[field.names.len() - 1]
        ))
    }
}

/// Cuts user text quoted in an error to a readable length (on a char boundary).
fn shorten(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        None => text.to_string(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// The venue's zone: an IANA name (`Europe/Moscow`), or `None` → the system's zone (UTC if
/// the system's cannot be determined, with a warning in the log).
///
/// Names are looked up in the system's tz database (`/usr/share/zoneinfo`) when it exists,
/// else in the copy bundled into the binary, so a box without tzdata still keeps the
/// venue's time.
pub fn zone(name: Option<&str>) -> Result<TimeZone, String> {
    let Some(name) = name else {
        return Ok(TimeZone::try_system().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not determine the system's time zone; schedules use UTC (set the game's timezone to fix)");
            TimeZone::UTC
        }));
    };
    let name = name.trim();
    let unknown = || {
        format!(
            "unknown time zone `{}`; use an IANA name like Europe/Moscow",
            shorten(name)
        )
    };
    // IANA names are short and made of these characters; checking first keeps anything
    // path-like (`../`, `/etc/…`) from reaching the database lookup at all.
    let plausible = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('/')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b));
    if !plausible {
        return Err(unknown());
    }
    TimeZone::get(name).map_err(|_| unknown())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Local time `"2026-03-29 01:59"` in `tz` as Unix ms (first instant if in a fold).
    fn at(tz: &TimeZone, local: &str) -> i64 {
        let dt: DateTime = local.replace(' ', "T").parse().unwrap();
        tz.to_ambiguous_timestamp(dt)
            .earlier()
            .unwrap()
            .as_millisecond()
    }

    /// Unix ms as `"2026-03-29 03:00+02"` in `tz`: local time and offset, so a DST test
    /// shows which side of a transition it landed on.
    fn show(tz: &TimeZone, ms: i64) -> String {
        let ts = Timestamp::from_millisecond(ms).unwrap();
        let dt = tz.to_datetime(ts);
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}{}",
            dt.year(),
            dt.month(),
            dt.day(),
            dt.hour(),
            dt.minute(),
            tz.to_offset(ts)
        )
    }

    fn next(line: &str, zone_name: &str, after_local: &str) -> Option<String> {
        let tz = zone(Some(zone_name)).unwrap();
        Schedule::parse(line)
            .unwrap()
            .next_after(at(&tz, after_local), &tz)
            .map(|ms| show(&tz, ms))
    }

    #[test]
    fn parse_errors_name_the_field_and_why() {
        let long = format!("{} * * * *", "1,".repeat(600));
        let cases: &[(&str, &str)] = &[
            ("* * * * 8", "day of week: 8 is out of range 0–7"),
            ("60 * * * *", "minute: 60 is out of range 0–59"),
            ("* 24 * * *", "hour: 24 is out of range 0–23"),
            ("* * 0 * *", "day of month: 0 is out of range 1–31"),
            ("* * 32 * *", "day of month: 32 is out of range 1–31"),
            ("* * * 13 *", "month: 13 is out of range 1–12"),
            ("* * * 0 *", "month: 0 is out of range 1–12"),
            (
                "99999999999 * * * *",
                "minute: 99999999999 is out of range 0–59",
            ),
            (
                "",
                "expected 5 fields (minute hour day-of-month month day-of-week), got 0",
            ),
            ("* * * *", "got 4"),
            (
                "0 * * * * *",
                "got 6 (a seconds or a year field is not supported)",
            ),
            (
                "@daily",
                "shorthands are not supported; write the five fields, e.g. `0 0 * * *`",
            ),
            ("*/0 * * * *", "minute: a step of 0 never advances"),
            ("*/x * * * *", "minute: the step `x` is not a number"),
            ("*/ * * * *", "minute: the step `` is not a number"),
            ("*/2/3 * * * *", "minute: the step `2/3` is not a number"),
            (
                "5/15 * * * *",
                "minute: `5/15` steps from a single value; a step needs `*` or a range, write 5-59/…",
            ),
            (
                "30-10 * * * *",
                "minute: the range `30-10` goes backwards; ranges do not wrap around, split it, as 30-59,0-10",
            ),
            ("* 22-2 * * *", "hour: the range `22-2` goes backwards"),
            (
                "* * * * fri-sun",
                "day of week: the range `fri-sun` goes backwards; ranges do not wrap around, write 5-7 (7 is Sunday too)",
            ),
            (
                "* * * foo *",
                "month: `foo` is neither a number 1–12 nor a name (jan…dec)",
            ),
            (
                "* * * * friday",
                "day of week: `friday` is neither a number 0–7 nor a name (sun…sat)",
            ),
            ("* * mon * *", "day of month: `mon` is not a number 1–31"),
            ("a * * * *", "minute: `a` is not a number 0–59"),
            ("-1 * * * *", "minute: a range is missing a number"),
            ("1- * * * *", "minute: a range is missing a number"),
            ("1-2-3 * * * *", "minute: `2-3` is not a number 0–59"),
            ("1,,2 * * * *", "minute: an empty item in the list `1,,2`"),
            ("1, * * * *", "minute: an empty item in the list"),
            ("? * * * *", "minute: `?` is not a number 0–59"),
            ("５ * * * *", "minute: `５` is not a number 0–59"),
            ("* * * * L", "day of week: `L` is neither"),
            (&long, "characters long, over the limit of 1024"),
        ];
        for (line, want) in cases {
            let err = Schedule::parse(line).expect_err(line);
            assert!(err.contains(want), "{line:?}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn parse_builds_the_right_sets() {
        // (line, minutes, hours, days, months, weekdays, days_star, weekdays_star)
        type Row = (&'static str, u64, u32, u32, u16, u8, bool, bool);
        let all_min = (1u64 << 60) - 1;
        let all_hour = (1u32 << 24) - 1;
        let all_day = ((1u32 << 31) - 1) << 1;
        let all_month = ((1u16 << 12) - 1) << 1;
        let cases: &[Row] = &[
            (
                "* * * * *",
                all_min,
                all_hour,
                all_day,
                all_month,
                0x7f,
                true,
                true,
            ),
            (
                "30 20 * * fri",
                1 << 30,
                1 << 20,
                all_day,
                all_month,
                1 << 5,
                true,
                false,
            ),
            (
                "30 20 * * FRI",
                1 << 30,
                1 << 20,
                all_day,
                all_month,
                1 << 5,
                true,
                false,
            ),
            ("0 0 * * 7", 1, 1, all_day, all_month, 1, true, false),
            ("0 0 * * 0,7", 1, 1, all_day, all_month, 1, true, false),
            (
                "0 0 * * 5-7",
                1,
                1,
                all_day,
                all_month,
                0b110_0001,
                true,
                false,
            ),
            (
                "0 0 * * Mon-Fri",
                1,
                1,
                all_day,
                all_month,
                0b011_1110,
                true,
                false,
            ),
            (
                "*/20 */8 * * *",
                1 | 1 << 20 | 1 << 40,
                1 | 1 << 8 | 1 << 16,
                all_day,
                all_month,
                0x7f,
                true,
                true,
            ),
            (
                "10-50/20 9-17/4 1-31/10 * *",
                1 << 10 | 1 << 30 | 1 << 50,
                1 << 9 | 1 << 13 | 1 << 17,
                1 << 1 | 1 << 11 | 1 << 21 | 1 << 31,
                all_month,
                0x7f,
                false,
                true,
            ),
            (
                "0 0 1 jan,JUL,dec *",
                1,
                1,
                1 << 1,
                1 << 1 | 1 << 7 | 1 << 12,
                0x7f,
                false,
                true,
            ),
            (
                "0 0 1 feb-apr *",
                1,
                1,
                1 << 1,
                1 << 2 | 1 << 3 | 1 << 4,
                0x7f,
                false,
                true,
            ),
            (
                "*/100 * * * *",
                1,
                all_hour,
                all_day,
                all_month,
                0x7f,
                true,
                true,
            ),
            (
                "0 0 */2 * *",
                1,
                1,
                0xAAAA_AAAA,
                all_month,
                0x7f,
                true,
                true,
            ),
            (
                "  1\t2  3 4 5 ",
                1 << 1,
                1 << 2,
                1 << 3,
                1 << 4,
                1 << 5,
                false,
                false,
            ),
        ];
        for &(line, minutes, hours, days, months, weekdays, days_star, weekdays_star) in cases {
            let s = Schedule::parse(line).unwrap();
            let got = (
                s.minutes,
                s.hours,
                s.days,
                s.months,
                s.weekdays,
                s.days_star,
                s.weekdays_star,
            );
            let want = (
                minutes,
                hours,
                days,
                months,
                weekdays,
                days_star,
                weekdays_star,
            );
            assert_eq!(got, want, "{line:?}");
            assert_eq!(s.source(), line.trim());
        }
    }

    #[test]
    fn next_after_table() {
        // (line, zone, after (local), next (local+offset) or None)
        // 2026-12-01 is a Tuesday; 2028 is a leap year, 2100 is not.
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            // The brief's example: Friday 20:30.
            (
                "30 20 * * fri",
                "UTC",
                "2026-12-01 00:00",
                Some("2026-12-04 20:30+00"),
            ),
            // Strictly after: a match exactly at `after` is not returned, one a second
            // into its minute is past too.
            (
                "30 20 * * *",
                "UTC",
                "2026-12-01 20:30",
                Some("2026-12-02 20:30+00"),
            ),
            (
                "30 20 * * *",
                "UTC",
                "2026-12-01 20:29:59.999",
                Some("2026-12-01 20:30+00"),
            ),
            (
                "* * * * *",
                "UTC",
                "2026-12-01 20:30:01",
                Some("2026-12-01 20:31+00"),
            ),
            // Month and year ends.
            (
                "0 0 1 * *",
                "UTC",
                "2026-01-31 12:00",
                Some("2026-02-01 00:00+00"),
            ),
            (
                "30 20 31 * *",
                "UTC",
                "2026-04-01 00:00",
                Some("2026-05-31 20:30+00"),
            ),
            (
                "0 0 31 * *",
                "UTC",
                "2026-06-01 00:00",
                Some("2026-07-31 00:00+00"),
            ),
            (
                "59 23 31 12 *",
                "UTC",
                "2026-12-31 23:59",
                Some("2027-12-31 23:59+00"),
            ),
            (
                "0 0 * * *",
                "UTC",
                "2026-12-31 23:59:59",
                Some("2027-01-01 00:00+00"),
            ),
            (
                "0 0 1 jan *",
                "UTC",
                "2026-01-01 00:00",
                Some("2027-01-01 00:00+00"),
            ),
            // Leap years: the next 29 February, across 2100 (not leap) too.
            (
                "0 12 29 2 *",
                "UTC",
                "2026-03-01 00:00",
                Some("2028-02-29 12:00+00"),
            ),
            (
                "0 12 29 2 *",
                "UTC",
                "2028-02-28 13:00",
                Some("2028-02-29 12:00+00"),
            ),
            (
                "0 12 29 2 *",
                "UTC",
                "2097-01-01 00:00",
                Some("2104-02-29 12:00+00"),
            ),
            (
                "0 0 28 2 *",
                "UTC",
                "2028-02-28 00:00",
                Some("2029-02-28 00:00+00"),
            ),
            (
                "0 0 1 3 *",
                "UTC",
                "2028-02-28 00:00",
                Some("2028-03-01 00:00+00"),
            ),
            // Sunday as 0, as 7, by name, at the end of a range.
            (
                "0 9 * * 0",
                "UTC",
                "2026-12-02 00:00",
                Some("2026-12-06 09:00+00"),
            ),
            (
                "0 9 * * 7",
                "UTC",
                "2026-12-02 00:00",
                Some("2026-12-06 09:00+00"),
            ),
            (
                "0 9 * * SUN",
                "UTC",
                "2026-12-02 00:00",
                Some("2026-12-06 09:00+00"),
            ),
            (
                "0 9 * * 6-7",
                "UTC",
                "2026-12-05 10:00",
                Some("2026-12-06 09:00+00"),
            ),
            (
                "0 9 * * 1-5",
                "UTC",
                "2026-12-04 10:00",
                Some("2026-12-07 09:00+00"),
            ),
            // Day of month OR day of week when both are restricted (Vixie).
            (
                "0 0 13 * fri",
                "UTC",
                "2026-12-01 00:00",
                Some("2026-12-04 00:00+00"),
            ),
            (
                "0 0 13 * fri",
                "UTC",
                "2026-12-12 00:00",
                Some("2026-12-13 00:00+00"),
            ),
            (
                "0 0 13 * fri",
                "UTC",
                "2026-12-13 00:00",
                Some("2026-12-18 00:00+00"),
            ),
            (
                "0 0 31 2 mon",
                "UTC",
                "2026-12-01 00:00",
                Some("2027-02-01 00:00+00"),
            ),
            // ... and AND when either starts with `*`: odd days that are Fridays.
            (
                "0 0 */2 * fri",
                "UTC",
                "2026-12-01 00:00",
                Some("2026-12-11 00:00+00"),
            ),
            (
                "0 0 * * fri",
                "UTC",
                "2026-12-01 00:00",
                Some("2026-12-04 00:00+00"),
            ),
            (
                "0 0 13 * *",
                "UTC",
                "2026-12-01 00:00",
                Some("2026-12-13 00:00+00"),
            ),
            // Steps.
            (
                "*/15 * * * *",
                "UTC",
                "2026-12-01 10:07",
                Some("2026-12-01 10:15+00"),
            ),
            (
                "*/15 * * * *",
                "UTC",
                "2026-12-01 10:45",
                Some("2026-12-01 11:00+00"),
            ),
            (
                "10-50/20 9 * * *",
                "UTC",
                "2026-12-01 09:30",
                Some("2026-12-01 09:50+00"),
            ),
            (
                "10-50/20 9 * * *",
                "UTC",
                "2026-12-01 09:51",
                Some("2026-12-02 09:10+00"),
            ),
            (
                "0 */6 * * *",
                "UTC",
                "2026-12-01 13:00",
                Some("2026-12-01 18:00+00"),
            ),
            (
                "0 0 1-31/10 * *",
                "UTC",
                "2026-12-22 00:00",
                Some("2026-12-31 00:00+00"),
            ),
            (
                "0 0 1 */3 *",
                "UTC",
                "2026-02-01 00:00",
                Some("2026-04-01 00:00+00"),
            ),
            // The venue's zone, not UTC.
            (
                "0 0 * * *",
                "Europe/Moscow",
                "2026-12-01 12:00",
                Some("2026-12-02 00:00+03"),
            ),
            // Berlin spring forward, 2026-03-29 02:00 CET → 03:00 CEST: 02:30 does not
            // exist that day and is skipped to the next match.
            (
                "30 2 * * *",
                "Europe/Berlin",
                "2026-03-28 12:00",
                Some("2026-03-30 02:30+02"),
            ),
            (
                "*/30 * * * *",
                "Europe/Berlin",
                "2026-03-29 01:45",
                Some("2026-03-29 03:00+02"),
            ),
            (
                "0 2 29 3 *",
                "Europe/Berlin",
                "2026-03-01 00:00",
                Some("2027-03-29 02:00+02"),
            ),
            // Berlin fall back, 2026-10-25 03:00 CEST → 02:00 CET: 02:30 fires at its first
            // occurrence only.
            (
                "30 2 * * *",
                "Europe/Berlin",
                "2026-10-25 00:00",
                Some("2026-10-25 02:30+02"),
            ),
            // New York spring forward, 2026-03-08 02:00 EST → 03:00 EDT.
            (
                "30 2 * * *",
                "America/New_York",
                "2026-03-07 12:00",
                Some("2026-03-09 02:30-04"),
            ),
            (
                "0,59 2,3 8 3 *",
                "America/New_York",
                "2026-03-08 01:00",
                Some("2026-03-08 03:00-04"),
            ),
            // New York fall back, 2026-11-01 02:00 EDT → 01:00 EST.
            (
                "30 1 * * *",
                "America/New_York",
                "2026-10-31 12:00",
                Some("2026-11-01 01:30-04"),
            ),
            // Impossible dates: never.
            ("0 0 31 2 *", "UTC", "2026-12-01 00:00", None),
            ("0 0 30 2 *", "Europe/Berlin", "2026-12-01 00:00", None),
            ("0 0 31 4,6,9,11 *", "UTC", "2026-12-01 00:00", None),
            // Past jiff's last year: None, no panic.
            ("0 0 * * *", "UTC", "9999-12-30 12:00", None),
        ];
        for (line, zone_name, after, want) in cases {
            let got = next(line, zone_name, after);
            assert_eq!(
                got.as_deref(),
                *want,
                "{line:?} in {zone_name} after {after}"
            );
        }
    }

    /// Follows a schedule's firings one after another, as the engine does, and shows them.
    fn firings(line: &str, zone_name: &str, after_local: &str, count: usize) -> Vec<String> {
        let tz = zone(Some(zone_name)).unwrap();
        let s = Schedule::parse(line).unwrap();
        let mut t = at(&tz, after_local);
        let mut out = Vec::new();
        for _ in 0..count {
            t = s.next_after(t, &tz).unwrap();
            out.push(show(&tz, t));
        }
        out
    }

    #[test]
    fn a_fold_fires_once_and_a_gap_never() {
        let cases: &[(&str, &str, &str, &[&str])] = &[
            (
                "30 2 * * *",
                "Europe/Berlin",
                "2026-10-24 12:00",
                &["2026-10-25 02:30+02", "2026-10-26 02:30+01"],
            ),
            (
                "*/30 * * * *",
                "Europe/Berlin",
                "2026-10-25 01:50",
                &[
                    "2026-10-25 02:00+02",
                    "2026-10-25 02:30+02",
                    "2026-10-25 03:00+01",
                ],
            ),
            (
                "30 1 * * *",
                "America/New_York",
                "2026-10-31 12:00",
                &["2026-11-01 01:30-04", "2026-11-02 01:30-05"],
            ),
            (
                "0 * * * *",
                "America/New_York",
                "2026-11-01 00:30",
                &[
                    "2026-11-01 01:00-04",
                    "2026-11-01 02:00-05",
                    "2026-11-01 03:00-05",
                ],
            ),
            (
                "0 * * * *",
                "America/New_York",
                "2026-03-08 00:30",
                &[
                    "2026-03-08 01:00-05",
                    "2026-03-08 03:00-04",
                    "2026-03-08 04:00-04",
                ],
            ),
            (
                "*/20 2 * * *",
                "Europe/Berlin",
                "2026-03-28 23:00",
                &[
                    "2026-03-30 02:00+02",
                    "2026-03-30 02:20+02",
                    "2026-03-30 02:40+02",
                ],
            ),
        ];
        for (line, zone_name, after, want) in cases {
            assert_eq!(
                firings(line, zone_name, after, want.len()),
                *want,
                "{line:?} in {zone_name}"
            );
        }
    }

    /// Starting inside the fold's second pass: the repeated local times already fired in
    /// the first pass, so the next firing is after the fold.
    #[test]
    fn starting_in_a_folds_second_pass_does_not_repeat() {
        let tz = zone(Some("Europe/Berlin")).unwrap();
        // 02:10 CET on 2026-10-25 (the second 02:10) is 01:10 UTC.
        let second_pass = at(&TimeZone::UTC, "2026-10-25 01:10");
        assert_eq!(show(&tz, second_pass), "2026-10-25 02:10+01");
        let s = Schedule::parse("*/30 * * * *").unwrap();
        let got = s.next_after(second_pass, &tz).map(|ms| show(&tz, ms));
        assert_eq!(got.as_deref(), Some("2026-10-25 03:00+01"));
    }

    /// A year of daily firings across both Berlin transitions: each at local midnight, one
    /// a day, each later than the one before.
    #[test]
    fn daily_through_a_dst_year() {
        let got = firings("0 0 * * *", "Europe/Berlin", "2026-01-01 00:00", 365);
        assert_eq!(got.first().map(String::as_str), Some("2026-01-02 00:00+01"));
        assert_eq!(got.last().map(String::as_str), Some("2027-01-01 00:00+01"));
        assert!(got.iter().all(|s| s.contains(" 00:00+0")), "{got:?}");
        assert!(got.contains(&"2026-07-01 00:00+02".to_string()));
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, got);
    }

    /// Cross-checks `next_after` against the definition, minute by minute, in UTC (no DST).
    #[test]
    fn agrees_with_a_minute_by_minute_scan() {
        let lines = [
            "*/7 */5 * * *",
            "0 0 13 * fri",
            "15 3 */3 * mon-wed",
            "5,55 22-23 28-31 * *",
            "0 0 * feb,mar sun",
            "1-4/3 1 1 * 7",
        ];
        let tz = TimeZone::UTC;
        let start = at(&tz, "2028-02-20 00:00");
        for line in lines {
            let s = Schedule::parse(line).unwrap();
            let matches = |ms: i64| {
                let dt = tz.to_datetime(Timestamp::from_millisecond(ms).unwrap());
                let w = dt.weekday().to_sunday_zero_offset();
                s.minutes & (1 << dt.minute()) != 0
                    && s.hours & (1 << dt.hour()) != 0
                    && s.months & (1 << dt.month()) != 0
                    && s.day_matches(dt.day(), w)
            };
            let mut after = start;
            for _ in 0..20 {
                let mut t = after - after.rem_euclid(60_000) + 60_000;
                while !matches(t) {
                    t += 60_000;
                }
                assert_eq!(
                    s.next_after(after, &tz),
                    Some(t),
                    "{line:?} after {}",
                    show(&tz, after)
                );
                // Also from a point inside the minute before.
                assert_eq!(s.next_after(t - 1, &tz), Some(t), "{line:?}");
                after = t;
            }
        }
    }

    #[test]
    fn zone_names() {
        for ok in [
            "Europe/Moscow",
            "Europe/Berlin",
            "America/New_York",
            "UTC",
            " Asia/Tokyo ",
        ] {
            assert!(zone(Some(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "Mars/Olympus",
            "",
            "../../etc/passwd",
            "/etc/localtime",
            "Europe/Moscow\0",
            "+03:00",
        ] {
            let err = zone(Some(bad)).expect_err(bad);
            assert!(
                err.starts_with("unknown time zone `")
                    && err.ends_with("`; use an IANA name like Europe/Moscow"),
                "{bad:?}: {err}"
            );
        }
        let long = "A".repeat(200);
        let err = zone(Some(&long)).unwrap_err();
        assert!(err.len() < 150, "{err}");
        // The system's zone, whatever it is here, is some zone; no error.
        assert!(zone(None).is_ok());
    }

    /// The bundled database answers on its own, which is what a box without
    /// /usr/share/zoneinfo falls back to.
    #[test]
    fn the_bundled_tz_database_is_there() {
        let db = jiff::tz::TimeZoneDatabase::bundled();
        for name in ["Europe/Moscow", "Europe/Berlin", "America/New_York"] {
            let tz = db.get(name).unwrap();
            assert_eq!(tz.iana_name(), Some(name));
        }
        let berlin = db.get("Europe/Berlin").unwrap();
        let s = Schedule::parse("30 2 * * *").unwrap();
        let got = s
            .next_after(at(&berlin, "2026-03-28 12:00"), &berlin)
            .map(|ms| show(&berlin, ms));
        assert_eq!(got.as_deref(), Some("2026-03-30 02:30+02"));
    }
}
