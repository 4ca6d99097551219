//! Adaptive chunking (`chunk_size: "auto"`): the broker sizes a render's
//! remaining chunks from the frame times it measures, so that one chunk
//! takes about the render's `target_chunk_seconds`.
//!
//! The rule, in order:
//!
//! 1. **Initial plan.** A sequential render's first [`PROBES`] frames are
//!    one-frame tasks (the probes), so a first measurement arrives after one
//!    frame; the rest are chunks of [`FIRST_GUESS`] frames. A preview-first
//!    render's previews are one-frame tasks already and serve as its probes;
//!    its other frames are chunks of [`FIRST_GUESS`].
//! 2. **Measurement.** The frame time is the **median** over the render's
//!    last [`MEASURED_CHUNKS`] completed chunks (so that the chunks of the
//!    size in force soon outweigh the probes) of each chunk's
//!    `(finished_at - started_at) / frames`
//!    (the median, so that one chunk slowed by a busy machine does not swing
//!    the size). Blender's start and the scene's load are inside each
//!    chunk's time: that is the cost a bigger chunk amortises.
//! 3. **Desired size** `n = clamp(round(target / frame time), 1, 1000)`.
//! 4. **Hysteresis.** The first measurement always replaces the first guess
//!    (a guess carries no information); after that the pending chunks are
//!    re-split only when `n` and the size in force differ by more than a
//!    factor of [`HYSTERESIS`], so that the tick does not churn over noise.
//! 5. **Re-split, not cut at claim time.** The scheduler's tick replaces the
//!    render's re-splittable pending tasks ([`is_resplittable`]: pending,
//!    never handed out, no retry spent, not a preview) by chunks of `n`:
//!    each run of such tasks with consecutive frames becomes chunks of `n`
//!    ([`resplit_ranges`]); a run never crosses a frame held by another task
//!    (running, done, failed, a preview or a retried one). Re-splitting keeps
//!    the claim what it is (one index read, tasks as stored) and lets every
//!    listing and counter show the plan as it stands.

use renderfarm_wire::ChunkSizeSpec;

use super::{chunk, ChunkSize, FrameRange, ValidationError};

/// The target when `chunk_size: "auto"` comes without one.
pub const DEFAULT_TARGET_CHUNK_SECONDS: i64 = 60;
/// The targets a render may ask for, in seconds.
pub const MIN_TARGET_CHUNK_SECONDS: i64 = 5;
pub const MAX_TARGET_CHUNK_SECONDS: i64 = 3600;
/// One-frame tasks a sequential auto render starts with.
pub const PROBES: i64 = 2;
/// The chunk size of an auto render's other tasks until it is measured.
pub const FIRST_GUESS: i64 = 4;
/// How many of a render's latest completed chunks its frame time is
/// measured over.
pub const MEASURED_CHUNKS: i64 = 25;
/// The largest chunk adaptive chunking makes.
pub const MAX_ADAPTED_CHUNK: i64 = 1000;
/// How far the desired size may drift from the size in force before the
/// pending chunks are re-split.
pub const HYSTERESIS: f64 = 1.5;

/// How a render's frames are cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// Chunks of the size the user gave.
    Fixed(ChunkSize),
    /// Sized by the broker so that one chunk takes about `target_seconds`.
    Auto { target_seconds: i64 },
}

impl Chunking {
    /// The chunk size the render starts with.
    pub fn initial_size(self) -> ChunkSize {
        match self {
            Chunking::Fixed(size) => size,
            Chunking::Auto { .. } => ChunkSize(FIRST_GUESS),
        }
    }

    /// The target of an auto render; `None` for a fixed size.
    pub fn target_seconds(self) -> Option<i64> {
        match self {
            Chunking::Fixed(_) => None,
            Chunking::Auto { target_seconds } => Some(target_seconds),
        }
    }
}

/// Checks `chunk_size` and `target_chunk_seconds` as submitted.
pub fn validate_chunking(
    size: ChunkSizeSpec,
    target_seconds: Option<i64>,
) -> Result<Chunking, ValidationError> {
    match (size, target_seconds) {
        (ChunkSizeSpec::Frames(n), None) => Ok(Chunking::Fixed(ChunkSize::new(n)?)),
        (ChunkSizeSpec::Frames(_), Some(_)) => Err(ValidationError::new(
            "target_chunk_seconds",
            "is only for adaptive chunking; give chunk_size \"auto\" with it, or leave it out to keep a fixed chunk size",
        )),
        (ChunkSizeSpec::Auto, target) => {
            let target_seconds = target.unwrap_or(DEFAULT_TARGET_CHUNK_SECONDS);
            if !(MIN_TARGET_CHUNK_SECONDS..=MAX_TARGET_CHUNK_SECONDS).contains(&target_seconds) {
                return Err(ValidationError::new(
                    "target_chunk_seconds",
                    format!(
                        "is {target_seconds}; give the seconds one chunk should take, from {MIN_TARGET_CHUNK_SECONDS} to {MAX_TARGET_CHUNK_SECONDS}"
                    ),
                ));
            }
            Ok(Chunking::Auto { target_seconds })
        }
    }
}

/// An auto render's frames before its claim order is applied: the probes
/// (one frame each) then chunks of [`FIRST_GUESS`] frames of `range`.
pub fn probe_then_guess(range: FrameRange) -> impl Iterator<Item = FrameRange> {
    let probes_end = (range.start() + PROBES - 1).min(range.end());
    let probes = (range.start()..=probes_end).map(|f| FrameRange { start: f, end: f });
    let rest = (probes_end < range.end()).then(|| FrameRange {
        start: probes_end + 1,
        end: range.end(),
    });
    probes.chain(
        rest.into_iter()
            .flat_map(|r| chunk(r, ChunkSize(FIRST_GUESS))),
    )
}

/// How long one completed chunk of `frames` frames took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkTiming {
    pub frames: i64,
    pub seconds: f64,
}

/// The render's frame time in seconds: the median of its completed chunks'
/// seconds per frame; `None` before one completed.
pub fn measured_frame_seconds(completed: &[ChunkTiming]) -> Option<f64> {
    let mut per_frame: Vec<f64> = completed
        .iter()
        .filter(|c| c.frames > 0 && c.seconds.is_finite() && c.seconds >= 0.0)
        .map(|c| c.seconds / c.frames as f64)
        .collect();
    if per_frame.is_empty() {
        return None;
    }
    per_frame.sort_by(f64::total_cmp);
    let mid = per_frame.len() / 2;
    Some(if per_frame.len() % 2 == 1 {
        per_frame[mid]
    } else {
        (per_frame[mid - 1] + per_frame[mid]) / 2.0
    })
}

/// The chunk size that takes about `target_seconds` at `frame_seconds` a
/// frame: `clamp(round(target / frame time), 1, 1000)`.
pub fn desired_chunk_size(target_seconds: i64, frame_seconds: f64) -> ChunkSize {
    if frame_seconds <= 0.0 || !frame_seconds.is_finite() {
        // Frames that take no measurable time: as big as chunks get.
        return ChunkSize(MAX_ADAPTED_CHUNK);
    }
    let n = (target_seconds as f64 / frame_seconds).round();
    ChunkSize((n as i64).clamp(1, MAX_ADAPTED_CHUNK))
}

/// Whether the pending chunks, of size `in_force`, are re-split to
/// `desired`: always after the first measurement (`measured_before` false)
/// when the sizes differ, else only past the hysteresis factor.
pub fn needs_resplit(in_force: i64, desired: ChunkSize, measured_before: bool) -> bool {
    let desired = desired.get();
    if !measured_before {
        return desired != in_force;
    }
    let (big, small) = (
        desired.max(in_force) as f64,
        desired.min(in_force).max(1) as f64,
    );
    big > small * HYSTERESIS
}

/// A render's pending task as the re-split rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingChunk {
    pub frames: FrameRange,
    /// Its rank in the render's claim order.
    pub rank: i64,
    /// Whether a worker ever held it.
    pub handed_out: bool,
    pub retries: i64,
}

/// Whether a pending task may be replaced by a re-split: never handed out
/// (no log, no partial frames, no history to lose), no retry spent (a
/// re-split must not hand out retries anew), and in the render's bulk rank
/// (a preview stays the one-frame task ranked first).
pub fn is_resplittable(task: &PendingChunk, bulk_rank: i64) -> bool {
    !task.handed_out && task.retries == 0 && task.rank == bulk_rank
}

/// The claim rank of a render's chunks that are not previews (see
/// `domain::plan_tasks`).
pub fn bulk_rank(range: FrameRange, order: renderfarm_wire::FrameOrder) -> i64 {
    match order {
        renderfarm_wire::FrameOrder::Sequential => 0,
        renderfarm_wire::FrameOrder::PreviewFirst => super::preview_frames(range).len() as i64 + 1,
    }
}

/// The chunks that replace `pending` (ranges of tasks being re-split, in
/// any order): each run of consecutive frames cut into chunks of `size`,
/// lowest first. Frames out of `pending` are never covered, so a chunk
/// never crosses a frame another task holds.
pub fn resplit_ranges(pending: &[FrameRange], size: ChunkSize) -> Vec<FrameRange> {
    let mut sorted = pending.to_vec();
    sorted.sort_by_key(|r| r.start());
    let mut runs: Vec<FrameRange> = Vec::new();
    for r in sorted {
        match runs.last_mut() {
            Some(last) if last.end().checked_add(1) == Some(r.start()) => last.end = r.end(),
            _ => runs.push(r),
        }
    }
    runs.into_iter().flat_map(|run| chunk(run, size)).collect()
}

/// What the tick does for one auto render: the frame time it measured, and
/// the chunk size to re-split its pending tasks to, if any.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adaptation {
    pub frame_seconds: f64,
    pub resplit_to: Option<ChunkSize>,
}

/// The adaptation of a render with `target_seconds` whose chunk size in
/// force is `in_force`, measured before or not, from its completed chunks;
/// `None` before one completed.
pub fn adapt(
    target_seconds: i64,
    in_force: i64,
    measured_before: bool,
    completed: &[ChunkTiming],
) -> Option<Adaptation> {
    let frame_seconds = measured_frame_seconds(completed)?;
    let desired = desired_chunk_size(target_seconds, frame_seconds);
    Some(Adaptation {
        frame_seconds,
        resplit_to: needs_resplit(in_force, desired, measured_before).then_some(desired),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: i64, end: i64) -> FrameRange {
        FrameRange::new(start, end).unwrap()
    }

    fn pairs(ranges: impl IntoIterator<Item = FrameRange>) -> Vec<(i64, i64)> {
        ranges.into_iter().map(|r| (r.start(), r.end())).collect()
    }

    #[test]
    fn chunk_size_and_target_are_checked_together() {
        use ChunkSizeSpec::{Auto, Frames};
        type Case = (ChunkSizeSpec, Option<i64>, Result<Chunking, &'static str>);
        let table: &[Case] = &[
            (Frames(10), None, Ok(Chunking::Fixed(ChunkSize(10)))),
            (Frames(0), None, Err("chunk_size")),
            (Frames(10), Some(60), Err("target_chunk_seconds")),
            (Auto, None, Ok(Chunking::Auto { target_seconds: 60 })),
            (Auto, Some(5), Ok(Chunking::Auto { target_seconds: 5 })),
            (
                Auto,
                Some(3600),
                Ok(Chunking::Auto {
                    target_seconds: 3600,
                }),
            ),
            (Auto, Some(4), Err("target_chunk_seconds")),
            (Auto, Some(3601), Err("target_chunk_seconds")),
        ];
        for (size, target, want) in table {
            let got = validate_chunking(*size, *target).map_err(|e| e.field);
            assert_eq!(&got, want, "{size:?} with {target:?}");
        }
        let mixed = validate_chunking(Frames(10), Some(60)).unwrap_err();
        assert!(mixed.message.contains("\"auto\""), "{}", mixed.message);
    }

    #[test]
    fn an_auto_render_starts_with_probes_then_the_first_guess() {
        type Case = (i64, i64, &'static [(i64, i64)]);
        let table: &[Case] = &[
            (1, 12, &[(1, 1), (2, 2), (3, 6), (7, 10), (11, 12)]),
            (1, 1, &[(1, 1)]),
            (1, 2, &[(1, 1), (2, 2)]),
            (1, 3, &[(1, 1), (2, 2), (3, 3)]),
            (0, 6, &[(0, 0), (1, 1), (2, 5), (6, 6)]),
        ];
        for (start, end, want) in table {
            assert_eq!(
                pairs(probe_then_guess(r(*start, *end))),
                want.to_vec(),
                "{start}-{end}"
            );
        }
    }

    #[test]
    fn the_frame_time_is_the_median_of_the_chunks_seconds_per_frame() {
        let t = |frames, seconds| ChunkTiming { frames, seconds };
        type Case = (Vec<ChunkTiming>, Option<f64>);
        let table: Vec<Case> = vec![
            (vec![], None),
            (vec![t(1, 3.0)], Some(3.0)),
            (vec![t(1, 3.0), t(4, 8.0)], Some(2.5)),
            // One slow chunk does not swing it.
            (vec![t(4, 8.0), t(4, 8.4), t(1, 30.0)], Some(2.1)),
            // A chunk of no frames is no measurement.
            (vec![t(0, 5.0), t(2, 2.0)], Some(1.0)),
        ];
        for (chunks, want) in table {
            assert_eq!(measured_frame_seconds(&chunks), want, "{chunks:?}");
        }
    }

    #[test]
    fn the_desired_size_is_the_target_over_the_frame_time_rounded_and_bounded() {
        // (target, frame seconds, desired)
        let table: &[(i64, f64, i64)] = &[
            (60, 12.0, 5),
            (60, 11.0, 5),
            (60, 13.5, 4),
            (60, 240.0, 1),
            (60, 0.01, 1000),
            (60, 0.0, 1000),
            (10, 2.0, 5),
            (10, 4.0, 3),
        ];
        for (target, seconds, want) in table {
            assert_eq!(
                desired_chunk_size(*target, *seconds).get(),
                *want,
                "{target} s at {seconds} s a frame"
            );
        }
    }

    #[test]
    fn pending_chunks_are_re_split_past_the_hysteresis_or_after_the_first_guess() {
        // (in force, desired, measured before, re-split)
        let table: &[(i64, i64, bool, bool)] = &[
            (4, 4, false, false),
            (4, 5, false, true),
            (4, 3, false, true),
            (4, 6, true, false),
            (4, 7, true, true),
            (6, 4, true, false),
            (7, 4, true, true),
            (1, 2, true, true),
            (10, 10, true, false),
        ];
        for (in_force, desired, before, want) in table {
            assert_eq!(
                needs_resplit(*in_force, ChunkSize(*desired), *before),
                *want,
                "{in_force} -> {desired}, measured before: {before}"
            );
        }
    }

    #[test]
    fn re_split_ranges_cut_consecutive_runs_and_never_cross_a_gap() {
        type Case = (&'static [(i64, i64)], i64, &'static [(i64, i64)]);
        let table: &[Case] = &[
            // Probes and first-guess chunks merge into one run.
            (
                &[(2, 2), (3, 6), (7, 10), (11, 12)],
                5,
                &[(2, 6), (7, 11), (12, 12)],
            ),
            // Frame 7-10 is held by a running task: two runs.
            (
                &[(3, 6), (11, 14), (15, 16)],
                3,
                &[(3, 5), (6, 6), (11, 13), (14, 16)],
            ),
            // Given in any order.
            (&[(11, 14), (3, 6)], 8, &[(3, 6), (11, 14)]),
            (&[(1, 4)], 1, &[(1, 1), (2, 2), (3, 3), (4, 4)]),
            (&[], 4, &[]),
        ];
        for (pending, size, want) in table {
            let pending: Vec<_> = pending.iter().map(|(s, e)| r(*s, *e)).collect();
            let got = resplit_ranges(&pending, ChunkSize(*size));
            assert_eq!(pairs(got.clone()), want.to_vec(), "{pending:?} by {size}");
            let before: i64 = pending.iter().map(|r| r.len()).sum();
            let after: i64 = got.iter().map(|r| r.len()).sum();
            assert_eq!(before, after, "no frame lost nor doubled");
        }
    }

    #[test]
    fn only_never_handed_out_bulk_tasks_are_re_split() {
        let task = |rank, handed_out, retries| PendingChunk {
            frames: r(1, 4),
            rank,
            handed_out,
            retries,
        };
        // (task, bulk rank, re-splittable)
        let table = [
            (task(0, false, 0), 0, true),
            (task(0, true, 0), 0, false),
            (task(0, false, 1), 0, false),
            (task(3, false, 0), 12, false),
            (task(12, false, 0), 12, true),
        ];
        for (t, bulk, want) in table {
            assert_eq!(is_resplittable(&t, bulk), want, "{t:?} in rank {bulk}");
        }
    }

    #[test]
    fn a_preview_first_render_keeps_its_previews_out_of_the_bulk_rank() {
        let range = r(1, 100);
        let order = renderfarm_wire::FrameOrder::PreviewFirst;
        let bulk = bulk_rank(range, order);
        let planned: Vec<_> = super::super::plan_tasks(range, ChunkSize(4), order).collect();
        let previews = planned.iter().filter(|t| t.rank != bulk).count();
        assert_eq!(previews, super::super::preview_frames(range).len());
        assert!(planned
            .iter()
            .filter(|t| t.rank != bulk)
            .all(|t| t.frames.len() == 1));
        assert_eq!(bulk_rank(range, renderfarm_wire::FrameOrder::Sequential), 0);
    }

    #[test]
    fn adapting_measures_then_decides() {
        let t = |frames, seconds| ChunkTiming { frames, seconds };
        assert_eq!(adapt(60, 4, false, &[]), None);
        let first = adapt(10, 4, false, &[t(1, 2.0)]).unwrap();
        assert_eq!(first.frame_seconds, 2.0);
        assert_eq!(first.resplit_to, Some(ChunkSize(5)));
        let settled = adapt(10, 5, true, &[t(1, 2.0), t(5, 9.0)]).unwrap();
        assert_eq!(settled.resplit_to, None, "5 -> 5 or 6 stays");
    }
}
