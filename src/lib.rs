//! ferry replicates Kafka topics between clusters in different regions.
//!
//! # Layout
//! - [`config`]: the YAML contract (clusters, flows, throttles), loaded with figment and validated with key paths.
//! - [`naming`]: how a source topic is named on the target, and which topics must never be replicated.
//! - [`kafka`]: librdkafka client settings shared by every client ferry builds, and error classification.
//! - [`source`]: one shared consumer per flow, handing each task its own partition queue.
//! - [`target`]: one shared idempotent producer per target cluster.
//! - [`admin`]: metadata and topic administration requests against one cluster.
//! - [`topic_sync`]: creates target topics and keeps their partition count and configs in step with the source.
//! - [`discovery`]: polls source metadata and turns matching topic-partitions into the set of wanted tasks.
//! - [`task`]: the per-partition replication loop (fetch → throttle → produce → acknowledge).
//! - [`progress`]: a task's acknowledged position and sync points, shared with the checkpointer and metrics.
//! - [`lag`]: replication lag per task, aggregated into gauges.
//! - [`checkpoint`]: the checkpoint store trait, its file and etcd implementations and the batching checkpointer.
//! - [`etcd`]: the shared etcd connection, key prefix and request metrics.
//! - [`translate`]: the offset translation rule (committed source offset → target offset).
//! - [`failover`]: a consumer group's offsets translated and committed on the target.
//! - [`group_sync`]: continuous consumer group offset sync into inactive target groups.
//! - [`assignment`]: which member runs which task: sticky, balanced within one task, pure.
//! - [`supervisor`]: the one owner of every running task: starts, stops and restarts them.
//! - [`throttle`]: byte-rate budgets per region pair, enforced before produce.
//! - [`reload`]: watches the config file and hands over each valid new version; invalid ones are logged and ignored.
//! - [`coordination`]: the etcd key layout and assignment record members and the controller share.
//! - [`membership`]: a member's lease-bound registration and its keep-alive.
//! - [`election`]: leadership by lease and transaction; the guard on every controller write.
//! - [`controller`]: the leader's loop: assignment, throttle split, cleanup of departed members' checkpoints.
//! - [`ownership`]: owner keys taken before a task starts and given up after its last checkpoint.
//! - [`member`]: one running ferry process: wires the parts above together and shuts them down as a tree.
//! - [`metrics`], [`http`], [`telemetry`]: what operators see.

pub mod admin;
pub mod assignment;
pub mod checkpoint;
pub mod config;
pub mod controller;
pub mod coordination;
pub mod discovery;
pub mod election;
pub mod etcd;
pub mod failover;
pub mod group_sync;
pub mod http;
pub mod kafka;
pub mod lag;
pub mod member;
pub mod membership;
pub mod metrics;
pub mod naming;
pub mod ownership;
pub mod progress;
pub mod reload;
pub mod source;
pub mod supervisor;
pub mod target;
pub mod task;
pub mod telemetry;
pub mod throttle;
pub mod topic_sync;
pub mod translate;
