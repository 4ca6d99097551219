//! The blocklist: a worker that keeps failing one render's chunks stops
//! getting them. After `blocklist_after` failed chunks of one render on one
//! worker (the broker's `--blocklist-after`, or the render's own), that
//! worker is blocked from the render until the entry expires
//! (`--blocklist-expiry`, by the scheduler's tick) or an operator clears
//! it. Only chunks count: a failed video is ffmpeg's, not the scene's. When
//! every worker able to take a render is blocked from it, the render fails
//! with a reason that says so, instead of waiting for ever.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::{carries_tags, ValidationError};

/// Failed chunks of one render on one worker before it is blocked.
pub const DEFAULT_BLOCKLIST_AFTER: i64 = 3;
/// The most a render may allow.
pub const MAX_BLOCKLIST_AFTER: i64 = 100;

/// A render's own `blocklist_after`, if it gave one.
pub fn validate_blocklist_after(value: Option<i64>) -> Result<Option<i64>, ValidationError> {
    match value {
        Some(n) if !(1..=MAX_BLOCKLIST_AFTER).contains(&n) => Err(ValidationError::new(
            "blocklist_after",
            format!("is {n}; give 1 to {MAX_BLOCKLIST_AFTER} failed chunks, or leave it out for the broker's --blocklist-after"),
        )),
        other => Ok(other),
    }
}

/// A worker's record with one render: how many of its chunks failed there,
/// and whether it is blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlocklistCount<T> {
    pub failures: i64,
    pub blocked_at: Option<T>,
}

/// The record after one more failed chunk at `now`: blocked once the
/// failures reach `threshold` (and from then on, until cleared).
pub fn after_failure<T: Clone>(
    before: Option<BlocklistCount<T>>,
    threshold: i64,
    now: T,
) -> BlocklistCount<T> {
    let failures = before.as_ref().map_or(0, |b| b.failures) + 1;
    let blocked_at = match before.and_then(|b| b.blocked_at) {
        Some(at) => Some(at),
        None => (failures >= threshold).then_some(now),
    };
    BlocklistCount {
        failures,
        blocked_at,
    }
}

/// Whether the failure that led from `before` to `after` blocked the
/// worker (what the stores log).
pub fn became_blocked<T>(before: Option<&BlocklistCount<T>>, after: &BlocklistCount<T>) -> bool {
    after.blocked_at.is_some() && before.is_none_or(|b| b.blocked_at.is_none())
}

/// A render whose workers may all be blocked from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedRender {
    pub id: Uuid,
    pub tags: Vec<String>,
    /// The workers blocked from it.
    pub blocked: BTreeSet<Uuid>,
}

/// A worker that could take work now or later (not disabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EligibleWorker {
    pub id: Uuid,
    pub name: String,
    pub tags: Vec<String>,
}

/// The renders to fail because every worker able to take them is blocked
/// from them, each with its reason. A render no registered worker can take
/// is not failed: it waits for a worker, as any render does.
pub fn starved_renders(
    renders: &[BlockedRender],
    workers: &[EligibleWorker],
) -> Vec<(Uuid, String)> {
    renders
        .iter()
        .filter_map(|r| {
            let able: Vec<&EligibleWorker> = workers
                .iter()
                .filter(|w| carries_tags(&w.tags, &r.tags))
                .collect();
            if able.is_empty() || !able.iter().all(|w| r.blocked.contains(&w.id)) {
                return None;
            }
            let names: Vec<&str> = able.iter().map(|w| w.name.as_str()).collect();
            Some((
                r.id,
                format!(
                    "every worker able to take it is blocklisted after failing its chunks ({}); see GET /renders/{}/blocklist and the failed tasks' logs, fix the cause, clear the blocklist and requeue it",
                    names.join(", "),
                    r.id
                ),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_blocked_when_its_failures_reach_the_threshold_and_stays_blocked() {
        // (failures before, blocked before, threshold, failures after, blocked after)
        type Case = (Option<(i64, bool)>, i64, i64, bool);
        let table: &[Case] = &[
            (None, 3, 1, false),
            (Some((1, false)), 3, 2, false),
            (Some((2, false)), 3, 3, true),
            (Some((3, true)), 3, 4, true),
            (None, 1, 1, true),
        ];
        for (before, threshold, failures, blocked) in table {
            let before = before.map(|(failures, blocked)| BlocklistCount {
                failures,
                blocked_at: blocked.then_some(0),
            });
            let after = after_failure(before, *threshold, 9);
            assert_eq!(after.failures, *failures, "{before:?}");
            assert_eq!(after.blocked_at.is_some(), *blocked, "{before:?}");
            if let Some(BlocklistCount {
                blocked_at: Some(at),
                ..
            }) = before
            {
                assert_eq!(after.blocked_at, Some(at), "blocked since the first time");
            }
        }
    }

    #[test]
    fn a_render_override_is_bounded() {
        assert_eq!(validate_blocklist_after(None), Ok(None));
        assert_eq!(validate_blocklist_after(Some(1)), Ok(Some(1)));
        for bad in [0, -1, 101] {
            let e = validate_blocklist_after(Some(bad)).unwrap_err();
            assert!(e.message.contains("1 to 100"), "{}", e.message);
        }
    }

    fn worker(n: u128, tags: &[&str]) -> EligibleWorker {
        EligibleWorker {
            id: Uuid::from_u128(n),
            name: format!("w{n}"),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn a_render_fails_only_when_every_able_worker_is_blocked() {
        let workers = [worker(1, &["gpu"]), worker(2, &["gpu"]), worker(3, &[])];
        let render = |tags: &[&str], blocked: &[u128]| BlockedRender {
            id: Uuid::from_u128(99),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            blocked: blocked.iter().map(|n| Uuid::from_u128(*n)).collect(),
        };
        // (render tags, blocked workers, fails)
        let table: &[(&[&str], &[u128], bool)] = &[
            (&["gpu"], &[1], false),
            (&["gpu"], &[1, 2], true),
            (&[], &[1, 2], false),
            (&[], &[1, 2, 3], true),
            (&["linux"], &[1, 2, 3], false),
        ];
        for (tags, blocked, fails) in table {
            let starved = starved_renders(&[render(tags, blocked)], &workers);
            assert_eq!(!starved.is_empty(), *fails, "{tags:?} {blocked:?}");
        }
        let starved = starved_renders(&[render(&["gpu"], &[1, 2])], &workers);
        assert!(starved[0].1.contains("(w1, w2)"), "{}", starved[0].1);
        assert!(starved[0].1.contains("blocklist"), "{}", starved[0].1);
    }
}
