//! ferry replicates Kafka topics between clusters in different regions.
//!
//! # Layout
//! One folder per part of the architecture (docs/architecture.md follows a record through them):
//! - [`config`]: the YAML contract (clusters, flows, throttles), loaded with figment, validated with key paths,
//!   admitted by one rule for `run`, `check-config` and hot reload, and watched for changes.
//! - [`replication`]: the data path: source consumer, the per-partition task, throttle, target producer,
//!   acknowledged positions and sync points, lag, the supervisor that owns every task, and exactly-once's
//!   transactional buckets.
//! - [`topics`]: which topics a flow replicates and how they look on the target: naming, discovery, topic sync,
//!   admin requests.
//! - [`offsets`]: the offset translation rule (both ways), failover and failback of a consumer group, continuous
//!   group offset sync, MirrorMaker 2's checkpoint format.
//! - [`checkpoint`]: the checkpoint store trait, the one opener, the file and etcd stores, the batching checkpointer.
//! - [`coordination`]: many members through etcd: the connection, membership, election, the controller, sticky
//!   assignment and task ownership.
//! - [`member`]: one running ferry process: wires the parts above together and shuts them down as a tree.
//! - [`ops`]: what operators see: metrics, the HTTP endpoint, logging.
//! - [`wire`]: ferry's own Kafka wire client for batch pass-through: connections, leaders, record batch headers.
//! - [`kafka`]: librdkafka client settings shared by every client ferry builds, and error classification.
//! - [`clock`]: wall-clock milliseconds, as records and stores carry them.

pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod coordination;
pub mod kafka;
pub mod member;
pub mod offsets;
pub mod ops;
pub mod replication;
pub mod topics;
pub mod wire;
