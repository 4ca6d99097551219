//! Warm workers (issue 17, point 3): an agent keeps Blender loaded with the
//! scene of the render it worked on last (`--warm`), so its next chunk of
//! that render skips Blender's start-up and the scene's load. The claim
//! therefore prefers, for each worker, a pending chunk of the render it
//! claimed last over an equal-priority chunk of an older render, within a
//! bound, and never over a higher priority.
//!
//! The bound: a worker takes at most [`WARM_STREAK_LIMIT`] chunks in a row
//! by preference while an older render of the same priority has claimable
//! work for it; its next claim then follows [`CLAIM_ORDER`] and so takes the
//! older render (which becomes its warm render). A pending chunk of the
//! oldest render of the highest claimable priority therefore waits for at
//! most `WARM_STREAK_LIMIT` claims of each worker, that is about
//! `WARM_STREAK_LIMIT` chunk durations of the fastest worker that could take
//! it, however many workers the farm has.
//!
//! [`CLAIM_ORDER`]: super::CLAIM_ORDER

use renderfarm_wire::Priority;

/// How many claims in a row a worker may take by preference for its warm
/// render while an older render of the same priority waits. A switch costs
/// a cold start (Blender's start-up and the scene's load) whenever it comes,
/// so waiting pays only when another worker (warm on the older render, or
/// coming free) takes the older chunk meanwhile; this many chunks give the
/// farm that chance, while at one-minute chunks the older render's wait
/// stays well inside the normal priority's wait allowance (30 minutes), so
/// warmth alone never makes older work overdue for preemption.
pub const WARM_STREAK_LIMIT: i64 = 8;

/// What a worker's record keeps between its claims; `R` is how the store
/// names a render (its submission sequence in both stores).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmState<R> {
    /// The render of the worker's last claimed task, if it claimed one.
    pub last_render: Option<R>,
    /// How many claims in a row the worker took by preference over an older
    /// render of equal priority.
    pub streak: i64,
}

impl<R> Default for WarmState<R> {
    fn default() -> Self {
        Self {
            last_render: None,
            streak: 0,
        }
    }
}

/// The first render in claim order that has claimable work for the worker:
/// what a claim takes when no preference applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimHead<R> {
    pub render: R,
    pub priority: Priority,
}

/// Where a claim looks first: a claimable chunk of `render` at `priority`
/// (the head's, never another). When there is none, the claim takes the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmTarget<R> {
    pub render: R,
    pub priority: Priority,
}

impl<R: Copy + PartialEq> WarmState<R> {
    /// Whether a preference may apply at all, before the head is known: a
    /// store that must look the head up separately skips the look when not.
    pub fn may_prefer(&self) -> bool {
        self.last_render.is_some() && self.streak < WARM_STREAK_LIMIT
    }

    /// The chunk to look for before the head's: one of the worker's last
    /// render at the head's priority, unless that render is the head itself
    /// (no preference needed) or the streak reached its limit.
    pub fn target(&self, head: &ClaimHead<R>) -> Option<WarmTarget<R>> {
        let last = self.last_render.filter(|_| self.may_prefer())?;
        (last != head.render).then_some(WarmTarget {
            render: last,
            priority: head.priority,
        })
    }

    /// The state after the worker claimed a chunk of `claimed`, found through
    /// its [`target`](Self::target) (`preferred`) or as the head.
    pub fn after_claim(&self, claimed: R, preferred: bool) -> Self {
        Self {
            last_render: Some(claimed),
            streak: if preferred { self.streak + 1 } else { 0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ClaimKey, SortOrder, CLAIM_ORDER};
    use Priority::*;

    fn state(last: Option<u32>, streak: i64) -> WarmState<u32> {
        WarmState {
            last_render: last,
            streak,
        }
    }

    fn head(render: u32, priority: Priority) -> ClaimHead<u32> {
        ClaimHead { render, priority }
    }

    #[test]
    fn the_last_render_is_looked_for_first_at_the_head_s_priority_within_the_streak() {
        let target = |render, priority| Some(WarmTarget { render, priority });
        let k = WARM_STREAK_LIMIT;
        let table = [
            // Never claimed: nothing is warm.
            (state(None, 0), head(1, Normal), None),
            // Warm on another render than the head: look there first, at
            // the head's priority (a lower-priority warm render then has no
            // chunk to offer, so the head wins).
            (state(Some(2), 0), head(1, Normal), target(2, Normal)),
            (state(Some(2), 0), head(1, Urgent), target(2, Urgent)),
            (state(Some(2), k - 1), head(1, Normal), target(2, Normal)),
            // The streak is spent: claim order decides.
            (state(Some(2), k), head(1, Normal), None),
            (state(Some(2), k + 3), head(1, Normal), None),
            // Warm on the head itself: the claim order takes it anyway.
            (state(Some(1), 0), head(1, Normal), None),
            (state(Some(1), k), head(1, Normal), None),
        ];
        for (state, head, want) in table {
            assert_eq!(state.target(&head), want, "{state:?} {head:?}");
        }
    }

    #[test]
    fn a_preferred_claim_extends_the_streak_and_any_other_resets_it() {
        let table = [
            (state(None, 0), 5, false, state(Some(5), 0)),
            (state(Some(2), 0), 2, true, state(Some(2), 1)),
            (state(Some(2), 7), 2, true, state(Some(2), 8)),
            (state(Some(2), 8), 1, false, state(Some(1), 0)),
            (state(Some(2), 3), 1, false, state(Some(1), 0)),
            (state(Some(1), 0), 1, false, state(Some(1), 0)),
        ];
        for (before, claimed, preferred, want) in table {
            assert_eq!(
                before.after_claim(claimed, preferred),
                want,
                "{before:?} claims {claimed} preferred={preferred}"
            );
        }
    }

    /// A queue of renders as the stores see it, claimed by the rule: the
    /// head in [`CLAIM_ORDER`], then the warm target if it has a chunk.
    struct Queue {
        /// (submission sequence, priority, pending chunks)
        renders: Vec<(u32, Priority, u32)>,
    }

    impl Queue {
        fn head(&self) -> Option<ClaimHead<u32>> {
            // The order's keys that compare renders, as the domain lists them.
            assert_eq!(
                &CLAIM_ORDER[..2],
                &[
                    (ClaimKey::Priority, SortOrder::Descending),
                    (ClaimKey::Submitted, SortOrder::Ascending)
                ]
            );
            self.renders
                .iter()
                .filter(|r| r.2 > 0)
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
                .map(|r| head(r.0, r.1))
        }

        fn claim(&mut self, warm: &mut WarmState<u32>) -> Option<u32> {
            let head = self.head()?;
            let target = warm.target(&head).filter(|t| {
                self.renders
                    .iter()
                    .any(|r| r.0 == t.render && r.1 == t.priority && r.2 > 0)
            });
            let render = target.map_or(head.render, |t| t.render);
            let entry = self.renders.iter_mut().find(|r| r.0 == render)?;
            entry.2 -= 1;
            *warm = warm.after_claim(render, target.is_some());
            Some(render)
        }
    }

    #[test]
    fn a_warm_worker_stays_on_its_render_but_never_over_a_higher_priority() {
        let mut queue = Queue {
            renders: vec![(1, Normal, 3), (2, Normal, 3), (3, High, 1)],
        };
        let mut warm = state(Some(2), 0);
        let order: Vec<u32> = std::iter::from_fn(|| queue.claim(&mut warm)).collect();
        // The high render first, then its own render (warm no more: it is
        // now on render 3, which has nothing left, so claim order decides).
        assert_eq!(order, [3, 1, 1, 1, 2, 2, 2]);

        let mut queue = Queue {
            renders: vec![(1, Normal, 3), (2, Normal, 3), (3, Low, 1)],
        };
        let mut warm = state(Some(2), 0);
        let order: Vec<u32> = std::iter::from_fn(|| queue.claim(&mut warm)).collect();
        assert_eq!(order, [2, 2, 2, 1, 1, 1, 3], "warm over older, not lower");
    }

    #[test]
    fn an_older_render_of_equal_priority_waits_at_most_the_streak_limit() {
        for streak in 0..=WARM_STREAK_LIMIT {
            let mut queue = Queue {
                renders: vec![(1, Normal, 2), (2, Normal, 100)],
            };
            let mut warm = state(Some(2), streak);
            let order: Vec<u32> = std::iter::from_fn(|| queue.claim(&mut warm)).collect();
            let waited = order.iter().position(|r| *r == 1).unwrap() as i64;
            assert_eq!(waited, WARM_STREAK_LIMIT - streak, "from streak {streak}");
            // Then the older render is the warm one and the head: it is
            // finished before the younger one goes on.
            assert_eq!(order[waited as usize + 1], 1, "from streak {streak}");
        }
    }
}
