//! The offset translation rule: where a consumer group that committed source offset `S` resumes on the target.
//!
//! Invariant: translation never skips a record the group has not read and, inside the retained sync points,
//! re-delivers none: a consumer starting at the answer first reads the first replicated record whose source offset
//! is `>= S` (the answer may point at a gap, such as a commit marker, just before that record).
//! With `(s_i, t_i)` the latest sync point at or before `S` and `t_next` the next point's target offset (or the
//! target offset after the last replicated record): `T = min(t_i + (S - s_i), t_next)`.

use crate::replication::progress::Position;

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

/// Where a committed target offset lands back on the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackTranslation {
    /// Source offset to commit for the group.
    pub source_offset: i64,
    /// Records the group may see again (at most): non-zero where older sync points were thinned out, or where the
    /// group read records on the target that the checkpoint does not cover yet.
    pub may_redeliver: i64,
}

/// Translates committed target offset `committed` back to the source with a task's position: the inverse rule.
pub fn translate_back(position: &Position, committed: i64) -> Result<BackTranslation, TranslateError> {
    let (Some(end), Some(oldest)) = (position.next_target_offset, position.sync_points.first()) else {
        return Err(TranslateError::NothingReplicated);
    };
    if committed < oldest.target {
        return Err(TranslateError::BeforeHistory { offset: committed, oldest: oldest.target });
    }
    if committed >= end {
        // Past the checkpoint the mapping is not known yet: resume at the first record not known to be replicated,
        // re-delivering whatever the group read beyond it rather than guessing.
        return Ok(BackTranslation { source_offset: position.next_source_offset, may_redeliver: committed - end });
    }
    // Sync points are sorted by target offset too: replication preserves order.
    let index = position.sync_points.partition_point(|point| point.target <= committed) - 1;
    let point = position.sync_points[index];
    let next_source = position.sync_points.get(index + 1).map_or(position.next_source_offset, |next| next.source);
    if point.coarse && committed > point.target {
        return Ok(BackTranslation { source_offset: point.source, may_redeliver: next_source - point.source });
    }
    Ok(BackTranslation {
        source_offset: (point.source + (committed - point.target)).min(next_source),
        may_redeliver: 0,
    })
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

    #[test]
    fn failing_back_inverts_the_worked_example() {
        // source 0..9 -> target 0..9, source 10..14 compacted away, source 15..24 -> target 10..19, then a commit
        // marker on the target (offset 20) before source 25 -> target 21.
        let mut position = position(&[(0, 0, 10), (15, 10, 10)]);
        position.acknowledged(25, 21);
        let back = |t| translate_back(&position, t).unwrap();
        assert_eq!(back(5).source_offset, 5);
        assert_eq!(back(10).source_offset, 15, "the first record after the compacted gap");
        assert_eq!(back(19).source_offset, 24);
        assert_eq!(back(20).source_offset, 25, "inside the target gap: the record after it");
        assert_eq!(back(22), BackTranslation { source_offset: 26, may_redeliver: 0 }, "caught up");
        assert_eq!(back(25), BackTranslation { source_offset: 26, may_redeliver: 3 }, "beyond the checkpoint");
        assert_eq!(translate_back(&Position::starting_at(0), 0), Err(TranslateError::NothingReplicated));
    }

    /// A position built from random steps (source gap, target gap, whether the record is skipped), and the
    /// (source, target) offsets of every replicated record.
    fn history(steps: &[(i64, i64, bool)]) -> (Position, Vec<(i64, i64)>) {
        let mut position = Position::starting_at(0);
        let (mut source, mut target) = (0_i64, 0_i64);
        let mut replicated = Vec::new();
        for &(source_gap, target_gap, skipped) in steps {
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
        (position, replicated)
    }

    proptest! {
        /// The inverse rule on the same histories: every committed target offset maps back to the source offset of
        /// the first replicated record at or after it.
        #[test]
        fn failing_back_never_skips_and_never_redelivers(steps in prop::collection::vec((0i64..3, 0i64..3, any::<bool>()), 1..1200)) {
            let (position, replicated) = history(&steps);
            prop_assume!(!replicated.is_empty());
            let (first, end) = (replicated[0].1, position.next_target_offset.unwrap());
            for committed in first..=end {
                let expected = replicated
                    .iter()
                    .find(|(_, t)| *t >= committed)
                    .map_or(position.next_source_offset, |(s, _)| *s);
                let back = translate_back(&position, committed).unwrap();
                prop_assert!(back.source_offset <= expected, "committed {} skips to {}", committed, back.source_offset);
                let redelivered = replicated.iter().filter(|(s, _)| (back.source_offset..expected).contains(s)).count() as i64;
                prop_assert!(redelivered <= back.may_redeliver, "committed {} re-delivers {} from {}", committed, redelivered, back.source_offset);
                let dense_from = position.sync_points.iter().rposition(|point| point.coarse).map_or(i64::MIN, |i| position.sync_points[i + 1].target);
                if committed >= dense_from {
                    prop_assert_eq!(redelivered, 0, "committed {} in the exact window", committed);
                }
            }
        }
    }

    proptest! {
        /// Any mix (long enough to thin out old sync points) of source gaps (compaction, markers), skipped records and target gaps (markers, aborted sends):
        /// every committed offset maps to the first replicated record at or after it.
        #[test]
        fn never_skips_and_never_redelivers(steps in prop::collection::vec((0i64..3, 0i64..3, any::<bool>()), 1..1200)) {
            let (position, replicated) = history(&steps);
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
