//! A cluster as pass-through sees it: its bootstrap brokers, where a partition's leader is, and a producer id for
//! ferry's idempotent writes.

use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{InitProducerIdRequest, MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::batch::ProducerStamp;
use super::connection::Connection;
use super::WireError;

/// Metadata request version: v9 (Kafka 2.4) is the first flexible one; every broker from 2.4 to 4.x answers it.
const METADATA_VERSION: i16 = 9;
/// InitProducerId version: v2 (Kafka 2.4), answered by every broker from 2.4 to 4.x.
const INIT_PRODUCER_ID_VERSION: i16 = 2;

/// Where a partition's leader is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The leader's broker id.
    pub broker_id: i32,
    /// Its `host:port`.
    pub address: String,
}

/// A cluster's bootstrap brokers, and the client id ferry's connections to it carry.
#[derive(Debug, Clone)]
pub struct Cluster {
    alias: String,
    bootstrap: Vec<String>,
    client_id: String,
}

impl Cluster {
    /// The cluster `alias` reached through a comma-separated `bootstrap_servers` list.
    pub fn new(alias: &str, bootstrap_servers: &str, client_id: &str) -> Self {
        let bootstrap = bootstrap_servers
            .split(',')
            .map(str::trim)
            .filter(|server| !server.is_empty())
            .map(|server| server.strip_prefix("PLAINTEXT://").unwrap_or(server).to_owned())
            .collect();
        Cluster { alias: alias.to_owned(), bootstrap, client_id: client_id.to_owned() }
    }

    /// The cluster's alias.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// Opens a connection to `address`.
    pub async fn connect(&self, address: &str) -> Result<Connection, WireError> {
        Connection::open(address, &self.client_id).await
    }

    /// The current leader of `topic`'s `partition`, asked of the first bootstrap broker that answers.
    pub async fn leader(&self, topic: &str, partition: i32) -> Result<Leader, WireError> {
        let mut request = MetadataRequest::default();
        let mut wanted = MetadataRequestTopic::default();
        wanted.name = Some(TopicName(StrBytes::from_string(topic.to_owned())));
        request.topics = Some(vec![wanted]);
        let mut last_error = None;
        for server in &self.bootstrap {
            let response = match self.connect(server).await {
                Ok(mut connection) => connection.call(&request, METADATA_VERSION).await,
                Err(error) => Err(error),
            };
            let response = match response {
                Ok(response) => response,
                Err(error) => {
                    last_error = Some(error);
                    continue;
                }
            };
            let no_leader = |detail: String| WireError::NoLeader {
                cluster: self.alias.clone(),
                topic: topic.to_owned(),
                partition,
                detail,
            };
            let Some(found) = response.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
            else {
                return Err(no_leader("the topic is not in the metadata".to_owned()));
            };
            if let Some(error) = found.error_code.err() {
                return Err(no_leader(format!("topic error {error}")));
            }
            let Some(found) = found.partitions.iter().find(|p| p.partition_index == partition) else {
                return Err(no_leader("the partition is not in the metadata".to_owned()));
            };
            if let Some(error) = found.error_code.err() {
                return Err(no_leader(format!("partition error {error}")));
            }
            let leader_id = found.leader_id.0;
            let Some(broker) = response.brokers.iter().find(|b| b.node_id.0 == leader_id) else {
                return Err(no_leader(format!("leader {leader_id} is not among the brokers the metadata lists")));
            };
            return Ok(Leader { broker_id: leader_id, address: format!("{}:{}", &*broker.host, broker.port) });
        }
        Err(last_error.unwrap_or_else(|| WireError::NoLeader {
            cluster: self.alias.clone(),
            topic: topic.to_owned(),
            partition,
            detail: "no bootstrap server configured".to_owned(),
        }))
    }
}

/// A new producer id for idempotent writes (no transactional id), asked of the broker `connection` leads to.
pub async fn init_producer_id(connection: &mut Connection) -> Result<ProducerStamp, WireError> {
    let mut request = InitProducerIdRequest::default();
    request.transactional_id = None;
    request.transaction_timeout_ms = 60_000;
    let response = connection.call(&request, INIT_PRODUCER_ID_VERSION).await?;
    if let Some(error) = response.error_code.err() {
        return Err(WireError::Broker { broker: connection.broker().to_owned(), request: "InitProducerId", error });
    }
    Ok(ProducerStamp { id: response.producer_id.0, epoch: response.producer_epoch })
}
