//! When a job runs: once, daily (every N days), weekly on chosen weekdays every N weeks,
//! monthly on a day, or a cron expression; between a start and a finish date; in a time
//! zone; with a time frame in which a start missed because the agent was offline may still
//! run (after it, the run is recorded as missed).

use chrono::{DateTime, Datelike as _, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// `HH:MM` (or `HH:MM:SS`) times and `YYYY-MM-DDTHH:MM` date-times, as admins write them.
mod clock {
    use chrono::{NaiveDateTime, NaiveTime, Timelike as _};
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn parse_time(s: &str) -> Option<NaiveTime> {
        NaiveTime::parse_from_str(s, "%H:%M")
            .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M:%S"))
            .ok()
    }

    pub mod time {
        use super::*;
        pub fn serialize<S: Serializer>(t: &NaiveTime, s: S) -> Result<S::Ok, S::Error> {
            // Seconds only when there are some: the text reads back to the same time.
            let f = if t.second() == 0 { "%H:%M" } else { "%H:%M:%S" };
            s.serialize_str(&t.format(f).to_string())
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
            let text = String::deserialize(d)?;
            parse_time(&text)
                .ok_or_else(|| serde::de::Error::custom(format!("'{text}' is not a time (HH:MM)")))
        }
    }

    pub mod datetime {
        use super::*;
        pub fn serialize<S: Serializer>(t: &NaiveDateTime, s: S) -> Result<S::Ok, S::Error> {
            let f = if t.second() == 0 {
                "%Y-%m-%dT%H:%M"
            } else {
                "%Y-%m-%dT%H:%M:%S"
            };
            s.serialize_str(&t.format(f).to_string())
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveDateTime, D::Error> {
            let text = String::deserialize(d)?;
            NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M")
                .or_else(|_| NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S"))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "'{text}' is not a local date and time (YYYY-MM-DDTHH:MM)"
                    ))
                })
        }
    }
}

/// How often.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Repeat {
    /// Once, at a local date and time (`2026-11-22T03:00`).
    Once {
        #[schema(value_type = String)]
        #[serde(with = "clock::datetime")]
        at: NaiveDateTime,
    },
    /// Every `every_days` days at `time` (`HH:MM`).
    Daily {
        #[schema(value_type = String)]
        #[serde(with = "clock::time")]
        time: NaiveTime,
        #[serde(default = "one")]
        every_days: u32,
    },
    /// On `weekdays` (`mon`…`sun`) at `time`, every `every_weeks` weeks.
    Weekly {
        #[schema(value_type = String)]
        #[serde(with = "clock::time")]
        time: NaiveTime,
        weekdays: Vec<String>,
        #[serde(default = "one")]
        every_weeks: u32,
    },
    /// On day `day` of each month (the last day in shorter months) at `time`.
    Monthly {
        #[schema(value_type = String)]
        #[serde(with = "clock::time")]
        time: NaiveTime,
        day: u32,
    },
    /// A cron expression: `min hour day month weekday`, or with seconds first (6 or 7
    /// fields, as the `cron` crate reads them).
    Cron { expression: String },
}

fn one() -> u32 {
    1
}

fn utc() -> String {
    "UTC".into()
}

fn default_frame() -> u32 {
    60
}

/// A job's schedule. (Unknown fields cannot be refused here: serde does not allow it with
/// the flattened repeat.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Schedule {
    #[serde(flatten)]
    pub repeat: Repeat,
    /// IANA time zone of the times and dates (`Europe/Berlin`); UTC by default.
    #[serde(default = "utc")]
    pub timezone: String,
    /// First day runs may start (local).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub start_date: Option<NaiveDate>,
    /// Last day runs may start (local).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub finish_date: Option<NaiveDate>,
    /// Minutes after the start time in which an agent that was offline still runs the job
    /// when it comes back; after that the run is missed.
    #[serde(default = "default_frame")]
    pub time_frame_minutes: u32,
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A day-by-day search never needs to look further than this for the next run.
const SEARCH_DAYS: i64 = 366 * 8;

impl Schedule {
    /// The time zone.
    fn tz(&self) -> Result<Tz, String> {
        self.timezone
            .parse::<Tz>()
            .map_err(|_| format!("unknown time zone '{}'", self.timezone))
    }

    /// Parse a cron expression: crontab's five fields, or six/seven with seconds first.
    /// Weekday numbers are crontab's (0 or 7 Sunday, 1 Monday …) in every form; the `cron`
    /// crate counts 1 as Sunday, so they are translated.
    fn cron(expr: &str) -> Result<cron::Schedule, String> {
        let mut fields: Vec<String> = expr.split_whitespace().map(str::to_owned).collect();
        if fields.len() == 5 {
            // No seconds: run at second 0.
            fields.insert(0, "0".into());
        }
        if !(6..=7).contains(&fields.len()) {
            return Err(format!(
                "cron expression '{expr}': expected 5 fields (min hour day month weekday), or 6-7 with seconds first"
            ));
        }
        fields[5] = crontab_weekdays(&fields[5]);
        fields
            .join(" ")
            .parse::<cron::Schedule>()
            .map_err(|e| format!("cron expression '{expr}': {e}"))
    }

    /// Every rule, with what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        self.tz()?;
        match &self.repeat {
            Repeat::Daily { every_days, .. } if !(1..=365).contains(every_days) => {
                return Err("every_days must be 1 to 365".into())
            }
            Repeat::Weekly {
                weekdays,
                every_weeks,
                ..
            } => {
                if weekdays.is_empty() {
                    return Err("a weekly schedule needs at least one weekday".into());
                }
                if let Some(w) = weekdays
                    .iter()
                    .find(|w| !WEEKDAYS.contains(&w.to_ascii_lowercase().as_str()))
                {
                    return Err(format!("unknown weekday '{w}' (mon … sun)"));
                }
                if !(1..=52).contains(every_weeks) {
                    return Err("every_weeks must be 1 to 52".into());
                }
            }
            Repeat::Monthly { day, .. } if !(1..=31).contains(day) => {
                return Err("day must be 1 to 31".into())
            }
            Repeat::Cron { expression } => {
                Self::cron(expression)?;
            }
            _ => {}
        }
        if let (Some(s), Some(f)) = (self.start_date, self.finish_date) {
            if f < s {
                return Err("finish_date is before start_date".into());
            }
        }
        if self.time_frame_minutes > 7 * 24 * 60 {
            return Err("time_frame_minutes must be at most a week (10080)".into());
        }
        Ok(())
    }

    /// Seconds after a start in which it may still run.
    pub fn frame_seconds(&self) -> i64 {
        i64::from(self.time_frame_minutes) * 60
    }

    /// True when local date `d` is a day this schedule runs on (dates aside).
    fn runs_on(&self, d: NaiveDate) -> bool {
        let anchor = self
            .start_date
            .unwrap_or_else(|| NaiveDate::from_ymd_opt(1970, 1, 5).unwrap_or_default());
        match &self.repeat {
            Repeat::Daily { every_days, .. } => {
                (d - anchor)
                    .num_days()
                    .rem_euclid(i64::from((*every_days).max(1)))
                    == 0
            }
            Repeat::Weekly {
                weekdays,
                every_weeks,
                ..
            } => {
                let name = WEEKDAYS[d.weekday().num_days_from_monday() as usize];
                let monday = |x: NaiveDate| {
                    x - chrono::Days::new(u64::from(x.weekday().num_days_from_monday()))
                };
                let weeks = (monday(d) - monday(anchor)).num_days() / 7;
                weekdays.iter().any(|w| w.eq_ignore_ascii_case(name))
                    && weeks.rem_euclid(i64::from((*every_weeks).max(1))) == 0
            }
            Repeat::Monthly { day, .. } => {
                let last = last_day(d.year(), d.month());
                d.day() == (*day).min(last)
            }
            Repeat::Once { .. } | Repeat::Cron { .. } => false,
        }
    }

    fn in_dates(&self, d: NaiveDate) -> bool {
        self.start_date.is_none_or(|s| d >= s) && self.finish_date.is_none_or(|f| d <= f)
    }

    /// The first start strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let tz = self.tz().ok()?;
        // Nothing runs before the start date: search from its first moment.
        let after = match self.start_date.and_then(|d| {
            tz.from_local_datetime(&d.and_time(NaiveTime::MIN))
                .earliest()
        }) {
            Some(start) if start.with_timezone(&Utc) > after => {
                start.with_timezone(&Utc) - chrono::Duration::seconds(1)
            }
            _ => after,
        };
        let local = after.with_timezone(&tz);
        let found = match &self.repeat {
            Repeat::Once { at } => tz
                .from_local_datetime(at)
                .earliest()
                .map(|t| t.with_timezone(&Utc))
                .filter(|t| *t > after),
            Repeat::Cron { expression } => {
                let c = Self::cron(expression).ok()?;
                c.after(&local).next().map(|t| t.with_timezone(&Utc))
            }
            Repeat::Daily { time, .. }
            | Repeat::Weekly { time, .. }
            | Repeat::Monthly { time, .. } => {
                let mut day = local.date_naive();
                let mut found = None;
                for _ in 0..SEARCH_DAYS {
                    if self.finish_date.is_some_and(|f| day > f) {
                        break;
                    }
                    if self.in_dates(day) && self.runs_on(day) {
                        // A time skipped by a DST change runs at the first valid time.
                        let t = tz
                            .from_local_datetime(&day.and_time(*time))
                            .earliest()
                            .or_else(|| {
                                tz.from_local_datetime(
                                    &(day.and_time(*time) + chrono::Duration::hours(1)),
                                )
                                .earliest()
                            })
                            .map(|t| t.with_timezone(&Utc));
                        if let Some(t) = t.filter(|t| *t > after) {
                            found = Some(t);
                            break;
                        }
                    }
                    day = day.succ_opt()?;
                }
                found
            }
        }?;
        // Dates bound every kind.
        self.in_dates(found.with_timezone(&tz).date_naive())
            .then_some(found)
    }

    /// Starts in `(from, to]`, oldest first (at most `limit`).
    pub fn starts_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = from;
        while out.len() < limit {
            match self.next_after(t) {
                Some(n) if n <= to => {
                    out.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        out
    }
}

/// Crontab weekday numbers (0-7, Sunday 0 or 7) as the `cron` crate counts them (1-7,
/// Sunday 1). Steps (`*/2`) and names (`MON-FRI`) stay as they are.
fn crontab_weekdays(field: &str) -> String {
    let mut out = String::new();
    let mut num = String::new();
    let mut after_slash = false;
    let flush = |num: &mut String, out: &mut String, step: bool| {
        if num.is_empty() {
            return;
        }
        match num.parse::<u32>() {
            Ok(n) if !step => out.push_str(&((n % 7) + 1).to_string()),
            _ => out.push_str(num),
        }
        num.clear();
    };
    for c in field.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        flush(&mut num, &mut out, after_slash);
        after_slash = c == '/';
        out.push(c);
    }
    flush(&mut num, &mut out, after_slash);
    out
}

fn last_day(year: i32, month: u32) -> u32 {
    let (y, m) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1)
        .and_then(|d| d.pred_opt())
        .map_or(28, |d| d.day())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(v: serde_json::Value) -> Schedule {
        let s: Schedule = serde_json::from_value(v).expect("schedule");
        s.validate().expect("valid");
        s
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn next5(s: &Schedule, from: &str) -> Vec<String> {
        let mut t = utc(from);
        let mut out = Vec::new();
        for _ in 0..5 {
            match s.next_after(t) {
                Some(n) => {
                    out.push(n.format("%Y-%m-%dT%H:%MZ").to_string());
                    t = n;
                }
                None => break,
            }
        }
        out
    }

    #[test]
    fn daily_weekly_monthly_once_and_cron() {
        let daily = sched(
            serde_json::json!({"kind": "daily", "time": "03:00", "every_days": 2, "start_date": "2026-11-20"}),
        );
        assert_eq!(
            next5(&daily, "2026-11-21T12:00:00Z"),
            [
                "2026-11-22T03:00Z",
                "2026-11-24T03:00Z",
                "2026-11-26T03:00Z",
                "2026-11-28T03:00Z",
                "2026-11-30T03:00Z"
            ]
        );
        // Mondays and Fridays every second week, anchored on the week of the start date.
        let weekly = sched(
            serde_json::json!({"kind": "weekly", "time": "22:30", "weekdays": ["mon", "Fri"], "every_weeks": 2, "start_date": "2026-11-16"}),
        );
        assert_eq!(
            next5(&weekly, "2026-11-16T00:00:00Z"),
            [
                "2026-11-16T22:30Z",
                "2026-11-20T22:30Z",
                "2026-11-30T22:30Z",
                "2026-12-04T22:30Z",
                "2026-12-14T22:30Z"
            ]
        );
        // Day 31 runs on the last day of shorter months; the finish date ends it.
        let monthly = sched(
            serde_json::json!({"kind": "monthly", "time": "01:00", "day": 31, "finish_date": "2027-02-28"}),
        );
        assert_eq!(
            next5(&monthly, "2026-11-01T00:00:00Z"),
            [
                "2026-11-30T01:00Z",
                "2026-12-31T01:00Z",
                "2027-01-31T01:00Z",
                "2027-02-28T01:00Z"
            ]
        );
        let once = sched(serde_json::json!({"kind": "once", "at": "2026-12-24T18:00"}));
        assert_eq!(next5(&once, "2026-11-01T00:00:00Z"), ["2026-12-24T18:00Z"]);
        // Crontab form (no seconds field), in a time zone.
        let cron = sched(
            serde_json::json!({"kind": "cron", "expression": "15 2 * * 1-5", "timezone": "Europe/Berlin"}),
        );
        assert_eq!(
            next5(&cron, "2026-11-20T00:00:00Z"),
            [
                "2026-11-20T01:15Z",
                "2026-11-23T01:15Z",
                "2026-11-24T01:15Z",
                "2026-11-25T01:15Z",
                "2026-11-26T01:15Z"
            ]
        );
    }

    #[test]
    fn time_zones_follow_daylight_saving() {
        // 03:00 in Berlin is 02:00 UTC in winter and 01:00 UTC in summer.
        let s = sched(
            serde_json::json!({"kind": "daily", "time": "03:00", "timezone": "Europe/Berlin"}),
        );
        assert_eq!(
            next5(&s, "2026-03-27T12:00:00Z")[..3],
            [
                "2026-03-28T02:00Z",
                "2026-03-29T01:00Z",
                "2026-03-30T01:00Z"
            ]
        );
        // 02:30 does not exist on the night clocks go forward: it runs an hour later.
        let s = sched(
            serde_json::json!({"kind": "daily", "time": "02:30", "timezone": "Europe/Berlin"}),
        );
        assert_eq!(next5(&s, "2026-03-28T12:00:00Z")[0], "2026-03-29T01:30Z");
    }

    #[test]
    fn times_read_back_as_written() {
        for v in [
            serde_json::json!({"kind": "once", "at": "2026-12-24T18:00:30", "timezone": "UTC"}),
            serde_json::json!({"kind": "daily", "time": "03:15:07", "timezone": "UTC"}),
            serde_json::json!({"kind": "daily", "time": "03:15", "timezone": "UTC"}),
        ] {
            let s = sched(v);
            let again: Schedule =
                serde_json::from_value(serde_json::to_value(&s).expect("write")).expect("read");
            assert_eq!(again, s);
        }
    }

    #[test]
    fn crontab_weekday_numbers_are_translated() {
        assert_eq!(crontab_weekdays("1-5"), "2-6");
        assert_eq!(crontab_weekdays("0,6,7"), "1,7,1");
        assert_eq!(crontab_weekdays("*/2"), "*/2");
        assert_eq!(crontab_weekdays("1-5/2"), "2-6/2");
        assert_eq!(crontab_weekdays("MON-FRI"), "MON-FRI");
    }

    #[test]
    fn starts_between_lists_what_fell_due() {
        let s = sched(serde_json::json!({"kind": "cron", "expression": "*/10 * * * * *"}));
        let due = s.starts_between(
            utc("2026-11-22T00:00:00Z"),
            utc("2026-11-22T00:00:35Z"),
            100,
        );
        assert_eq!(due.len(), 3);
    }

    #[test]
    fn bad_schedules_are_refused_with_the_reason() {
        for (v, says) in [
            (
                serde_json::json!({"kind": "weekly", "time": "03:00", "weekdays": []}),
                "weekday",
            ),
            (
                serde_json::json!({"kind": "weekly", "time": "03:00", "weekdays": ["funday"]}),
                "funday",
            ),
            (
                serde_json::json!({"kind": "monthly", "time": "03:00", "day": 32}),
                "day",
            ),
            (
                serde_json::json!({"kind": "cron", "expression": "nope"}),
                "cron",
            ),
            (
                serde_json::json!({"kind": "daily", "time": "03:00", "timezone": "Mars/Base"}),
                "time zone",
            ),
            (
                serde_json::json!({"kind": "daily", "time": "03:00", "start_date": "2026-02-01", "finish_date": "2026-01-01"}),
                "finish_date",
            ),
        ] {
            let s: Schedule = serde_json::from_value(v).expect("parses");
            let e = s.validate().expect_err("refused");
            assert!(e.contains(says), "{e}");
        }
    }
}
