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
    /// Records the group may see again (at most): non-zero only where older sync points were thinned out and the
    /// translation falls back to the start of the coarse interval.
    pub may_redeliver: i64,
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
        return Ok(Translation {
            target_offset: end,
            not_yet_replicated: committed - position.next_source_offset,
            may_redeliver: 0,
        });
    }
    // The latest sync point at or before `committed`; the slice is sorted by source offset.
    let index = position.sync_points.partition_point(|point| point.source <= committed) - 1;
    let point = position.sync_points[index];
    let next_target = position.sync_points.get(index + 1).map_or(end, |next| next.target);
    if point.coarse && committed > point.source {
        // Runs inside this interval were forgotten: re-deliver from its start rather than risk a skip.
        return Ok(Translation {
            target_offset: point.target,
            not_yet_replicated: 0,
            may_redeliver: next_target - point.target,
        });
    }
    Ok(Translation {
        target_offset: (point.target + (committed - point.source)).min(next_target),
        not_yet_replicated: 0,
        may_redeliver: 0,
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
        assert_eq!(
            translate(&position, 14),
            Ok(Translation { target_offset: 10, not_yet_replicated: 4, may_redeliver: 0 })
        );
    }

    #[test]
    fn offsets_without_history_are_refused() {
        assert_eq!(translate(&Position::starting_at(0), 0), Err(TranslateError::NothingReplicated));
        let position = position(&[(100, 0, 10)]);
        assert_eq!(translate(&position, 50), Err(TranslateError::BeforeHistory { offset: 50, oldest: 100 }));
    }

    proptest! {
        /// Any mix (long enough to thin out old sync points) of source gaps (compaction, markers), skipped records and target gaps (markers, aborted sends):
        /// every committed offset maps to the first replicated record at or after it.
        #[test]
        fn never_skips_and_never_redelivers(steps in prop::collection::vec((0i64..3, 0i64..3, any::<bool>()), 1..1200)) {
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
                let redelivered = replicated.iter().filter(|(_, t)| (translated.target_offset..expected).contains(t)).count() as i64;
                // Exact inside the retained runs; in thinned-out intervals, bounded by what translation reports.
                prop_assert!(redelivered <= translated.may_redeliver, "committed {} re-delivers {} from {}", committed, redelivered, translated.target_offset);
                let dense_from = position.sync_points.iter().rposition(|point| point.coarse).map_or(i64::MIN, |i| position.sync_points[i + 1].source);
                if committed >= dense_from {
                    prop_assert_eq!(redelivered, 0, "committed {} in the exact window", committed);
                }
                prop_assert_eq!(translated.not_yet_replicated, 0);
            }
        }
    }
}
