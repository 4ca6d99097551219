//! How much of its log a task keeps. Blender can print a line per sample and
//! a retried task logs again: without a bound, a farm's store grows with
//! every chatty render. A task keeps its first chunk (Blender's version, the
//! file and scene it loaded, early errors) and its newest ones; the chunks in
//! between go first.

/// A task's log may grow to this many bytes before old chunks are dropped.
pub const TASK_LOG_LIMIT: i64 = 4 * 1024 * 1024;

/// Trimming goes down to this, so a task at the limit is not trimmed again
/// by each of its next reports.
pub const TASK_LOG_TRIMMED: i64 = 3 * 1024 * 1024;

/// After a chunk brought a task's log to `total` bytes: how many of the oldest
/// droppable chunks to drop, and their bytes. `droppable` holds the sizes of
/// the chunks between the first and the newest, oldest first; those two are
/// always kept.
pub fn log_chunks_to_drop(total: i64, droppable: &[i64]) -> (usize, i64) {
    if total <= TASK_LOG_LIMIT {
        return (0, 0);
    }
    let mut dropped = 0;
    let mut count = 0;
    for bytes in droppable {
        if total - dropped <= TASK_LOG_TRIMMED {
            break;
        }
        dropped += bytes;
        count += 1;
    }
    (count, dropped)
}

/// The line that stands in a task's log where chunks were dropped.
fn dropped_log_marker(bytes: i64) -> String {
    format!(
        "\n[renderfarm: {bytes} bytes of this log were dropped here; a task keeps its first output and its newest, {} MiB in all]\n",
        TASK_LOG_LIMIT / (1024 * 1024)
    )
}

/// A task's log from its chunks, oldest first, with the marker after the
/// first chunk when `dropped` bytes went from there.
pub fn join_log(chunks: impl IntoIterator<Item = String>, dropped: i64) -> String {
    let mut log = String::new();
    for (i, chunk) in chunks.into_iter().enumerate() {
        if i == 1 && dropped > 0 {
            log.push_str(&dropped_log_marker(dropped));
        }
        log.push_str(&chunk);
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: i64 = 1024 * 1024;

    #[test]
    fn oldest_middle_chunks_go_until_the_log_is_back_under_the_trimmed_size() {
        let cases: &[(i64, &[i64], (usize, i64))] = &[
            // (total, droppable sizes, dropped)
            (TASK_LOG_LIMIT, &[MIB, MIB], (0, 0)),
            (TASK_LOG_LIMIT + 1, &[MIB, MIB, MIB], (2, 2 * MIB)),
            (
                TASK_LOG_LIMIT + 1,
                &[MIB / 2, MIB / 2, MIB / 2],
                (3, 3 * MIB / 2),
            ),
            (TASK_LOG_LIMIT + MIB, &[2 * MIB, MIB], (1, 2 * MIB)),
            // Nothing between the first and the newest: nothing to drop.
            (TASK_LOG_LIMIT + 1, &[], (0, 0)),
            // Not enough to drop: all of it goes, the first and newest stay.
            (5 * MIB, &[MIB / 4], (1, MIB / 4)),
        ];
        for (total, droppable, expected) in cases {
            assert_eq!(
                log_chunks_to_drop(*total, droppable),
                *expected,
                "total {total}, droppable {droppable:?}"
            );
        }
    }

    #[test]
    fn the_marker_stands_after_the_first_chunk_and_says_how_much_was_dropped() {
        let chunks = || ["start\n", "late\n"].map(String::from);
        assert_eq!(join_log(chunks(), 0), "start\nlate\n");
        let log = join_log(chunks(), 1234);
        assert!(
            log.starts_with("start\n\n[renderfarm: 1234 bytes of this log were dropped here"),
            "{log}"
        );
        assert!(log.ends_with("]\nlate\n"), "{log}");
    }
}
