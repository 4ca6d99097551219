//! Availability schedules: the hours a worker takes new work in, read in the
//! worker's own IANA time zone so that daylight-saving changes follow the
//! zone (`mon-fri 19:00-07:00` stays 19:00 on the workstation's clock).
//!
//! A schedule is comma-separated entries, each days and optionally hours:
//! `mon-fri 19:00-07:00, sat-sun`. Days are one day (`mon`), a range that may
//! wrap (`fri-mon`) or `daily`; hours `HH:MM-HH:MM`, end `24:00` allowed. A
//! range that crosses midnight belongs to the day it starts: `fri
//! 22:00-02:00` is Friday 22:00 to Saturday 02:00. `always` is no limit.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use renderfarm_wire::{HoursSetBy, WorkerAvailability};

use super::ValidationError;

/// The schedule that sets no limit.
pub const ALWAYS: &str = "always";

/// The longest schedule kept, in bytes.
const MAX_SCHEDULE_BYTES: usize = 1000;

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const MINUTES_PER_DAY: u16 = 24 * 60;

/// One entry: days, and the hours on each of them (all day when `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// First and last day, Monday = 0; the range wraps past Sunday.
    first: u8,
    last: u8,
    /// Start and end in minutes after midnight; `end <= start` crosses
    /// midnight into the next day.
    hours: Option<(u16, u16)>,
}

impl Entry {
    fn has_day(&self, day: u8) -> bool {
        if self.first <= self.last {
            (self.first..=self.last).contains(&day)
        } else {
            day >= self.first || day <= self.last
        }
    }

    fn crosses_midnight(&self) -> bool {
        matches!(self.hours, Some((start, end)) if end <= start)
    }

    fn covers(&self, day: u8, minute: u16) -> bool {
        match self.hours {
            None => self.has_day(day),
            Some((start, end)) if end > start => {
                self.has_day(day) && (start..end).contains(&minute)
            }
            Some((start, end)) => {
                (self.has_day(day) && minute >= start)
                    || (self.has_day((day + 6) % 7) && minute < end)
            }
        }
    }

    fn canonical(&self) -> String {
        let days = match (self.first, self.last) {
            (0, 6) => "daily".to_string(),
            (a, b) if a == b => DAY_NAMES[a as usize].to_string(),
            (a, b) => format!("{}-{}", DAY_NAMES[a as usize], DAY_NAMES[b as usize]),
        };
        match self.hours {
            None => days,
            Some((s, e)) => format!("{days} {}-{}", clock(s), clock(e)),
        }
    }
}

fn clock(minutes: u16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    entries: Vec<Entry>,
    always: bool,
}

impl Schedule {
    /// Reads a schedule; the error says what is wrong and what is expected.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case(ALWAYS) {
            return Ok(Schedule {
                entries: Vec::new(),
                always: true,
            });
        }
        let entries = text
            .split(',')
            .map(parse_entry)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Schedule {
            entries,
            always: false,
        })
    }

    /// The form it is stored and shown in.
    pub fn canonical(&self) -> String {
        if self.always {
            return ALWAYS.to_string();
        }
        let entries: Vec<String> = self.entries.iter().map(Entry::canonical).collect();
        entries.join(", ")
    }

    /// Whether the local wall-clock time `at` lies within the schedule.
    pub fn contains(&self, at: NaiveDateTime) -> bool {
        if self.always {
            return true;
        }
        let day = at.weekday().num_days_from_monday() as u8;
        let minute = (at.hour() * 60 + at.minute()) as u16;
        self.entries.iter().any(|e| e.covers(day, minute))
    }

    /// Whether the schedule holds at the instant `now` in `zone`.
    pub fn contains_instant(&self, zone: Tz, now: DateTime<Utc>) -> bool {
        self.contains(now.with_timezone(&zone).naive_local())
    }

    /// The next instant after `now` at which [`Schedule::contains_instant`]
    /// changes, looked for within eight days; `None` when it never does.
    pub fn next_change(&self, zone: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.always {
            return None;
        }
        let today = now.with_timezone(&zone).date_naive();
        let mut edges: Vec<DateTime<Utc>> = (-1..=8)
            .filter_map(|offset| today.checked_add_signed(Duration::days(offset)))
            .flat_map(|date| self.local_edges(date))
            .filter_map(|local| instant_of(zone, local))
            .filter(|at| *at > now)
            .collect();
        edges.sort();
        edges.dedup();
        let current = self.contains_instant(zone, now);
        edges
            .into_iter()
            .find(|at| self.contains_instant(zone, *at) != current)
    }

    /// The local times on `date` and just after at which an entry starting
    /// on `date` begins or ends.
    fn local_edges(&self, date: NaiveDate) -> Vec<NaiveDateTime> {
        let day = date.weekday().num_days_from_monday() as u8;
        let at = |date: NaiveDate, minutes: u16| {
            let whole_days = i64::from(minutes / MINUTES_PER_DAY);
            let date = date + Duration::days(whole_days);
            date.and_hms_opt(
                u32::from(minutes % MINUTES_PER_DAY / 60),
                u32::from(minutes % 60),
                0,
            )
        };
        let mut edges = Vec::new();
        for entry in self.entries.iter().filter(|e| e.has_day(day)) {
            let (start, end) = match entry.hours {
                None => (0, MINUTES_PER_DAY),
                Some((s, e)) if entry.crosses_midnight() => (s, e + MINUTES_PER_DAY),
                Some(hours) => hours,
            };
            edges.extend(at(date, start));
            edges.extend(at(date, end));
        }
        edges
    }
}

/// The instant a local wall-clock time names in `zone`: the earlier of two
/// when clocks go back, and the first instant after the gap when they go
/// forward (a schedule's 02:30 on that night starts when 02:30 would have).
fn instant_of(zone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    (0..=8).find_map(|quarter| {
        zone.from_local_datetime(&(local + Duration::minutes(15 * quarter)))
            .earliest()
            .map(|at| at.with_timezone(&Utc))
    })
}

fn parse_entry(text: &str) -> Result<Entry, String> {
    let mut words = text.split_whitespace();
    let Some(days) = words.next() else {
        return Err("an entry is empty: separate entries with one comma, e.g. \"mon-fri 19:00-07:00, sat-sun\"".into());
    };
    let (first, last) = parse_days(days)?;
    let hours = words.next().map(parse_hours).transpose()?;
    if let Some(extra) = words.next() {
        return Err(format!(
            "{extra:?} follows the hours in {text:?}: an entry is days then at most one range of hours; write a second range as an entry of its own after a comma"
        ));
    }
    Ok(Entry { first, last, hours })
}

fn parse_day(text: &str) -> Result<u8, String> {
    let lower = text.to_ascii_lowercase();
    let short = lower.get(..3).unwrap_or(&lower);
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    DAY_NAMES
        .iter()
        .position(|d| *d == lower || (*d == short && FULL.contains(&lower.as_str())))
        .map(|i| i as u8)
        .ok_or_else(|| {
            format!("{text:?} is not a day: use mon, tue, wed, thu, fri, sat or sun, a range such as mon-fri, or daily")
        })
}

fn parse_days(text: &str) -> Result<(u8, u8), String> {
    if text.eq_ignore_ascii_case("daily") {
        return Ok((0, 6));
    }
    match text.split_once('-') {
        Some((a, b)) => Ok((parse_day(a)?, parse_day(b)?)),
        None => parse_day(text).map(|d| (d, d)),
    }
}

fn parse_time(text: &str, end: bool) -> Result<u16, String> {
    let bad = || {
        format!("{text:?} is not a time of day: write HH:MM on a 24-hour clock, e.g. 07:00 or 19:30 (24:00 ends a day)")
    };
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let valid_digits = |s: &str, max_len| {
        !s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_digit())
    };
    if !valid_digits(h, 2) || m.len() != 2 || !valid_digits(m, 2) {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    match (h, m) {
        (24, 0) if end => Ok(MINUTES_PER_DAY),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

fn parse_hours(text: &str) -> Result<(u16, u16), String> {
    let (start, end) = text.split_once('-').ok_or_else(|| {
        format!("{text:?} is not a range of hours: write start-end, e.g. 19:00-07:00")
    })?;
    let (start, mut end) = (parse_time(start, false)?, parse_time(end, true)?);
    // Midnight as an end means the end of the start's day.
    if end == 0 {
        end = MINUTES_PER_DAY;
    }
    if start == end || (start == 0 && end == MINUTES_PER_DAY) {
        return Err(format!(
            "{text:?} covers no time or the whole day: for a whole day give the days without hours (e.g. \"sat-sun\")"
        ));
    }
    Ok((start, end))
}

/// Checks a schedule and gives its canonical form.
pub fn validate_schedule(field: &'static str, text: &str) -> Result<String, ValidationError> {
    if text.len() > MAX_SCHEDULE_BYTES {
        return Err(ValidationError::new(
            field,
            format!("is longer than {MAX_SCHEDULE_BYTES} bytes"),
        ));
    }
    if text.trim().is_empty() {
        return Err(ValidationError::new(
            field,
            "is empty: give days and hours such as \"mon-fri 19:00-07:00, sat-sun\", or \"always\"",
        ));
    }
    Schedule::parse(text)
        .map(|s| s.canonical())
        .map_err(|message| ValidationError::new(field, message))
}

/// Checks an IANA time-zone name.
pub fn validate_time_zone(field: &'static str, text: &str) -> Result<String, ValidationError> {
    text.parse::<Tz>().map(|tz| tz.name().to_string()).map_err(|_| {
        ValidationError::new(
            field,
            format!("{text:?} is not an IANA time zone: use a name such as Europe/Berlin, America/Los_Angeles or UTC"),
        )
    })
}

/// The hours of a worker as stored: the agent's, the operator's (which win
/// until cleared), the zone they are read in, and whether a task running
/// when they end is handed back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerHoursState {
    pub time_zone: Option<String>,
    pub agent: Option<String>,
    pub operator: Option<String>,
    pub strict: bool,
}

/// The checked form of what an agent reports about its hours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidWorkerHours {
    pub time_zone: Option<String>,
    pub available: Option<String>,
    pub strict: bool,
}

/// Checks what an agent reports (at registration or `PUT /workers/{id}/hours`).
pub fn validate_worker_hours(
    time_zone: Option<&str>,
    available: Option<&str>,
    strict: bool,
) -> Result<ValidWorkerHours, ValidationError> {
    Ok(ValidWorkerHours {
        time_zone: time_zone
            .map(|z| validate_time_zone("time_zone", z))
            .transpose()?,
        available: available
            .map(|a| validate_schedule("available", a))
            .transpose()?,
        strict,
    })
}

impl WorkerHoursState {
    /// The schedule in force and who set it; `None`: at any time.
    pub fn in_force(&self) -> Option<(&str, HoursSetBy)> {
        match (&self.operator, &self.agent) {
            (Some(s), _) => Some((s, HoursSetBy::Operator)),
            (None, Some(s)) => Some((s, HoursSetBy::Agent)),
            (None, None) => None,
        }
    }

    /// The zone; UTC for an agent that reported none (or, never expected,
    /// a name the zone database no longer knows).
    fn zone(&self) -> Tz {
        self.time_zone
            .as_deref()
            .and_then(|z| z.parse().ok())
            .unwrap_or(Tz::UTC)
    }

    /// The schedule in force, parsed. A stored schedule that no longer
    /// parses (written only through [`validate_schedule`]) sets no limit, as
    /// before schedules existed, rather than stop the worker.
    fn schedule(&self) -> Option<Schedule> {
        self.in_force().and_then(|(s, _)| Schedule::parse(s).ok())
    }
}

/// Whether a worker may be handed a new task at `now`.
pub fn takes_new_work(hours: &WorkerHoursState, now: DateTime<Utc>) -> bool {
    hours
        .schedule()
        .is_none_or(|s| s.contains_instant(hours.zone(), now))
}

/// Whether a worker running a task at `now` must hand it back: its hours
/// have ended and it keeps them strictly (`--strict-hours`).
pub fn hands_back(hours: &WorkerHoursState, now: DateTime<Utc>) -> bool {
    hours.strict && !takes_new_work(hours, now)
}

/// What a worker's listing shows of its hours at `now`; `None` when it
/// takes work at any time.
pub fn availability_view(
    hours: &WorkerHoursState,
    now: DateTime<Utc>,
) -> Option<WorkerAvailability> {
    let (text, set_by) = hours.in_force()?;
    let zone = hours.zone();
    let schedule = Schedule::parse(text).ok();
    Some(WorkerAvailability {
        schedule: text.to_string(),
        set_by,
        agent_schedule: hours.agent.clone(),
        time_zone: zone.name().to_string(),
        strict_hours: hours.strict,
        available_now: schedule
            .as_ref()
            .is_none_or(|s| s.contains_instant(zone, now)),
        next_change: schedule.and_then(|s| s.next_change(zone, now)),
    })
}

/// The message a handed-back task's history and log carry.
pub const HANDED_BACK: &str =
    "handed back: the worker's hours ended and it keeps them strictly (--strict-hours)";

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn local(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    #[test]
    fn schedules_parse_to_a_canonical_form() {
        let table: &[(&str, Result<&str, &str>)] = &[
            (
                "mon-fri 19:00-07:00, sat-sun",
                Ok("mon-fri 19:00-07:00, sat-sun"),
            ),
            ("  Mon-FRI   9:00-17:30 ", Ok("mon-fri 09:00-17:30")),
            ("always", Ok("always")),
            ("ALWAYS", Ok("always")),
            ("daily 22:00-06:00", Ok("daily 22:00-06:00")),
            ("mon-sun", Ok("daily")),
            ("fri-mon", Ok("fri-mon")),
            ("saturday", Ok("sat")),
            ("wed 18:00-24:00", Ok("wed 18:00-24:00")),
            ("wed 18:00-00:00", Ok("wed 18:00-24:00")),
            ("", Err("entry is empty")),
            ("mon-fri,", Err("entry is empty")),
            ("weekdays", Err("not a day")),
            ("mon 25:00-26:00", Err("not a time of day")),
            ("mon 9-17", Err("not a time of day")),
            ("mon 09:00", Err("not a range of hours")),
            ("mon 09:00-09:00", Err("no time")),
            ("mon 00:00-24:00", Err("whole day")),
            ("mon 09:00-10:00 12:00-13:00", Err("entry of its own")),
            ("mon 24:00-02:00", Err("not a time of day")),
            ("mo", Err("not a day")),
        ];
        for (text, want) in table {
            let got = Schedule::parse(text).map(|s| s.canonical());
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(g, w, "{text:?}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{text:?}: {g}"),
                _ => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_range_crossing_midnight_belongs_to_the_day_it_starts() {
        // 2026-11-23 is a Monday.
        let night = Schedule::parse("mon-fri 19:00-07:00, sat-sun").unwrap();
        let friday_late = Schedule::parse("fri 22:00-02:00").unwrap();
        let table: &[(&Schedule, &str, bool)] = &[
            (&night, "2026-11-23 06:59", false), // Monday morning: Sunday's is all day, ended
            (&night, "2026-11-23 18:59", false),
            (&night, "2026-11-23 19:00", true),
            (&night, "2026-11-24 06:59", true), // Tuesday morning: Monday's night
            (&night, "2026-11-24 07:00", false),
            (&night, "2026-11-28 06:59", true), // Saturday morning: Friday's night
            (&night, "2026-11-28 12:00", true), // and all Saturday
            (&night, "2026-11-29 23:59", true), // all Sunday
            (&friday_late, "2026-11-27 21:59", false),
            (&friday_late, "2026-11-27 22:00", true),
            (&friday_late, "2026-11-28 01:59", true), // Saturday, Friday's range
            (&friday_late, "2026-11-28 02:00", false),
            (&friday_late, "2026-11-28 23:00", false), // Saturday's own: none
            (&friday_late, "2026-11-22 01:00", false), // Sunday
        ];
        for (schedule, at, want) in table {
            assert_eq!(
                schedule.contains(local(at)),
                *want,
                "{} at {at}",
                schedule.canonical()
            );
        }
    }

    #[test]
    fn wrapping_day_ranges_and_all_day_entries() {
        let weekend = Schedule::parse("fri-mon").unwrap();
        let table: &[(&str, bool)] = &[
            ("2026-11-26 23:59", false), // Thursday
            ("2026-11-27 00:00", true),  // Friday
            ("2026-11-30 23:59", true),  // Monday
            ("2026-12-01 00:00", false), // Tuesday
        ];
        for (at, want) in table {
            assert_eq!(weekend.contains(local(at)), *want, "{at}");
        }
        assert!(Schedule::parse("always")
            .unwrap()
            .contains(local("2026-11-26 03:00")));
    }

    #[test]
    fn hours_follow_the_zone_across_daylight_saving_changes() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let night = Schedule::parse("daily 19:00-07:00").unwrap();
        // Winter: 19:00 in Berlin is 18:00 UTC; summer: 17:00 UTC.
        assert!(!night.contains_instant(berlin, utc("2026-01-15T17:59:00Z")));
        assert!(night.contains_instant(berlin, utc("2026-01-15T18:00:00Z")));
        assert!(!night.contains_instant(berlin, utc("2026-07-15T16:59:00Z")));
        assert!(night.contains_instant(berlin, utc("2026-07-15T17:00:00Z")));
        // Clocks go forward at 01:00 UTC on 2026-03-29 (02:00 -> 03:00):
        // the night of the 28th ends at 07:00 summer time, 05:00 UTC.
        assert!(night.contains_instant(berlin, utc("2026-03-29T04:59:00Z")));
        assert!(!night.contains_instant(berlin, utc("2026-03-29T05:00:00Z")));
        assert_eq!(
            night.next_change(berlin, utc("2026-03-29T00:00:00Z")),
            Some(utc("2026-03-29T05:00:00Z"))
        );
        // A range starting inside the skipped hour starts when it ends.
        let gap = Schedule::parse("sun 02:30-04:00").unwrap();
        assert_eq!(
            gap.next_change(berlin, utc("2026-03-28T12:00:00Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        // Clocks go back at 01:00 UTC on 2026-10-25 (03:00 -> 02:00): the
        // night lasts an hour longer in UTC, ending at 06:00 UTC.
        assert!(night.contains_instant(berlin, utc("2026-10-25T05:59:00Z")));
        assert_eq!(
            night.next_change(berlin, utc("2026-10-25T03:00:00Z")),
            Some(utc("2026-10-25T06:00:00Z"))
        );
    }

    #[test]
    fn the_next_change_is_the_next_edge_that_flips_availability() {
        let tokyo: Tz = "Asia/Tokyo".parse().unwrap();
        let table: &[(&str, &str, Option<&str>)] = &[
            // Monday 12:00 in Tokyo (03:00 UTC): starts at 19:00 = 10:00 UTC.
            (
                "mon-fri 19:00-07:00, sat-sun",
                "2026-11-23T03:00:00Z",
                Some("2026-11-23T10:00:00Z"),
            ),
            // Friday 20:00 Tokyo: Friday's night runs into the weekend,
            // which runs into nothing on Monday: ends Monday 00:00 Tokyo.
            (
                "mon-fri 19:00-07:00, sat-sun",
                "2026-11-27T11:00:00Z",
                Some("2026-11-29T15:00:00Z"),
            ),
            // Adjacent entries do not count as changes.
            (
                "mon 10:00-12:00, mon 12:00-14:00",
                "2026-11-23T01:30:00Z",
                Some("2026-11-23T05:00:00Z"),
            ),
            ("always", "2026-11-23T03:00:00Z", None),
            ("daily", "2026-11-23T03:00:00Z", None),
        ];
        for (text, now, want) in table {
            let got = Schedule::parse(text).unwrap().next_change(tokyo, utc(now));
            assert_eq!(got, want.map(utc), "{text} at {now}");
        }
    }

    #[test]
    fn the_operator_wins_over_the_agent_until_cleared() {
        // Monday 2026-11-23 12:00 UTC.
        let now = utc("2026-11-23T12:00:00Z");
        let hours = |agent: Option<&str>, operator: Option<&str>, strict| WorkerHoursState {
            time_zone: Some("UTC".into()),
            agent: agent.map(str::to_string),
            operator: operator.map(str::to_string),
            strict,
        };
        let table: &[(WorkerHoursState, bool, bool, Option<HoursSetBy>)] = &[
            (hours(None, None, false), true, false, None),
            (hours(None, None, true), true, false, None),
            (
                hours(Some("sat-sun"), None, false),
                false,
                false,
                Some(HoursSetBy::Agent),
            ),
            (
                hours(Some("sat-sun"), None, true),
                false,
                true,
                Some(HoursSetBy::Agent),
            ),
            (
                hours(Some("sat-sun"), Some("always"), true),
                true,
                false,
                Some(HoursSetBy::Operator),
            ),
            (
                hours(None, Some("tue"), false),
                false,
                false,
                Some(HoursSetBy::Operator),
            ),
            (
                hours(Some("mon"), Some("tue"), true),
                false,
                true,
                Some(HoursSetBy::Operator),
            ),
        ];
        for (h, takes, back, by) in table {
            assert_eq!(takes_new_work(h, now), *takes, "{h:?}");
            assert_eq!(hands_back(h, now), *back, "{h:?}");
            let view = availability_view(h, now);
            assert_eq!(view.as_ref().map(|v| v.set_by), *by, "{h:?}");
            if let Some(v) = view {
                assert_eq!(v.available_now, *takes);
                assert_eq!(v.agent_schedule, h.agent);
            }
        }
    }

    #[test]
    fn an_agent_without_a_zone_reads_its_hours_in_utc() {
        let hours = WorkerHoursState {
            agent: Some("mon 09:00-10:00".into()),
            ..Default::default()
        };
        assert!(takes_new_work(&hours, utc("2026-11-23T09:30:00Z")));
        assert!(!takes_new_work(&hours, utc("2026-11-23T10:30:00Z")));
        assert_eq!(
            availability_view(&hours, utc("2026-11-23T09:30:00Z"))
                .unwrap()
                .time_zone,
            "UTC"
        );
    }

    #[test]
    fn reports_are_checked() {
        assert_eq!(
            validate_worker_hours(Some("Europe/Berlin"), Some("Mon-Fri 9:00-17:00"), true),
            Ok(ValidWorkerHours {
                time_zone: Some("Europe/Berlin".into()),
                available: Some("mon-fri 09:00-17:00".into()),
                strict: true,
            })
        );
        let err = validate_worker_hours(Some("Mars/Olympus"), None, false).unwrap_err();
        assert_eq!(err.field, "time_zone");
        assert!(err.message.contains("IANA"));
        let err = validate_worker_hours(None, Some("   "), false).unwrap_err();
        assert_eq!(err.field, "available");
        let long = "mon, ".repeat(300);
        assert!(validate_schedule("available", &long)
            .unwrap_err()
            .message
            .contains("longer"));
    }
}
