//! ferry's own Kafka wire client, for batch pass-through (`flows[].passthrough`): record batches travel from the
//! source leader to the target leader as bytes, where librdkafka would take every record apart and build it again.
//!
//! Layout: [`connection`] (one broker connection, requests pipelined, responses in order), [`cluster`] (bootstrap,
//! partition leaders, producer ids), [`requests`] (the fetch and produce requests of the data path), [`batch`]
//! (record batch headers: read, stamp, renumber). The per-partition loop
//! that uses them is the task's ([`crate::replication::task`]). Requests are encoded by the `kafka-protocol` crate;
//! plaintext connections only (see docs/adr/0028-batch-pass-through.md).

pub mod batch;
pub mod cluster;
pub mod connection;
pub mod requests;

use kafka_protocol::error::ResponseError;

/// A broker could not be reached or did not answer as the protocol says.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed or closed.
    #[error("connection to broker {broker}: {source}")]
    Io {
        /// The broker's `host:port`.
        broker: String,
        /// What the socket said.
        #[source]
        source: std::io::Error,
    },
    /// A response that does not fit its request.
    #[error("broker {broker} broke the protocol: {detail}")]
    Protocol {
        /// The broker's `host:port`.
        broker: String,
        /// What was wrong.
        detail: String,
    },
    /// A request the broker answered with an error.
    #[error("broker {broker} answered {request} with {error}")]
    Broker {
        /// The broker's `host:port`.
        broker: String,
        /// The request.
        request: &'static str,
        /// Kafka's error.
        error: ResponseError,
    },
    /// The metadata names no leader for a partition.
    #[error("no leader for {topic}[{partition}] on cluster {cluster}: {detail}")]
    NoLeader {
        /// Cluster alias.
        cluster: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Why.
        detail: String,
    },
}
