//! Frame ranges and how a render's frames are cut into tasks.

use super::ValidationError;

/// The most frames one render may ask for; bigger jobs are split by the user.
pub const MAX_FRAMES_PER_RENDER: i64 = 1_000_000;

/// An inclusive range of frame numbers, `start..=end`, never empty and never
/// negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameRange {
    pub(super) start: i64,
    pub(super) end: i64,
}

impl FrameRange {
    /// Checks the range a user asked for.
    pub fn new(start: i64, end: i64) -> Result<Self, ValidationError> {
        if start < 0 {
            return Err(ValidationError::new(
                "frame_start",
                format!("is {start}; frame numbers start at 0"),
            ));
        }
        if end < start {
            return Err(ValidationError::new(
                "frame_end",
                format!("is {end}, before frame_start {start}; give frame_end >= frame_start"),
            ));
        }
        // `end - start` cannot overflow (both are >= 0); adding 1 can, for
        // 0..=i64::MAX, so compare before adding.
        if end - start >= MAX_FRAMES_PER_RENDER {
            let len = i128::from(end) - i128::from(start) + 1;
            return Err(ValidationError::new(
                "frame_end",
                format!(
                    "the range {start}-{end} has {len} frames; one render may have at most {MAX_FRAMES_PER_RENDER}, so split it into several renders"
                ),
            ));
        }
        Ok(Self { start, end })
    }

    pub fn start(self) -> i64 {
        self.start
    }

    pub fn end(self) -> i64 {
        self.end
    }

    /// How many frames the range holds (at least 1).
    pub fn len(self) -> i64 {
        self.end - self.start + 1
    }

    /// Never true: kept for the `len` convention.
    pub fn is_empty(self) -> bool {
        false
    }
}

/// How many frames one task renders; at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSize(pub(super) i64);

impl ChunkSize {
    pub fn new(size: i64) -> Result<Self, ValidationError> {
        if !(1..=MAX_FRAMES_PER_RENDER).contains(&size) {
            return Err(ValidationError::new(
                "chunk_size",
                format!(
                    "is {size}; give a number of frames per task from 1 to {MAX_FRAMES_PER_RENDER}"
                ),
            ));
        }
        Ok(Self(size))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// How many chunks [`chunk`] cuts `range` into.
pub fn chunk_count(range: FrameRange, size: ChunkSize) -> i64 {
    (range.len() + size.get() - 1) / size.get()
}

/// Cuts `range` into consecutive chunks of `size` frames; the last one holds
/// what is left. Frames 1–10 in chunks of 3 give 1–3, 4–6, 7–9, 10–10.
pub fn chunk(range: FrameRange, size: ChunkSize) -> impl Iterator<Item = FrameRange> {
    let step = size.get();
    (range.start..=range.end)
        .step_by(step as usize)
        .map(move |start| FrameRange {
            start,
            // Saturating: a range may end at i64::MAX.
            end: start.saturating_add(step - 1).min(range.end),
        })
}

/// One task of a render as planned: its frames, and its rank in the
/// render's claim order (lower first; equal ranks by first frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedTask {
    pub frames: FrameRange,
    pub rank: i64,
}

/// The frames a preview-first render renders first, in the order they are
/// claimed: the first, the last, the middle, then every Nth frame (N a
/// ninth of the frames, rounded up), each once.
pub fn preview_frames(range: FrameRange) -> Vec<i64> {
    let every = (range.len() + 8) / 9;
    let mut frames = vec![range.start, range.end, range.start + (range.len() - 1) / 2];
    frames.extend(
        (1..)
            .map(|k| range.start + k * every)
            .take_while(|f| *f < range.end),
    );
    let mut seen = std::collections::BTreeSet::new();
    frames.retain(|f| seen.insert(*f));
    frames
}

/// A render's tasks in the order given: chunks of `size` lowest first
/// (all of rank 0), or, preview-first, one task per [`preview_frames`]
/// frame (ranks 1, 2, … in their order) and then chunks of `size` of the
/// frames left between them (one rank after the previews).
pub fn plan_tasks(
    range: FrameRange,
    size: ChunkSize,
    order: renderfarm_wire::FrameOrder,
) -> Box<dyn Iterator<Item = PlannedTask> + Send> {
    match order {
        renderfarm_wire::FrameOrder::Sequential => {
            Box::new(chunk(range, size).map(|frames| PlannedTask { frames, rank: 0 }))
        }
        renderfarm_wire::FrameOrder::PreviewFirst => {
            let previews = preview_frames(range);
            let rest_rank = previews.len() as i64 + 1;
            let mut tasks: Vec<PlannedTask> = previews
                .iter()
                .zip(1..)
                .map(|(f, rank)| PlannedTask {
                    frames: FrameRange { start: *f, end: *f },
                    rank,
                })
                .collect();
            let mut sorted = previews;
            sorted.sort_unstable();
            let mut gap_start = range.start;
            for preview in sorted.into_iter().chain(std::iter::once(range.end + 1)) {
                if preview > gap_start {
                    let gap = FrameRange {
                        start: gap_start,
                        end: preview - 1,
                    };
                    tasks.extend(chunk(gap, size).map(|frames| PlannedTask {
                        frames,
                        rank: rest_rank,
                    }));
                }
                gap_start = preview + 1;
            }
            Box::new(tasks.into_iter())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(start: i64, end: i64, size: i64) -> Vec<(i64, i64)> {
        chunk(
            FrameRange::new(start, end).unwrap(),
            ChunkSize::new(size).unwrap(),
        )
        .map(|r| (r.start(), r.end()))
        .collect()
    }

    #[test]
    fn chunking_cuts_consecutive_chunks_and_keeps_the_remainder_last() {
        // (start, end, chunk size, expected chunks)
        type Case = (i64, i64, i64, &'static [(i64, i64)]);
        let table: &[Case] = &[
            (1, 10, 3, &[(1, 3), (4, 6), (7, 9), (10, 10)]),
            (1, 9, 3, &[(1, 3), (4, 6), (7, 9)]),
            (0, 0, 10, &[(0, 0)]),
            (5, 7, 100, &[(5, 7)]),
            (1, 4, 1, &[(1, 1), (2, 2), (3, 3), (4, 4)]),
        ];
        for (start, end, size, want) in table {
            assert_eq!(
                pairs(*start, *end, *size),
                want.to_vec(),
                "{start}-{end} by {size}"
            );
        }
    }

    #[test]
    fn chunking_the_largest_render_covers_every_frame_once() {
        let range = FrameRange::new(0, MAX_FRAMES_PER_RENDER - 1).unwrap();
        let chunks: Vec<_> = chunk(range, ChunkSize::new(7).unwrap()).collect();
        assert_eq!(
            chunks.len() as i64,
            chunk_count(range, ChunkSize::new(7).unwrap())
        );
        assert_eq!(chunks.len() as i64, (MAX_FRAMES_PER_RENDER + 6) / 7);
        let total: i64 = chunks.iter().map(|c| c.len()).sum();
        assert_eq!(total, MAX_FRAMES_PER_RENDER);
        assert!(chunks.windows(2).all(|w| w[0].end() + 1 == w[1].start()));
    }

    #[test]
    fn frame_ranges_reject_what_blender_cannot_render() {
        assert_eq!(FrameRange::new(-1, 5).unwrap_err().field, "frame_start");
        assert_eq!(FrameRange::new(10, 9).unwrap_err().field, "frame_end");
        assert_eq!(
            FrameRange::new(1, MAX_FRAMES_PER_RENDER + 1)
                .unwrap_err()
                .field,
            "frame_end"
        );
        assert_eq!(
            FrameRange::new(1, MAX_FRAMES_PER_RENDER).unwrap().len(),
            MAX_FRAMES_PER_RENDER
        );
        // Found by fuzzing the API: the frame count overflowed.
        assert_eq!(FrameRange::new(0, i64::MAX).unwrap_err().field, "frame_end");
    }

    #[test]
    fn ranges_at_the_end_of_the_numbers_chunk_without_overflow() {
        assert_eq!(
            pairs(i64::MAX - 2, i64::MAX, 10),
            vec![(i64::MAX - 2, i64::MAX)]
        );
    }

    #[test]
    fn chunk_size_must_be_positive() {
        assert!(ChunkSize::new(0).is_err());
        assert!(ChunkSize::new(-3).is_err());
        assert_eq!(ChunkSize::new(1).unwrap().get(), 1);
    }

    #[test]
    fn preview_first_renders_first_last_middle_then_every_nth_before_the_rest() {
        use renderfarm_wire::FrameOrder;
        let range = FrameRange::new(1, 100).unwrap();
        assert_eq!(
            preview_frames(range),
            vec![1, 100, 50, 13, 25, 37, 49, 61, 73, 85, 97]
        );
        // (start, end, chunk, previews in claim order, the chunks after them)
        type Case = (i64, i64, i64, &'static [i64], &'static [(i64, i64)]);
        let table: &[Case] = &[
            (1, 1, 10, &[1], &[]),
            (1, 2, 10, &[1, 2], &[]),
            (1, 5, 2, &[1, 5, 3, 2, 4], &[]),
            (
                1,
                20,
                4,
                &[1, 20, 10, 4, 7, 13, 16, 19],
                &[(2, 3), (5, 6), (8, 9), (11, 12), (14, 15), (17, 18)],
            ),
            (
                0,
                30,
                10,
                &[0, 30, 15, 4, 8, 12, 16, 20, 24, 28],
                &[
                    (1, 3),
                    (5, 7),
                    (9, 11),
                    (13, 14),
                    (17, 19),
                    (21, 23),
                    (25, 27),
                    (29, 29),
                ],
            ),
        ];
        for (start, end, size, previews, rest) in table {
            let range = FrameRange::new(*start, *end).unwrap();
            let tasks: Vec<PlannedTask> = plan_tasks(
                range,
                ChunkSize::new(*size).unwrap(),
                FrameOrder::PreviewFirst,
            )
            .collect();
            let (first, after): (Vec<&PlannedTask>, Vec<&PlannedTask>) =
                tasks.iter().partition(|t| t.rank <= previews.len() as i64);
            let mut by_rank = first.clone();
            by_rank.sort_by_key(|t| t.rank);
            assert_eq!(
                by_rank.iter().map(|t| t.frames.start()).collect::<Vec<_>>(),
                previews.to_vec(),
                "{start}-{end}"
            );
            assert!(first.iter().all(|t| t.frames.len() == 1));
            assert!(after.iter().all(|t| t.rank == previews.len() as i64 + 1));
            assert_eq!(
                after
                    .iter()
                    .map(|t| (t.frames.start(), t.frames.end()))
                    .collect::<Vec<_>>(),
                rest.to_vec(),
                "{start}-{end}"
            );
            // Every frame once.
            let mut frames: Vec<i64> = tasks
                .iter()
                .flat_map(|t| t.frames.start()..=t.frames.end())
                .collect();
            frames.sort_unstable();
            assert_eq!(frames, (*start..=*end).collect::<Vec<_>>());
        }
        let sequential: Vec<PlannedTask> = plan_tasks(
            FrameRange::new(1, 10).unwrap(),
            ChunkSize::new(3).unwrap(),
            FrameOrder::Sequential,
        )
        .collect();
        assert!(sequential.iter().all(|t| t.rank == 0));
        assert_eq!(sequential.len(), 4);
    }
}
