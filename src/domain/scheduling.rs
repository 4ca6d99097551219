//! The scheduler's decisions, as pure functions: when work has waited too
//! long for its priority, and which running work makes way for it.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use renderfarm_wire::{Priority, PriorityAllowances, TaskKind};
use uuid::Uuid;

use super::carries_tags;

/// How long pending work of each priority may wait before it may preempt
/// running work of a lower priority; `None`: never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowances {
    pub low: Option<Duration>,
    pub normal: Option<Duration>,
    pub high: Option<Duration>,
    pub urgent: Option<Duration>,
}

impl Default for Allowances {
    /// urgent at once, high after 2 minutes, normal after 30, low never.
    fn default() -> Self {
        Self {
            low: None,
            normal: Some(Duration::minutes(30)),
            high: Some(Duration::minutes(2)),
            urgent: Some(Duration::zero()),
        }
    }
}

impl Allowances {
    pub fn for_priority(&self, priority: Priority) -> Option<Duration> {
        match priority {
            Priority::Low => self.low,
            Priority::Normal => self.normal,
            Priority::High => self.high,
            Priority::Urgent => self.urgent,
        }
    }

    /// Pending work of `priority` that became pending at or before this
    /// moment is overdue at `now`; `None`: never overdue.
    pub fn overdue_cutoff(&self, priority: Priority, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.for_priority(priority).map(|allowance| now - allowance)
    }

    /// As shown by `GET /scheduler`.
    pub fn to_wire(self) -> PriorityAllowances {
        let secs = |d: Option<Duration>| d.map(|d| d.num_milliseconds() as f64 / 1000.0);
        PriorityAllowances {
            low: secs(self.low),
            normal: secs(self.normal),
            high: secs(self.high),
            urgent: secs(self.urgent),
        }
    }
}

/// Overdue pending work of one render, in dispatch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverdueWork {
    pub render_id: Uuid,
    pub priority: Priority,
    /// Tags a worker needs to take it.
    pub tags: Vec<String>,
    /// How many of its tasks are overdue.
    pub tasks: i64,
}

/// A task being rendered, as preemption sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningWork {
    pub task_id: Uuid,
    pub lease_id: Uuid,
    pub priority: Priority,
    pub started_at: DateTime<Utc>,
    /// The tags of the worker rendering it: the overdue work it could take
    /// once freed.
    pub worker_tags: Vec<String>,
}

/// What preemption decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreemptionPlan {
    /// Running tasks to take back, with the lease they run under.
    pub preempt: Vec<(Uuid, Uuid)>,
    /// Overdue tasks left with no worker: how many more workers would help now.
    pub workers_wanted: i64,
}

/// Decides which running tasks make way for overdue work. `overdue` is in
/// dispatch order; each overdue task first takes an idle worker that can run
/// it, else preempts one running task of a strictly lower priority whose
/// worker can run it — the lowest priority first, then the most recently
/// started (least work lost) — else counts as a worker wanted.
pub fn plan_preemption(
    overdue: &[OverdueWork],
    running: &[RunningWork],
    idle_worker_tags: &[Vec<String>],
) -> PreemptionPlan {
    let mut plan = PreemptionPlan::default();
    let mut idle: Vec<&Vec<String>> = idle_worker_tags.iter().collect();
    let mut taken: HashSet<Uuid> = HashSet::new();
    for work in overdue {
        let mut left = work.tasks;
        while left > 0 {
            if let Some(i) = idle.iter().position(|tags| carries_tags(tags, &work.tags)) {
                idle.swap_remove(i);
                left -= 1;
                continue;
            }
            let victim = running
                .iter()
                .filter(|r| {
                    r.priority < work.priority
                        && !taken.contains(&r.task_id)
                        && carries_tags(&r.worker_tags, &work.tags)
                })
                .min_by_key(|r| (r.priority, std::cmp::Reverse(r.started_at)));
            match victim {
                Some(v) => {
                    taken.insert(v.task_id);
                    plan.preempt.push((v.task_id, v.lease_id));
                    left -= 1;
                }
                None => {
                    // Nothing else can serve this render's overdue tasks.
                    plan.workers_wanted += left;
                    left = 0;
                }
            }
        }
    }
    plan
}

/// Runnable work that no idle worker can take, by the tags a worker needs
/// for it: how many more workers could start work right now (the signal an
/// autoscaler scales on, so that a GPU pool and a CPU pool grow apart).
///
/// `runnable` is pending work that may run, grouped by the tags its tasks
/// need and the task kind a worker must run (chunks: `blender`; a completed
/// render's video: `ffmpeg`); each idle worker (its tags and the kinds it
/// runs) takes one task it can run, the groups that need the most tags
/// first (a worker with many tags can stand in for fewer, not the other way
/// round), follow-up kinds before chunks among equals (fewer workers run
/// them). Groups that need no more worker are left out.
pub fn workers_wanted(
    runnable: &[(Vec<String>, TaskKind, i64)],
    idle: &[(Vec<String>, Vec<TaskKind>)],
) -> Vec<(Vec<String>, TaskKind, i64)> {
    let mut groups: Vec<&(Vec<String>, TaskKind, i64)> =
        runnable.iter().filter(|(_, _, n)| *n > 0).collect();
    groups.sort_by(|a, b| {
        b.0.len()
            .cmp(&a.0.len())
            .then_with(|| b.1.cmp(&a.1))
            .then_with(|| a.0.cmp(&b.0))
    });
    let mut idle: Vec<&(Vec<String>, Vec<TaskKind>)> = idle.iter().collect();
    let mut wanted = Vec::new();
    for (tags, kind, tasks) in groups {
        let mut left = *tasks;
        while left > 0 {
            match idle
                .iter()
                .position(|(w, kinds)| kinds.contains(kind) && carries_tags(w, tags))
            {
                Some(i) => {
                    idle.swap_remove(i);
                    left -= 1;
                }
                None => break,
            }
        }
        if left > 0 {
            wanted.push((tags.clone(), *kind, left));
        }
    }
    wanted.sort();
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn overdue(render: u128, priority: Priority, tasks: i64, tags: &[&str]) -> OverdueWork {
        OverdueWork {
            render_id: id(render),
            priority,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            tasks,
        }
    }

    fn running(task: u128, priority: Priority, started: i64, tags: &[&str]) -> RunningWork {
        RunningWork {
            task_id: id(task),
            lease_id: id(task + 1000),
            priority,
            started_at: at(started),
            worker_tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn preempted(plan: &PreemptionPlan) -> Vec<u128> {
        plan.preempt.iter().map(|(t, _)| t.as_u128()).collect()
    }

    #[test]
    fn allowances_default_to_urgent_now_high_two_minutes_normal_thirty_low_never() {
        let a = Allowances::default();
        let now = at(10_000);
        assert_eq!(a.overdue_cutoff(Priority::Urgent, now), Some(now));
        assert_eq!(
            a.overdue_cutoff(Priority::High, now),
            Some(now - Duration::minutes(2))
        );
        assert_eq!(
            a.overdue_cutoff(Priority::Normal, now),
            Some(now - Duration::minutes(30))
        );
        assert_eq!(a.overdue_cutoff(Priority::Low, now), None);
    }

    #[test]
    fn the_lowest_priority_then_the_most_recently_started_task_makes_way() {
        // (what, overdue work, running work, idle workers' tags, preempted tasks, workers wanted)
        type Case = (
            &'static str,
            Vec<OverdueWork>,
            Vec<RunningWork>,
            Vec<Vec<String>>,
            Vec<u128>,
            i64,
        );
        let table: Vec<Case> = vec![
            (
                "lowest level first",
                vec![overdue(1, Priority::Urgent, 1, &[])],
                vec![
                    running(10, Priority::Normal, 0, &[]),
                    running(11, Priority::Low, 0, &[]),
                ],
                vec![],
                vec![11],
                0,
            ),
            (
                "then the most recently started",
                vec![overdue(1, Priority::Urgent, 1, &[])],
                vec![
                    running(10, Priority::Low, 5, &[]),
                    running(11, Priority::Low, 50, &[]),
                    running(12, Priority::Low, 20, &[]),
                ],
                vec![],
                vec![11],
                0,
            ),
            (
                "only strictly lower levels",
                vec![overdue(1, Priority::High, 2, &[])],
                vec![
                    running(10, Priority::High, 0, &[]),
                    running(11, Priority::Urgent, 0, &[]),
                    running(12, Priority::Normal, 0, &[]),
                ],
                vec![],
                vec![12],
                1,
            ),
            (
                "an idle worker that can take it is used first",
                vec![overdue(1, Priority::Urgent, 2, &[])],
                vec![running(10, Priority::Low, 0, &[])],
                vec![vec![]],
                vec![10],
                0,
            ),
            (
                "an idle worker without the tags does not count",
                vec![overdue(1, Priority::Urgent, 1, &["gpu"])],
                vec![
                    running(10, Priority::Low, 0, &["cpu"]),
                    running(11, Priority::Low, 0, &["gpu"]),
                ],
                vec![vec!["cpu".into()]],
                vec![11],
                0,
            ),
            (
                "each running task is taken once; the rest is demand",
                vec![
                    overdue(1, Priority::Urgent, 3, &[]),
                    overdue(2, Priority::High, 2, &[]),
                ],
                vec![
                    running(10, Priority::Low, 0, &[]),
                    running(11, Priority::Normal, 0, &[]),
                ],
                vec![],
                vec![10, 11],
                3,
            ),
            (
                "nothing overdue, nothing to do",
                vec![],
                vec![running(10, Priority::Low, 0, &[])],
                vec![],
                vec![],
                0,
            ),
        ];
        for (what, overdue, running, idle, want, wanted) in table {
            let plan = plan_preemption(&overdue, &running, &idle);
            assert_eq!(preempted(&plan), want, "{what}");
            assert_eq!(plan.workers_wanted, wanted, "{what}");
        }
    }

    #[test]
    fn a_million_overdue_tasks_are_planned_without_a_million_steps() {
        let plan = plan_preemption(
            &[overdue(1, Priority::Urgent, 1_000_000, &[])],
            &[running(10, Priority::Low, 0, &[])],
            &[],
        );
        assert_eq!((plan.preempt.len(), plan.workers_wanted), (1, 999_999));
    }

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn workers_wanted_counts_what_no_idle_worker_can_take_by_tags_and_kind() {
        use TaskKind::{Blender as B, Ffmpeg as F};
        // (runnable groups, idle workers' tags and kinds, wanted)
        type Case = (
            &'static [(&'static [&'static str], TaskKind, i64)],
            &'static [(&'static [&'static str], &'static [TaskKind])],
            &'static [(&'static [&'static str], TaskKind, i64)],
        );
        let table: &[Case] = &[
            (&[], &[(&[], &[B])], &[]),
            (&[(&[], B, 3)], &[], &[(&[], B, 3)]),
            (
                &[(&[], B, 3)],
                &[(&[], &[B]), (&["gpu"], &[B])],
                &[(&[], B, 1)],
            ),
            // The GPU worker goes to the GPU work, not to the plain work.
            (
                &[(&[], B, 2), (&["gpu"], B, 1)],
                &[(&["gpu"], &[B]), (&[], &[B])],
                &[(&[], B, 1)],
            ),
            (
                &[(&["gpu"], B, 2)],
                &[(&[], &[B]), (&[], &[B])],
                &[(&["gpu"], B, 2)],
            ),
            (&[(&["gpu"], B, 0), (&[], B, 0)], &[], &[]),
            // A video needs a worker that runs ffmpeg; one that runs both
            // goes to the video first, as fewer workers can.
            (&[(&[], F, 1)], &[(&[], &[B])], &[(&[], F, 1)]),
            (
                &[(&[], F, 1), (&[], B, 1)],
                &[(&[], &[B, F])],
                &[(&[], B, 1)],
            ),
            (
                &[(&[], F, 1), (&[], B, 1)],
                &[(&[], &[B, F]), (&[], &[B])],
                &[],
            ),
        ];
        for (runnable, idle, want) in table {
            let runnable: Vec<_> = runnable.iter().map(|(t, k, n)| (tags(t), *k, *n)).collect();
            let idle: Vec<_> = idle.iter().map(|(t, k)| (tags(t), k.to_vec())).collect();
            let want: Vec<_> = want.iter().map(|(t, k, n)| (tags(t), *k, *n)).collect();
            assert_eq!(
                workers_wanted(&runnable, &idle),
                want,
                "{runnable:?} with idle {idle:?}"
            );
        }
    }
}
