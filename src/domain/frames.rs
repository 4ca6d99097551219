//! Frame ranges and how a render's frames are cut into tasks.

use super::ValidationError;

/// The most frames one render may ask for; bigger jobs are split by the user.
pub const MAX_FRAMES_PER_RENDER: i64 = 1_000_000;

/// An inclusive range of frame numbers, `start..=end`, never empty and never
/// negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameRange {
    start: i64,
    end: i64,
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
pub struct ChunkSize(i64);

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
}
