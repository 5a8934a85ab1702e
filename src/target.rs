//! The target side: one shared idempotent producer per target cluster, used by every task writing there.
//!
//! Invariant: records of one partition are acknowledged in the order they were sent (idempotence keeps order
//! across retries), which is what lets a task advance its position by acknowledgements alone.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, Producer};

use crate::config::ClusterConfig;
use crate::kafka::{client_config, ClientError, ClusterContext, Role, REQUEST_TIMEOUT};
use crate::metrics::Metrics;

/// The shared producer of one target cluster.
#[derive(Clone)]
pub struct TargetProducer {
    alias: String,
    producer: FutureProducer<ClusterContext>,
}

impl std::fmt::Debug for TargetProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetProducer").field("cluster", &self.alias).finish_non_exhaustive()
    }
}

impl TargetProducer {
    /// Builds the producer for cluster `alias`; it connects lazily.
    pub fn new(alias: &str, cluster: &ClusterConfig, metrics: &Metrics) -> Result<Self, ClientError> {
        let producer = client_config(alias, cluster, Role::Producer)?
            .create_with_context(ClusterContext::new(alias, metrics))
            .map_err(|source| ClientError::Create { cluster: alias.to_owned(), source })?;
        Ok(Self { alias: alias.to_owned(), producer })
    }

    /// The target cluster alias.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// The underlying producer.
    pub fn producer(&self) -> &FutureProducer<ClusterContext> {
        &self.producer
    }

    /// The high watermark of a target partition (one request to the partition leader).
    pub async fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, rdkafka::error::KafkaError> {
        let producer = self.producer.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || producer.client().fetch_watermarks(&topic, partition, REQUEST_TIMEOUT))
            .await
            .map_err(|_| rdkafka::error::KafkaError::Canceled)?
            .map(|(_, high)| high)
    }

    /// Refreshes the producer's metadata of `topic`, so partitions added since it last looked are known.
    pub async fn refresh_metadata(&self, topic: &str) -> Result<(), rdkafka::error::KafkaError> {
        let producer = self.producer.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(Some(&topic), REQUEST_TIMEOUT).map(drop))
            .await
            .map_err(|_| rdkafka::error::KafkaError::Canceled)?
    }

    /// Waits until everything sent was acknowledged, or `timeout` passed.
    pub async fn flush(&self, timeout: Duration) -> Result<(), rdkafka::error::KafkaError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|_| rdkafka::error::KafkaError::Canceled)?
    }
}
