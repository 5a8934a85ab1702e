//! Replication lag: how far each task's acknowledged position is behind its source partition's end, in records
//! and in seconds, aggregated into the lag gauges.
//!
//! Invariant: lag is computed from acknowledged positions only, so a record counts as lagging until the target
//! confirmed it.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::ops::metrics::{Metrics, TaskLabels};
use crate::replication::progress::{LagInputs, TaskId};

/// One task's lag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskLag {
    /// Flow name.
    pub flow: String,
    /// Source topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next source offset to replicate.
    pub next_source_offset: i64,
    /// Source partition end (last stable offset), when known.
    pub source_end_offset: Option<i64>,
    /// Records not yet on the target, when the end is known.
    pub lag_records: Option<i64>,
    /// Age of the oldest record not yet on the target; 0 when caught up.
    pub lag_seconds: f64,
    /// Whether the task is paused after a failure.
    pub paused: bool,
    /// Why, when paused: the failure it waits to retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
}

/// How long a task must have had nothing to do before the offsets between its position and the partition end are
/// taken to be transaction markers or aborted records rather than data: several fetch cycles, each of which would
/// have delivered any record there.
pub const IDLE_MEANS_CAUGHT_UP_MS: i64 = 2_000;

/// Lag of one task from its progress and its partition's end offset.
pub fn task_lag(id: &TaskId, inputs: &LagInputs, source_end_offset: Option<i64>, now_ms: i64) -> TaskLag {
    // A transactional partition ends with a commit marker, never delivered as a record: without this, a caught-up
    // task on such a partition would report one record of lag for ever.
    let caught_up =
        !inputs.paused && inputs.idle_since_ms.is_some_and(|since| now_ms - since >= IDLE_MEANS_CAUGHT_UP_MS);
    let lag_records = source_end_offset.map(|end| if caught_up { 0 } else { (end - inputs.next_source_offset).max(0) });
    // Seconds are only claimed when records are known to be missing.
    let lag_seconds = match (lag_records, inputs.reference_timestamp_ms) {
        (Some(lag), Some(reference)) if lag > 0 => (now_ms - reference).max(0) as f64 / 1000.0,
        _ => 0.0,
    };
    TaskLag {
        flow: id.flow.to_string(),
        topic: id.topic.to_string(),
        partition: id.partition,
        next_source_offset: inputs.next_source_offset,
        source_end_offset,
        lag_records,
        lag_seconds,
        paused: inputs.paused,
        pause_reason: None,
    }
}

/// Sets the lag gauges from task lags, summing records and taking the worst seconds per series, and removes
/// series of tasks that are gone.
#[derive(Debug, Default)]
pub struct LagGauges {
    exported: HashSet<TaskLabels>,
}

impl LagGauges {
    /// Publishes `lags` into `metrics`.
    pub fn publish(&mut self, metrics: &Metrics, lags: &[TaskLag]) {
        let mut series: BTreeMap<(String, String, String), (i64, f64)> = BTreeMap::new();
        for lag in lags {
            let labels = metrics.task_labels(&lag.flow, &lag.topic, lag.partition);
            let entry = series.entry((labels.flow, labels.topic, labels.partition)).or_default();
            entry.0 += lag.lag_records.unwrap_or(0);
            entry.1 = entry.1.max(lag.lag_seconds);
        }
        let mut exported = HashSet::new();
        for ((flow, topic, partition), (records, seconds)) in series {
            let labels = TaskLabels { flow, topic, partition };
            let gauges = metrics.lag(&labels);
            gauges.records.set(records);
            gauges.seconds.set(seconds);
            exported.insert(labels);
        }
        for gone in self.exported.difference(&exported) {
            metrics.remove_lag(gone);
        }
        self.exported = exported;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(next: i64, reference: Option<i64>) -> LagInputs {
        LagInputs { next_source_offset: next, reference_timestamp_ms: reference, paused: false, idle_since_ms: None }
    }

    #[test]
    fn an_idle_task_short_of_the_end_only_has_markers_left() {
        let idle = LagInputs { idle_since_ms: Some(50_000), ..inputs(99, Some(40_000)) };
        assert_eq!(task_lag(&TaskId::new("f", "t", 0), &idle, Some(100), 60_000).lag_records, Some(0));
        let just_idle = LagInputs { idle_since_ms: Some(59_500), ..inputs(99, Some(40_000)) };
        assert_eq!(task_lag(&TaskId::new("f", "t", 0), &just_idle, Some(100), 60_000).lag_records, Some(1));
        let paused = LagInputs { paused: true, ..idle };
        assert_eq!(task_lag(&TaskId::new("f", "t", 0), &paused, Some(100), 60_000).lag_records, Some(1));
    }

    #[test]
    fn caught_up_tasks_have_no_lag() {
        let lag = task_lag(&TaskId::new("f", "t", 0), &inputs(100, Some(1_000)), Some(100), 60_000);
        assert_eq!(lag.lag_records, Some(0));
        assert_eq!(lag.lag_seconds, 0.0);
    }

    #[test]
    fn lagging_tasks_report_records_and_the_age_of_the_oldest_pending_record() {
        let lag = task_lag(&TaskId::new("f", "t", 0), &inputs(90, Some(50_000)), Some(100), 60_000);
        assert_eq!(lag.lag_records, Some(10));
        assert_eq!(lag.lag_seconds, 10.0);
    }

    #[test]
    fn gauges_sum_partitions_per_topic_and_drop_gone_topics() {
        let metrics = Metrics::new(false);
        let mut gauges = LagGauges::default();
        let lags = vec![
            task_lag(&TaskId::new("f", "a", 0), &inputs(90, Some(50_000)), Some(100), 60_000),
            task_lag(&TaskId::new("f", "a", 1), &inputs(95, Some(55_000)), Some(100), 60_000),
            task_lag(&TaskId::new("f", "b", 0), &inputs(0, None), Some(3), 60_000),
        ];
        gauges.publish(&metrics, &lags);
        assert_eq!(metrics.lag_records.with_label_values(&["f", "a", ""]).get(), 15);
        assert_eq!(metrics.lag_seconds.with_label_values(&["f", "a", ""]).get(), 10.0);
        gauges.publish(&metrics, &lags[..2]);
        assert!(!metrics.render().contains("topic=\"b\""), "{}", metrics.render());
    }
}
