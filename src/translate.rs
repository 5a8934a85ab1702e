//! The offset translation rule: where a consumer group that committed source offset `S` resumes on the target.
//!
//! Invariant: translation never skips a record the group has not read and, inside the retained sync points,
//! re-delivers none: a consumer starting at the answer first reads the first replicated record whose source offset
//! is `>= S` (the answer may point at a gap, such as a commit marker, just before that record).
//! With `(s_i, t_i)` the latest sync point at or before `S` and `t_next` the next point's target offset (or the
//! target offset after the last replicated record): `T = min(t_i + (S - s_i), t_next)`.

use crate::progress::Position;

/// Where a committed source offset lands on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Target offset to commit for the group.
    pub target_offset: i64,
    /// Source offsets before `S` not yet replicated (at most; source gaps can make the real count smaller).
    pub not_yet_replicated: i64,
}

/// Why an offset cannot be translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// Nothing of the task has been acknowledged yet.
    #[error("no record of this partition has been replicated yet")]
    NothingReplicated,
    /// `S` lies before the oldest retained sync point; only a conservative answer (the start of the target
    /// partition) is safe.
    #[error("offset {offset} is older than the oldest retained sync point ({oldest})")]
    BeforeHistory {
        /// The committed source offset.
        offset: i64,
        /// Source offset of the oldest sync point kept.
        oldest: i64,
    },
}

/// Translates committed source offset `committed` with a task's position.
pub fn translate(position: &Position, committed: i64) -> Result<Translation, TranslateError> {
    let (Some(end), Some(oldest)) = (position.next_target_offset, position.sync_points.first()) else {
        return Err(TranslateError::NothingReplicated);
    };
    if committed < oldest.source {
        return Err(TranslateError::BeforeHistory { offset: committed, oldest: oldest.source });
    }
    if committed >= position.next_source_offset {
        return Ok(Translation { target_offset: end, not_yet_replicated: committed - position.next_source_offset });
    }
    // The latest sync point at or before `committed`; the slice is sorted by source offset.
    let index = position.sync_points.partition_point(|point| point.source <= committed) - 1;
    let point = position.sync_points[index];
    let next_target = position.sync_points.get(index + 1).map_or(end, |next| next.target);
    Ok(Translation {
        target_offset: (point.target + (committed - point.source)).min(next_target),
        not_yet_replicated: 0,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn position(runs: &[(i64, i64, i64)]) -> Position {
        // (first source offset, first target offset, length) per run
        let mut position = Position::starting_at(runs[0].0);
        for &(source, target, length) in runs {
            for step in 0..length {
                position.acknowledged(source + step, target + step);
            }
        }
        position
    }

    #[test]
    fn the_design_documents_worked_example() {
        // source 0..9 -> target 0..9, source 10..14 compacted away, source 15..24 -> target 10..19
        let position = position(&[(0, 0, 10), (15, 10, 10)]);
        let translated = |s| translate(&position, s).unwrap().target_offset;
        assert_eq!(translated(12), 10, "inside the gap: the first record after it (source 15)");
        assert_eq!(translated(5), 5);
        assert_eq!(translated(15), 10);
        assert_eq!(translated(24), 19);
        assert_eq!(translated(25), 20, "caught up: the end of what was replicated");
    }

    #[test]
    fn groups_ahead_of_replication_get_the_end_and_the_missing_count() {
        let position = position(&[(0, 0, 10)]);
        assert_eq!(translate(&position, 14), Ok(Translation { target_offset: 10, not_yet_replicated: 4 }));
    }

    #[test]
    fn offsets_without_history_are_refused() {
        assert_eq!(translate(&Position::starting_at(0), 0), Err(TranslateError::NothingReplicated));
        let position = position(&[(100, 0, 10)]);
        assert_eq!(translate(&position, 50), Err(TranslateError::BeforeHistory { offset: 50, oldest: 100 }));
    }

    proptest! {
        /// Any mix of source gaps (compaction, markers), skipped records and target gaps (markers, aborted sends):
        /// every committed offset maps to the first replicated record at or after it.
        #[test]
        fn never_skips_and_never_redelivers(steps in prop::collection::vec((0i64..3, 0i64..3, any::<bool>()), 1..200)) {
            let mut position = Position::starting_at(0);
            let (mut source, mut target) = (0_i64, 0_i64);
            let mut replicated = Vec::new();
            for (source_gap, target_gap, skipped) in steps {
                source += source_gap;
                target += target_gap;
                if skipped {
                    position.skipped(source);
                } else {
                    position.acknowledged(source, target);
                    replicated.push((source, target));
                    target += 1;
                }
                source += 1;
            }
            prop_assume!(!replicated.is_empty());
            let first = replicated[0].0;
            for committed in first..=position.next_source_offset {
                let expected = replicated
                    .iter()
                    .find(|(s, _)| *s >= committed)
                    .map_or(position.next_target_offset.unwrap(), |(_, t)| *t);
                let translated = translate(&position, committed).unwrap();
                // Offsets between the answer and the expected record hold no replicated record (markers, gaps):
                // a consumer starting there reads exactly the expected record first.
                prop_assert!(translated.target_offset <= expected, "committed {} skips to {}", committed, translated.target_offset);
                let redelivered = replicated.iter().filter(|(_, t)| (translated.target_offset..expected).contains(t)).count();
                prop_assert_eq!(redelivered, 0, "committed {} re-delivers from {}", committed, translated.target_offset);
                prop_assert_eq!(translated.not_yet_replicated, 0);
            }
        }
    }
}
