//! A task's acknowledged position and sync points, shared between the task loop, the checkpointer and metrics.
//!
//! Invariant: a [`Position`] only moves forward on what the target acknowledged (or on records the task
//! deliberately did not replicate), so a checkpoint taken from it is never ahead of the target.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::topics::identity::TopicId;

/// How many sync points a task keeps at most.
pub const MAX_SYNC_POINTS: usize = 256;
/// How many of the newest sync points are always kept exactly (the dense window): groups positioned in the runs
/// they start translate exactly. When the limit is reached, every other older point is dropped (the sparse part
/// halves), and the point before each dropped one is marked coarse.
pub const DENSE_SYNC_POINTS: usize = 128;
/// Source ranges lost to the source's own deletion that a position remembers, newest last.
pub const MAX_LOST_RANGES: usize = 16;

/// One source topic-partition of one flow: the unit of assignment, checkpointing and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    /// Flow name.
    pub flow: Arc<str>,
    /// Source topic.
    pub topic: Arc<str>,
    /// Source partition (also the target partition).
    pub partition: i32,
}

impl TaskId {
    /// A task id from its parts.
    pub fn new(flow: &str, topic: &str, partition: i32) -> Self {
        Self { flow: flow.into(), topic: topic.into(), partition }
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.flow, self.topic, self.partition)
    }
}

/// Where a run of contiguous records starts: source offset `source` landed on target offset `target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPoint {
    /// Source offset of the first record of the run.
    pub source: i64,
    /// Target offset that record landed on.
    pub target: i64,
    /// Whether sync points after this one were dropped to bound storage: up to the next point the mapping is no
    /// longer known to be one run, so translation there is conservative.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub coarse: bool,
}

impl SyncPoint {
    /// An exact sync point.
    pub fn new(source: i64, target: i64) -> Self {
        Self { source, target, coarse: false }
    }
}

/// A task's durable progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Next source offset to replicate: every record before it is on the target (or deliberately skipped).
    pub next_source_offset: i64,
    /// Target offset after the last acknowledged record; `None` until the first acknowledgement.
    pub next_target_offset: Option<i64>,
    /// Recent sync points, oldest first; a new one starts wherever `target - source` changes.
    pub sync_points: Vec<SyncPoint>,
    /// Recent source ranges the source deleted before they were replicated, oldest first (at most
    /// [`MAX_LOST_RANGES`]), so a translation into one can say so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<LostRange>,
    /// Where the records went, `<target cluster alias>/<target topic>`: a position belongs to one target. `None` in
    /// checkpoints written before it was recorded (adopted by the next run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The id of the source topic the offsets belong to: a topic deleted and created again under the same name has
    /// another id, and the position says nothing about it. `None` until the task first read the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_topic_id: Option<TopicId>,
    /// The source partition's end offset as last seen: what the source held when the task last moved, so records
    /// of a topic deleted before they were copied can be counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_end: Option<i64>,
}

/// Source offsets `first..=last` that the source deleted before the task read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostRange {
    /// First offset lost.
    pub first: i64,
    /// Last offset lost.
    pub last: i64,
}

impl Position {
    /// A position that starts replicating at `next_source_offset`, with no history.
    pub fn starting_at(next_source_offset: i64) -> Self {
        Self {
            next_source_offset,
            next_target_offset: None,
            sync_points: Vec::new(),
            lost: Vec::new(),
            target: None,
            source_topic_id: None,
            source_end: None,
        }
    }

    /// Source record `source` was acknowledged by the target at offset `target`.
    pub fn acknowledged(&mut self, source: i64, target: i64) {
        let continues_run = self.sync_points.last().is_some_and(|last| last.target - last.source == target - source);
        if !continues_run {
            if self.sync_points.len() == MAX_SYNC_POINTS {
                thin(&mut self.sync_points);
            }
            self.sync_points.push(SyncPoint::new(source, target));
        }
        self.next_source_offset = self.next_source_offset.max(source + 1);
        self.next_target_offset = Some(self.next_target_offset.map_or(target + 1, |next| next.max(target + 1)));
    }

    /// Source record `source` was consumed but deliberately not replicated (it came from the target).
    pub fn skipped(&mut self, source: i64) {
        self.next_source_offset = self.next_source_offset.max(source + 1);
    }

    /// Source offsets `first..=last` were deleted by the source before they were read: passed like skipped ones, and
    /// remembered for translation.
    pub fn lost(&mut self, first: i64, last: i64) {
        if self.lost.len() == MAX_LOST_RANGES {
            self.lost.remove(0);
        }
        self.lost.push(LostRange { first, last });
        self.skipped(last);
    }

    /// The target holds records up to source offset `next_source` (exclusive) that this position never recorded:
    /// transactions committed after the last checkpoint was written. Continue after them; their target offsets
    /// are unknown, so translation after the last sync point becomes conservative (it may re-deliver, never skip).
    pub fn resume_after_unrecorded(&mut self, next_source: i64, target_end: i64) {
        if let Some(last) = self.sync_points.last_mut() {
            last.coarse = true;
        }
        self.next_source_offset = self.next_source_offset.max(next_source);
        self.next_target_offset = Some(self.next_target_offset.map_or(target_end, |next| next.max(target_end)));
    }

    /// The remembered lost range that holds source offset `offset`, if any.
    pub fn lost_range_of(&self, offset: i64) -> Option<LostRange> {
        self.lost.iter().copied().find(|range| (range.first..=range.last).contains(&offset))
    }
}

/// Halves the sparse (older) part of `points`, keeping its first point and the dense window intact.
fn thin(points: &mut Vec<SyncPoint>) {
    let sparse = points.len().saturating_sub(DENSE_SYNC_POINTS);
    let mut kept = Vec::with_capacity(points.len());
    for (index, point) in points.drain(..).enumerate() {
        if index < sparse && index % 2 == 1 {
            // Dropped: the point kept before it now spans an interval of unknown shape.
            if let Some(previous) = kept.last_mut() {
                let previous: &mut SyncPoint = previous;
                previous.coarse = true;
            }
        } else {
            kept.push(point);
        }
    }
    *points = kept;
}

/// Why a task is not replicating right now, if it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Replicating (or waiting for records).
    Running,
    /// Failed and waiting to be restarted from its checkpoint; the reason names the failing record.
    Paused(String),
}

#[derive(Debug)]
struct Shared {
    position: Position,
    /// Bumped on every change so the checkpointer can tell whether a write is still current.
    version: u64,
    checkpointed_version: u64,
    /// CreateTime (ms) of the oldest record sent but not acknowledged, to measure lag in seconds.
    oldest_unacked_timestamp_ms: Option<i64>,
    /// CreateTime (ms) of the last acknowledged record.
    last_acked_timestamp_ms: Option<i64>,
    state: TaskState,
    /// Target end offset up to which records after the checkpoint were already counted as duplicates, so a
    /// task restarted twice from the same checkpoint does not count them twice.
    duplicates_counted_until: Option<i64>,
}

/// The part of a task other components read: its position, lag inputs and state.
#[derive(Debug)]
pub struct TaskProgress {
    shared: Mutex<Shared>,
    /// Milliseconds since the epoch when the task ran out of work, 0 while it holds or awaits records. Atomic
    /// because it changes per received record, on the hot path.
    idle_since_ms: std::sync::atomic::AtomicI64,
}

/// What the lag gauges need from one task.
#[derive(Debug, Clone)]
pub struct LagInputs {
    /// Next source offset to replicate.
    pub next_source_offset: i64,
    /// Oldest unacknowledged record's timestamp, else the last acknowledged record's.
    pub reference_timestamp_ms: Option<i64>,
    /// Whether the task is paused.
    pub paused: bool,
    /// Since when the task has had nothing to do (no record held or in flight), if it is idle.
    pub idle_since_ms: Option<i64>,
}

impl TaskProgress {
    /// Progress that starts from a stored position (or a fresh one).
    pub fn new(position: Position) -> Self {
        Self {
            shared: Mutex::new(Shared {
                position,
                version: 0,
                checkpointed_version: 0,
                oldest_unacked_timestamp_ms: None,
                last_acked_timestamp_ms: None,
                state: TaskState::Running,
                duplicates_counted_until: None,
            }),
            idle_since_ms: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Progress that resumes a position another member stored, marked unsaved so this member writes its own copy
    /// (the other member's copy can then be cleared).
    pub fn resumed(position: Position) -> Self {
        let progress = Self::new(position);
        progress.lock().version = 1;
        progress
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic while holding this lock cannot leave the position half-written (all updates are plain stores),
        // so a poisoned lock is still safe to read.
        self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes the task loop's position after a batch of acknowledgements.
    pub fn publish(&self, position: &Position, oldest_unacked_ms: Option<i64>, last_acked_ms: Option<i64>) {
        let mut shared = self.lock();
        if shared.position != *position {
            shared.position.clone_from(position);
            shared.version += 1;
        }
        shared.oldest_unacked_timestamp_ms = oldest_unacked_ms;
        if last_acked_ms.is_some() {
            shared.last_acked_timestamp_ms = last_acked_ms;
        }
    }

    /// The current position.
    pub fn position(&self) -> Position {
        self.lock().position.clone()
    }

    /// The position and its version when it changed since the last successful checkpoint.
    pub fn unsaved(&self) -> Option<(Position, u64)> {
        let shared = self.lock();
        (shared.version > shared.checkpointed_version).then(|| (shared.position.clone(), shared.version))
    }

    /// Marks `version` as durably stored.
    pub fn saved(&self, version: u64) {
        let mut shared = self.lock();
        shared.checkpointed_version = shared.checkpointed_version.max(version);
    }

    /// Inputs for the lag gauges.
    pub fn lag_inputs(&self) -> LagInputs {
        let shared = self.lock();
        LagInputs {
            next_source_offset: shared.position.next_source_offset,
            reference_timestamp_ms: shared.oldest_unacked_timestamp_ms.or(shared.last_acked_timestamp_ms),
            paused: matches!(shared.state, TaskState::Paused(_)),
            idle_since_ms: Some(self.idle_since_ms.load(std::sync::atomic::Ordering::Relaxed)).filter(|at| *at > 0),
        }
    }

    /// The task received a record: it is busy until everything it holds is acknowledged.
    pub fn mark_busy(&self) {
        self.idle_since_ms.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// The task has nothing in flight and waits for records (keeps the earliest time if already idle).
    pub fn mark_idle(&self, now_ms: i64) {
        let _ = self.idle_since_ms.compare_exchange(
            0,
            now_ms,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Sets the task's state.
    pub fn set_state(&self, state: TaskState) {
        self.lock().state = state;
    }

    /// The task's state.
    pub fn state(&self) -> TaskState {
        self.lock().state.clone()
    }

    /// How many of the target's records in `[from, end)` were not yet counted as duplicates; marks them counted.
    pub fn uncounted_duplicates(&self, from: i64, end: i64) -> i64 {
        let mut shared = self.lock();
        let start = shared.duplicates_counted_until.map_or(from, |counted| counted.max(from));
        shared.duplicates_counted_until = Some(end.max(start));
        (end - start).max(0)
    }
}

/// Every task this member knows, running or paused, by id.
#[derive(Debug, Default)]
pub struct Registry {
    tasks: Mutex<HashMap<TaskId, Arc<TaskProgress>>>,
}

impl Registry {
    /// Registers a task's progress, replacing an earlier entry.
    pub fn insert(&self, id: TaskId, progress: Arc<TaskProgress>) {
        self.lock().insert(id, progress);
    }

    /// Forgets a task (it was stopped and its last checkpoint written).
    pub fn remove(&self, id: &TaskId) {
        self.lock().remove(id);
    }

    /// A snapshot of every registered task.
    pub fn snapshot(&self) -> Vec<(TaskId, Arc<TaskProgress>)> {
        self.lock().iter().map(|(id, progress)| (id.clone(), progress.clone())).collect()
    }

    /// The progress of one task.
    pub fn get(&self, id: &TaskId) -> Option<Arc<TaskProgress>> {
        self.lock().get(id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Arc<TaskProgress>>> {
        self.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_ranges_pass_the_position_and_the_newest_are_remembered() {
        let mut position = Position::starting_at(0);
        position.acknowledged(9, 9);
        position.lost(10, 19);
        assert_eq!(position.next_source_offset, 20);
        assert_eq!(position.lost_range_of(15), Some(LostRange { first: 10, last: 19 }));
        assert_eq!(position.lost_range_of(20), None);
        for start in (100..).step_by(10).take(MAX_LOST_RANGES) {
            position.lost(start, start + 4);
        }
        assert_eq!(position.lost.len(), MAX_LOST_RANGES);
        assert_eq!(position.lost_range_of(15), None, "the oldest range is forgotten first");
        let json = serde_json::to_string(&position).unwrap();
        assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), position);
        assert!(!serde_json::to_string(&Position::starting_at(3)).unwrap().contains("lost"), "omitted when empty");
    }

    #[test]
    fn one_sync_point_per_contiguous_run() {
        let mut position = Position::starting_at(0);
        for offset in 0..10 {
            position.acknowledged(offset, offset);
        }
        // Source 10..14 compacted away: the next record the consumer sees is 15.
        for offset in 15..25 {
            position.acknowledged(offset, offset - 5);
        }
        assert_eq!(position.sync_points, vec![SyncPoint::new(0, 0), SyncPoint::new(15, 10)]);
        assert_eq!(position.next_source_offset, 25);
        assert_eq!(position.next_target_offset, Some(20));
    }

    #[test]
    fn skipped_records_advance_the_source_but_not_the_run() {
        let mut position = Position::starting_at(0);
        position.acknowledged(0, 100);
        position.skipped(1);
        position.skipped(2);
        assert_eq!(position.next_source_offset, 3);
        assert_eq!(position.next_target_offset, Some(101));
        position.acknowledged(3, 101);
        assert_eq!(
            position.sync_points,
            vec![SyncPoint::new(0, 100), SyncPoint::new(3, 101)],
            "a skipped record changes target - source, so the next run needs its own sync point"
        );
    }

    #[test]
    fn sync_points_are_bounded_dense_recent_and_sparse_older() {
        let mut position = Position::starting_at(0);
        let runs = 3 * MAX_SYNC_POINTS as i64;
        for run in 0..runs {
            position.acknowledged(run * 2, run);
        }
        let points = &position.sync_points;
        assert!(points.len() <= MAX_SYNC_POINTS);
        assert_eq!(points.first(), Some(&SyncPoint { source: 0, target: 0, coarse: true }), "the oldest is kept");
        assert_eq!(points.last(), Some(&SyncPoint::new((runs - 1) * 2, runs - 1)));
        let dense = &points[points.len() - DENSE_SYNC_POINTS + 1..];
        assert!(dense.iter().all(|point| !point.coarse), "the newest points are exact");
        assert!(dense.windows(2).all(|pair| pair[1].target == pair[0].target + 1), "no gap in the dense window");
    }

    #[test]
    fn duplicates_are_counted_once_per_target_record() {
        let progress = TaskProgress::new(Position::starting_at(0));
        assert_eq!(progress.uncounted_duplicates(10, 20), 10);
        assert_eq!(progress.uncounted_duplicates(10, 20), 0, "a second restart from the same checkpoint");
        assert_eq!(progress.uncounted_duplicates(10, 25), 5);
        assert_eq!(progress.uncounted_duplicates(30, 35), 5, "a newer checkpoint");
    }

    #[test]
    fn unsaved_reports_changes_until_saved() {
        let progress = TaskProgress::new(Position::starting_at(5));
        assert!(progress.unsaved().is_none(), "a freshly loaded position needs no write");
        let mut position = progress.position();
        position.acknowledged(5, 0);
        progress.publish(&position, None, Some(1));
        let (saved, version) = progress.unsaved().expect("changed");
        assert_eq!(saved.next_source_offset, 6);
        progress.saved(version);
        assert!(progress.unsaved().is_none());
    }
}
