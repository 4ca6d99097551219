//! The farm's event log: what is recorded, how long it is kept, and where a
//! reader resumes. The stores record events with the changes they describe
//! (status changes in the same transaction or command; progress and logs from
//! the stored state, once a second); `api::events` streams them.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The coalescing interval of progress and log events: at most one of each
/// per task per interval, and one progress event per render.
pub const COALESCE_INTERVAL: Duration = Duration::from_secs(1);

/// How long events are kept: a client that was away longer starts over
/// (a `reset` event).
pub const EVENT_RETENTION: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// The most events kept, whatever their age, so that a busy farm's log stays
/// bounded (at ~200 events a second, about 40 minutes).
pub const EVENTS_KEPT: i64 = 500_000;

/// How long a reader waits for an event whose id was handed out but which
/// is not visible yet (a writer on another broker between taking the id and
/// inserting the event) before going on without it.
pub const EVENT_GAP_GRACE: Duration = Duration::from_secs(2);

/// The farm summary stream sends at most one summary per interval.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

/// Renders listed in a farm summary's `running`.
pub const SUMMARY_RUNNING_LIMIT: i64 = 50;

/// The ids a store has kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventBounds {
    /// The smallest id still kept; `None` when none is.
    pub oldest: Option<i64>,
    /// The largest id ever handed out (0 before the first event); events up
    /// to it may have been purged.
    pub newest: i64,
}

/// Where a reader that has seen every event up to `after` goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Right after `after`: nothing it has not seen is gone.
    After(i64),
    /// It cannot: it must reload, then go on after `newest`. The message
    /// says why.
    Reset { newest: i64, message: String },
}

/// Decides where a reader resumes: after `after` when every event since is
/// still kept, else from the newest with a reset.
pub fn resume_from(after: i64, bounds: EventBounds) -> Resume {
    if after > bounds.newest {
        return Resume::Reset {
            newest: bounds.newest,
            message: format!(
                "this broker has no event {after} (its newest is {}): its store was replaced \
                 or restored; reload everything, then follow from here",
                bounds.newest
            ),
        };
    }
    let missing = match bounds.oldest {
        None => after < bounds.newest,
        Some(oldest) => after + 1 < oldest,
    };
    if missing {
        return Resume::Reset {
            newest: bounds.newest,
            message: format!(
                "events after {after} are no longer kept (the broker keeps {} hours of events, \
                 at most {EVENTS_KEPT}); reload everything, then follow from here",
                EVENT_RETENTION.num_hours()
            ),
        };
    }
    Resume::After(after)
}

/// What a purge keeps: events newer than `now - EVENT_RETENTION`, and of
/// those at most the newest `EVENTS_KEPT`.
pub fn event_cutoff(now: DateTime<Utc>) -> DateTime<Utc> {
    now - EVENT_RETENTION
}

/// The events a reader may pass on, from a batch read after `after`
/// (ascending ids): the run that follows `after` without a gap, and past a
/// gap only once it has lasted `EVENT_GAP_GRACE` (`gap_since`: when the
/// reader first saw this gap). Returns how many of `ids` to pass on.
pub fn contiguous_prefix(
    after: i64,
    ids: &[i64],
    gap_since: Option<std::time::Instant>,
    now: std::time::Instant,
) -> usize {
    let mut expected = after + 1;
    for (i, id) in ids.iter().enumerate() {
        if *id != expected {
            let waited =
                gap_since.is_some_and(|since| now.duration_since(since) >= EVENT_GAP_GRACE);
            if !waited {
                return i;
            }
        }
        expected = id + 1;
    }
    ids.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(oldest: Option<i64>, newest: i64) -> EventBounds {
        EventBounds { oldest, newest }
    }

    #[test]
    fn a_reader_resumes_where_it_left_off_while_its_events_are_kept() {
        assert_eq!(resume_from(5, bounds(Some(1), 9)), Resume::After(5));
        assert_eq!(resume_from(9, bounds(Some(1), 9)), Resume::After(9));
        assert_eq!(resume_from(4, bounds(Some(5), 9)), Resume::After(4));
        assert_eq!(resume_from(0, bounds(None, 0)), Resume::After(0));
        assert_eq!(resume_from(7, bounds(None, 7)), Resume::After(7));
    }

    #[test]
    fn a_reader_too_far_behind_or_ahead_starts_over() {
        for (after, b) in [
            (3, bounds(Some(5), 9)),
            (0, bounds(Some(2), 9)),
            (3, bounds(None, 9)),
            (10, bounds(Some(1), 9)),
            (1, bounds(None, 0)),
        ] {
            match resume_from(after, b) {
                Resume::Reset { newest, message } => {
                    assert_eq!(newest, b.newest);
                    assert!(message.contains("reload"), "{message}");
                }
                other => panic!("{after} with {b:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn a_gap_holds_readers_back_until_its_grace_has_passed() {
        let now = std::time::Instant::now();
        assert_eq!(contiguous_prefix(4, &[5, 6, 7], None, now), 3);
        assert_eq!(contiguous_prefix(4, &[5, 7, 8], None, now), 1);
        assert_eq!(contiguous_prefix(4, &[6, 7], None, now), 0);
        assert_eq!(contiguous_prefix(4, &[6, 7], Some(now), now), 0);
        let long_ago = now - EVENT_GAP_GRACE;
        assert_eq!(contiguous_prefix(4, &[6, 7], Some(long_ago), now), 2);
        assert_eq!(contiguous_prefix(4, &[], None, now), 0);
    }
}
