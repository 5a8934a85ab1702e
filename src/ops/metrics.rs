//! Every metric ferry exports, declared in one place and registered once.
//!
//! Invariant: label values are bounded (flow, topic, cluster, region pair, optional partition); offsets and error
//! texts never become labels. The `partition` label is empty unless `metrics.per_partition` is on, and an empty
//! label is the same as no label to Prometheus.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// ferry's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    per_partition: bool,
    /// Every registered family name, sorted: a metric vector without children is absent from `gather()`.
    names: Vec<String>,
    /// Records acknowledged by the target.
    pub records_replicated: IntCounterVec,
    /// Bytes (key + value + headers) acknowledged by the target.
    pub bytes_replicated: IntCounterVec,
    /// Records on the target twice because they were acknowledged after the last checkpoint before a restart.
    pub duplicates: IntCounterVec,
    /// Records consumed but deliberately not replicated, by reason.
    pub records_skipped: IntCounterVec,
    /// Source records ferry never copied because the source deleted them first, by reason.
    pub records_lost: IntCounterVec,
    /// Source records not yet acknowledged by the target.
    pub lag_records: IntGaugeVec,
    /// Age of the oldest source record not yet acknowledged by the target.
    pub lag_seconds: prometheus::GaugeVec,
    /// Source timestamp to target acknowledgement.
    pub end_to_end_latency: HistogramVec,
    /// Time tasks spent waiting for the bandwidth throttle.
    pub throttle_wait_seconds: prometheus::CounterVec,
    /// Tasks on this member by state (running, paused).
    pub tasks: IntGaugeVec,
    /// Task failures (each pauses the task until it restarts from its checkpoint).
    pub task_failures: IntCounterVec,
    /// Seconds since the flow's last successful checkpoint write.
    pub checkpoint_age_seconds: prometheus::GaugeVec,
    /// Successful checkpoint writes (batches).
    pub checkpoint_writes: IntCounterVec,
    /// Failed checkpoint writes.
    pub checkpoint_failures: IntCounterVec,
    /// When group offset sync last completed a round, per flow (Unix seconds; the sync's start until then).
    pub group_sync_last_success: IntGaugeVec,
    /// Group offset sync rounds that failed, per flow.
    pub group_sync_failures: IntCounterVec,
    /// Consumer groups whose offsets a sync round translated, per flow.
    pub groups_synced: IntCounterVec,
    /// 1 when the last metadata request to a cluster succeeded.
    pub cluster_up: IntGaugeVec,
    /// Target topics created or changed to match their source.
    pub topic_syncs: IntCounterVec,
    /// Build information (always 1).
    pub build_info: IntGaugeVec,
    /// 1 when this member replicates its assigned tasks (`/readyz`).
    pub ready: IntGauge,
    /// Consumer/producer errors reported by librdkafka, by cluster.
    pub client_errors: IntCounterVec,
    /// Tasks this member owns (holds the etcd ownership key of, or runs alone with the file store).
    pub owned_tasks: IntGauge,
    /// 1 while this member is the elected controller.
    pub leader: IntGauge,
    /// Live members, as the controller sees them (0 on other members).
    pub members: IntGauge,
    /// Tasks the controller assigned to each member (published by the leader only).
    pub assigned_tasks: IntGaugeVec,
    /// Assignments the controller wrote that changed at least one task's member.
    pub rebalances: IntCounter,
    /// Tasks moved from one member to another by those assignments.
    pub moved_tasks: IntCounter,
    /// This member's share of a fleet-wide throttle, bytes per second.
    pub throttle_rate_bytes: IntGaugeVec,
    /// etcd requests, by operation.
    pub etcd_requests: IntCounterVec,
    /// etcd requests that failed, by operation.
    pub etcd_errors: IntCounterVec,
    /// etcd request latency, by operation.
    pub etcd_latency: HistogramVec,
    /// Config file reloads, by result (applied, rejected).
    pub config_reloads: IntCounterVec,
    /// Exactly-once transactions on the target, by flow and result (committed, aborted).
    pub transactions: IntCounterVec,
    /// From a transaction's first record to its commit (or abort) completing, by flow.
    pub transaction_duration: HistogramVec,
    /// Transactional producers fenced by a newer instance with the same transactional id, by flow.
    pub producers_fenced: IntCounterVec,
    /// Target producers replaced after a fatal error, by cluster.
    pub producer_rebuilds: IntCounterVec,
}

/// Buckets for end-to-end latency: from a few milliseconds on a quiet link to minutes while draining a backlog.
const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Buckets for etcd requests: a local quorum answers in milliseconds, a struggling one in seconds.
const ETCD_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Buckets for a transaction's life: the commit interval plus one commit round trip, longer while a target
/// struggles.
const TRANSACTION_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Label values of one task's series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskLabels {
    /// Flow name.
    pub flow: String,
    /// Source topic.
    pub topic: String,
    /// Partition, or empty when per-partition labels are off.
    pub partition: String,
}

impl TaskLabels {
    /// The values in registration order.
    pub fn values(&self) -> [&str; 3] {
        [&self.flow, &self.topic, &self.partition]
    }
}

/// Counters one task increments, resolved once so the hot path does no label lookups.
#[derive(Debug, Clone)]
pub struct TaskMetrics {
    /// Records acknowledged.
    pub records: IntCounter,
    /// Bytes acknowledged.
    pub bytes: IntCounter,
    /// Duplicates found at start.
    pub duplicates: IntCounter,
    /// Records skipped as loops.
    pub skipped_loop: IntCounter,
    /// Records the source deleted (retention) before the task read them.
    pub lost_source_retention: IntCounter,
    /// Records of a source topic deleted (and created again) before the task copied them.
    pub lost_source_topic_recreated: IntCounter,
    /// End-to-end latency of this task's flow.
    pub latency: Histogram,
}

/// A cluster's series: whether it answers, and its clients' errors.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    /// `ferry_cluster_up`.
    pub up: IntGauge,
    /// `ferry_client_errors_total`.
    pub client_errors: IntCounter,
}

/// A region pair's throttle series.
#[derive(Debug, Clone)]
pub struct ThrottleMetrics {
    /// `ferry_throttle_wait_seconds_total`.
    pub wait_seconds: prometheus::Counter,
    /// `ferry_throttle_rate_bytes`: this member's share.
    pub rate_bytes: IntGauge,
}

/// One flow's checkpoint series.
#[derive(Debug, Clone)]
pub struct CheckpointMetrics {
    /// `ferry_checkpoint_writes_total`.
    pub writes: IntCounter,
    /// `ferry_checkpoint_failures_total`.
    pub failures: IntCounter,
    /// `ferry_checkpoint_age_seconds`.
    pub age_seconds: prometheus::Gauge,
}

/// What `ferry_etcd_*` records for one kind of request.
#[derive(Debug, Clone)]
pub struct EtcdOpMetrics {
    /// `ferry_etcd_requests_total`.
    pub requests: IntCounter,
    /// `ferry_etcd_errors_total`.
    pub errors: IntCounter,
    /// `ferry_etcd_request_duration_seconds`.
    pub latency: Histogram,
}

/// One flow's task gauges: `ferry_tasks` by state.
#[derive(Debug, Clone)]
pub struct FlowTaskMetrics {
    /// Tasks running.
    pub running: IntGauge,
    /// Tasks paused (failed, waiting to restart).
    pub paused: IntGauge,
}

/// One task's (or, without per-partition labels, one topic's) lag gauges.
#[derive(Debug, Clone)]
pub struct LagMetrics {
    /// `ferry_replication_lag_records`.
    pub records: IntGauge,
    /// `ferry_replication_lag_seconds`.
    pub seconds: prometheus::Gauge,
}

/// One exactly-once flow's transaction series.
#[derive(Debug, Clone)]
pub struct TransactionMetrics {
    /// `ferry_transactions_total{result="committed"}`.
    pub committed: IntCounter,
    /// `ferry_transactions_total{result="aborted"}`.
    pub aborted: IntCounter,
    /// `ferry_transaction_duration_seconds`.
    pub duration: Histogram,
    /// `ferry_producers_fenced_total`.
    pub fenced: IntCounter,
}

/// What a target topic sync did, as `ferry_topic_syncs_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicSyncKind {
    /// A target topic created.
    Create,
    /// Partitions added to a target topic.
    AddPartitions,
    /// A target topic's configs changed.
    AlterConfigs,
}

impl TopicSyncKind {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            TopicSyncKind::Create => "create",
            TopicSyncKind::AddPartitions => "add_partitions",
            TopicSyncKind::AlterConfigs => "alter_configs",
        }
    }
}

/// The outcome of a config file reload, as `ferry_config_reloads_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// The new config is running.
    Applied,
    /// The new config was refused; the old one runs on.
    Rejected,
}

impl ReloadResult {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Rejected => "rejected",
        }
    }
}

impl Metrics {
    /// A cluster's series.
    pub fn cluster(&self, alias: &str) -> ClusterMetrics {
        ClusterMetrics {
            up: self.cluster_up.with_label_values(&[alias]),
            client_errors: self.client_errors.with_label_values(&[alias]),
        }
    }

    /// The throttle series of the region pair `from` -> `to`.
    pub fn throttle(&self, from: &str, to: &str) -> ThrottleMetrics {
        ThrottleMetrics {
            wait_seconds: self.throttle_wait_seconds.with_label_values(&[from, to]),
            rate_bytes: self.throttle_rate_bytes.with_label_values(&[from, to]),
        }
    }

    /// A flow's checkpoint series.
    pub fn checkpoint(&self, flow: &str) -> CheckpointMetrics {
        CheckpointMetrics {
            writes: self.checkpoint_writes.with_label_values(&[flow]),
            failures: self.checkpoint_failures.with_label_values(&[flow]),
            age_seconds: self.checkpoint_age_seconds.with_label_values(&[flow]),
        }
    }

    /// The series of one kind of etcd request (a fixed name such as `checkpoint_save`).
    pub fn etcd_op(&self, op: &str) -> EtcdOpMetrics {
        EtcdOpMetrics {
            requests: self.etcd_requests.with_label_values(&[op]),
            errors: self.etcd_errors.with_label_values(&[op]),
            latency: self.etcd_latency.with_label_values(&[op]),
        }
    }

    /// A flow's task gauges.
    pub fn flow_tasks(&self, flow: &str) -> FlowTaskMetrics {
        FlowTaskMetrics {
            running: self.tasks.with_label_values(&[flow, "running"]),
            paused: self.tasks.with_label_values(&[flow, "paused"]),
        }
    }

    /// `ferry_task_failures_total` of a flow's topic.
    pub fn task_failures_of(&self, flow: &str, topic: &str) -> IntCounter {
        self.task_failures.with_label_values(&[flow, topic])
    }

    /// `ferry_topic_syncs_total` of a flow and kind.
    pub fn topic_syncs_of(&self, flow: &str, kind: TopicSyncKind) -> IntCounter {
        self.topic_syncs.with_label_values(&[flow, kind.label()])
    }

    /// `ferry_config_reloads_total` of a result.
    pub fn config_reloads_of(&self, result: ReloadResult) -> IntCounter {
        self.config_reloads.with_label_values(&[result.label()])
    }

    /// An exactly-once flow's transaction series.
    pub fn transactions_of(&self, flow: &str) -> TransactionMetrics {
        TransactionMetrics {
            committed: self.transactions.with_label_values(&[flow, "committed"]),
            aborted: self.transactions.with_label_values(&[flow, "aborted"]),
            duration: self.transaction_duration.with_label_values(&[flow]),
            fenced: self.producers_fenced.with_label_values(&[flow]),
        }
    }

    /// `ferry_producer_rebuilds_total` of a target cluster.
    pub fn producer_rebuilds_of(&self, cluster: &str) -> IntCounter {
        self.producer_rebuilds.with_label_values(&[cluster])
    }

    /// `ferry_assigned_tasks` of a member.
    pub fn assigned_tasks_of(&self, member: &str) -> IntGauge {
        self.assigned_tasks.with_label_values(&[member])
    }

    /// The lag gauges of a task's series.
    pub fn lag(&self, labels: &TaskLabels) -> LagMetrics {
        LagMetrics {
            records: self.lag_records.with_label_values(&labels.values()),
            seconds: self.lag_seconds.with_label_values(&labels.values()),
        }
    }

    /// Drops the lag series of `labels` (a task that moved away or stopped).
    pub fn remove_lag(&self, labels: &TaskLabels) {
        let _ = self.lag_records.remove_label_values(&labels.values());
        let _ = self.lag_seconds.remove_label_values(&labels.values());
    }

    /// Registers every metric in a fresh registry.
    pub fn new(per_partition: bool) -> Self {
        let registry = Registry::new();
        let task_labels = &["flow", "topic", "partition"];
        let mut names = Vec::new();
        macro_rules! register {
            ($metric:expr) => {{
                let metric = $metric.expect("metric definitions are static and valid");
                names.extend(prometheus::core::Collector::desc(&metric).iter().map(|desc| desc.fq_name.clone()));
                registry.register(Box::new(metric.clone())).expect("each metric is registered once");
                metric
            }};
        }
        // The process's CPU, memory, threads and file descriptors (`process_*`), for the dashboard's process row.
        let process = prometheus::process_collector::ProcessCollector::for_self();
        names.extend(prometheus::core::Collector::desc(&process).iter().map(|desc| desc.fq_name.clone()));
        registry.register(Box::new(process)).expect("the process collector is registered once");
        let metrics = Self {
            records_replicated: register!(IntCounterVec::new(
                Opts::new("ferry_records_replicated_total", "Records acknowledged by the target cluster."),
                task_labels
            )),
            bytes_replicated: register!(IntCounterVec::new(
                Opts::new("ferry_bytes_replicated_total", "Bytes (key, value, headers) acknowledged by the target."),
                task_labels
            )),
            duplicates: register!(IntCounterVec::new(
                Opts::new(
                    "ferry_duplicates_total",
                    "Records written to the target again after a restart because they were acknowledged after the last checkpoint."
                ),
                task_labels
            )),
            records_skipped: register!(IntCounterVec::new(
                Opts::new("ferry_records_skipped_total", "Source records deliberately not replicated, by reason."),
                &["flow", "topic", "partition", "reason"]
            )),
            records_lost: register!(IntCounterVec::new(
                Opts::new(
                    "ferry_records_lost_total",
                    "Source records ferry never copied because the source deleted them first (source_retention)."
                ),
                &["flow", "topic", "partition", "reason"]
            )),
            lag_records: register!(IntGaugeVec::new(
                Opts::new("ferry_replication_lag_records", "Source records not yet acknowledged by the target."),
                task_labels
            )),
            lag_seconds: register!(prometheus::GaugeVec::new(
                Opts::new(
                    "ferry_replication_lag_seconds",
                    "Age of the oldest source record not yet acknowledged by the target (0 when caught up)."
                ),
                task_labels
            )),
            end_to_end_latency: register!(HistogramVec::new(
                HistogramOpts::new(
                    "ferry_end_to_end_latency_seconds",
                    "Time from a record's source timestamp to its acknowledgement by the target."
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["flow"]
            )),
            throttle_wait_seconds: register!(prometheus::CounterVec::new(
                Opts::new("ferry_throttle_wait_seconds_total", "Time tasks waited for the bandwidth throttle."),
                &["from", "to"]
            )),
            tasks: register!(IntGaugeVec::new(
                Opts::new("ferry_tasks", "Tasks on this member by state."),
                &["flow", "state"]
            )),
            task_failures: register!(IntCounterVec::new(
                Opts::new("ferry_task_failures_total", "Task failures; each pauses the task until it restarts."),
                &["flow", "topic"]
            )),
            checkpoint_age_seconds: register!(prometheus::GaugeVec::new(
                Opts::new("ferry_checkpoint_age_seconds", "Seconds since the flow's last successful checkpoint write."),
                &["flow"]
            )),
            checkpoint_writes: register!(IntCounterVec::new(
                Opts::new("ferry_checkpoint_writes_total", "Successful checkpoint writes (one per batch)."),
                &["flow"]
            )),
            checkpoint_failures: register!(IntCounterVec::new(
                Opts::new("ferry_checkpoint_failures_total", "Failed checkpoint writes."),
                &["flow"]
            )),
            group_sync_last_success: register!(IntGaugeVec::new(
                Opts::new(
                    "ferry_group_sync_last_success_timestamp_seconds",
                    "When group offset sync last completed a round (Unix seconds; when the sync started, until then)."
                ),
                &["flow"]
            )),
            group_sync_failures: register!(IntCounterVec::new(
                Opts::new("ferry_group_sync_failures_total", "Group offset sync rounds that failed."),
                &["flow"]
            )),
            groups_synced: register!(IntCounterVec::new(
                Opts::new("ferry_groups_synced_total", "Consumer groups whose offsets a sync round translated."),
                &["flow"]
            )),
            cluster_up: register!(IntGaugeVec::new(
                Opts::new("ferry_cluster_up", "1 when the last metadata request to the cluster succeeded."),
                &["cluster"]
            )),
            topic_syncs: register!(IntCounterVec::new(
                Opts::new("ferry_topic_syncs_total", "Target topic creations and changes made to match the source."),
                &["flow", "action"]
            )),
            build_info: register!(IntGaugeVec::new(
                Opts::new("ferry_build_info", "Build information (version, git commit, librdkafka version); always 1."),
                &["version", "commit", "librdkafka"]
            )),
            ready: register!(IntGauge::new("ferry_ready", "1 when this member is connected and replicating its tasks.")),
            client_errors: register!(IntCounterVec::new(
                Opts::new("ferry_client_errors_total", "Errors reported by Kafka clients, by cluster."),
                &["cluster"]
            )),
            owned_tasks: register!(IntGauge::new("ferry_owned_tasks", "Tasks this member owns and runs.")),
            leader: register!(IntGauge::new("ferry_leader", "1 while this member is the elected controller.")),
            members: register!(IntGauge::new(
                "ferry_members",
                "Live members as the controller sees them; 0 on members that are not the controller."
            )),
            assigned_tasks: register!(IntGaugeVec::new(
                Opts::new("ferry_assigned_tasks", "Tasks assigned to each member; published by the controller."),
                &["member"]
            )),
            rebalances: register!(IntCounter::new(
                "ferry_rebalances_total",
                "Assignments written by the controller that moved at least one task."
            )),
            moved_tasks: register!(IntCounter::new(
                "ferry_moved_tasks_total",
                "Tasks moved from one member to another by the controller."
            )),
            throttle_rate_bytes: register!(IntGaugeVec::new(
                Opts::new("ferry_throttle_rate_bytes", "This member's share of a fleet-wide throttle, bytes per second."),
                &["from", "to"]
            )),
            etcd_requests: register!(IntCounterVec::new(
                Opts::new("ferry_etcd_requests_total", "Requests to etcd, by operation."),
                &["op"]
            )),
            etcd_errors: register!(IntCounterVec::new(
                Opts::new("ferry_etcd_errors_total", "Failed requests to etcd, by operation."),
                &["op"]
            )),
            etcd_latency: register!(HistogramVec::new(
                HistogramOpts::new("ferry_etcd_request_duration_seconds", "Latency of requests to etcd, by operation.")
                    .buckets(ETCD_BUCKETS.to_vec()),
                &["op"]
            )),
            config_reloads: register!(IntCounterVec::new(
                Opts::new("ferry_config_reloads_total", "Config file changes seen, by result (applied, rejected)."),
                &["result"]
            )),
            transactions: register!(IntCounterVec::new(
                Opts::new(
                    "ferry_transactions_total",
                    "Exactly-once transactions on the target, by flow and result (committed, aborted)."
                ),
                &["flow", "result"]
            )),
            transaction_duration: register!(HistogramVec::new(
                HistogramOpts::new(
                    "ferry_transaction_duration_seconds",
                    "From a transaction's first record to its commit or abort completing, by flow."
                )
                .buckets(TRANSACTION_BUCKETS.to_vec()),
                &["flow"]
            )),
            producers_fenced: register!(IntCounterVec::new(
                Opts::new(
                    "ferry_producers_fenced_total",
                    "Transactional producers fenced by a newer instance with the same transactional id, by flow."
                ),
                &["flow"]
            )),
            producer_rebuilds: register!(IntCounterVec::new(
                Opts::new(
                    "ferry_producer_rebuilds_total",
                    "Target producers replaced after a fatal librdkafka error, by cluster."
                ),
                &["cluster"]
            )),
            registry,
            per_partition,
            names: {
                names.sort();
                names
            },
        };
        let build = crate::ops::http::BuildInfo::current();
        metrics.build_info.with_label_values(&[&build.version, &build.commit, &build.librdkafka]).set(1);
        for result in [ReloadResult::Applied, ReloadResult::Rejected] {
            metrics.config_reloads_of(result);
        }
        metrics
    }

    /// Label values for a task's series, honouring the per-partition opt-in.
    pub fn task_labels(&self, flow: &str, topic: &str, partition: i32) -> TaskLabels {
        TaskLabels {
            flow: flow.to_owned(),
            topic: topic.to_owned(),
            partition: if self.per_partition { partition.to_string() } else { String::new() },
        }
    }

    /// The counters a task increments.
    pub fn task(&self, flow: &str, topic: &str, partition: i32) -> TaskMetrics {
        let labels = self.task_labels(flow, topic, partition);
        let values = labels.values();
        TaskMetrics {
            records: self.records_replicated.with_label_values(&values),
            bytes: self.bytes_replicated.with_label_values(&values),
            duplicates: self.duplicates.with_label_values(&values),
            skipped_loop: self.records_skipped.with_label_values(&[values[0], values[1], values[2], "loop"]),
            lost_source_retention: self.records_lost.with_label_values(&[
                values[0],
                values[1],
                values[2],
                "source_retention",
            ]),
            lost_source_topic_recreated: self.records_lost.with_label_values(&[
                values[0],
                values[1],
                values[2],
                "source_topic_recreated",
            ]),
            latency: self.end_to_end_latency.with_label_values(&[flow]),
        }
    }

    /// Every metric family name ferry registers, whether or not it has samples yet.
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// The Prometheus text exposition of every metric. A family without samples yet (a label vector with no
    /// children: no etcd request sent, no throttle share assigned) is still exported, as its `# HELP` and `# TYPE`
    /// lines, so a scrape lists every metric ferry has and "none yet" differs from "not exported".
    pub fn render(&self) -> String {
        use prometheus::core::Collector;
        use std::io::Write as _;

        let mut families = self.registry.gather();
        let gathered: std::collections::HashSet<String> = families.iter().map(|f| f.name().to_owned()).collect();
        // `gather()` leaves out families without samples, and only label vectors can have none. Every registered
        // vector is listed here (tests/dashboards.rs checks that each name of `names()` is exported).
        let vectors: &[&dyn Collector] = &[
            &self.records_replicated,
            &self.bytes_replicated,
            &self.duplicates,
            &self.records_skipped,
            &self.records_lost,
            &self.lag_records,
            &self.lag_seconds,
            &self.end_to_end_latency,
            &self.throttle_wait_seconds,
            &self.tasks,
            &self.task_failures,
            &self.checkpoint_age_seconds,
            &self.checkpoint_writes,
            &self.checkpoint_failures,
            &self.group_sync_last_success,
            &self.group_sync_failures,
            &self.groups_synced,
            &self.cluster_up,
            &self.topic_syncs,
            &self.build_info,
            &self.client_errors,
            &self.assigned_tasks,
            &self.throttle_rate_bytes,
            &self.etcd_requests,
            &self.etcd_errors,
            &self.etcd_latency,
            &self.config_reloads,
            &self.transactions,
            &self.transaction_duration,
            &self.producers_fenced,
            &self.producer_rebuilds,
        ];
        families.extend(vectors.iter().flat_map(|vector| vector.collect()).filter(|f| !gathered.contains(f.name())));
        families.sort_by(|a, b| a.name().cmp(b.name()));

        let encoder = TextEncoder::new();
        let mut buffer = Vec::new();
        for family in &families {
            if family.get_metric().is_empty() {
                // The header TextEncoder writes before a family's samples (it refuses a family without any).
                if !family.help().is_empty() {
                    let help = family.help().replace('\\', "\\\\").replace('\n', "\\n");
                    let _ = writeln!(buffer, "# HELP {} {help}", family.name());
                }
                let kind = format!("{:?}", family.get_field_type()).to_lowercase();
                let _ = writeln!(buffer, "# TYPE {} {kind}", family.name());
            } else {
                encoder
                    .encode(std::slice::from_ref(family), &mut buffer)
                    .expect("encoding gathered metrics into memory cannot fail");
            }
        }
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}
