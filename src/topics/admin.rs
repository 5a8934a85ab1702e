//! Metadata and topic administration requests against one cluster.
//!
//! Invariant: every error names the cluster alias, so an operator reading a log line knows which cluster to look at.

use std::collections::BTreeMap;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::ClusterConfig;
use crate::kafka::{client_config, ClientError, ClusterContext, Role, REQUEST_TIMEOUT};
use crate::ops::metrics::Metrics;
use crate::topics::acls::{self, TopicAcl};

/// Errors of an admin request.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The admin client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A request to the cluster failed as a whole (unreachable, timed out, refused our login or certificate).
    #[error("request to cluster {cluster} failed ({what}): {source}{}", client_error_suffix(.client_error))]
    Request {
        /// Cluster alias.
        cluster: String,
        /// What was asked.
        what: &'static str,
        /// librdkafka's error (boxed: every error type that carries this one stays small).
        source: Box<KafkaError>,
        /// The client's own recent error, which says why (authentication failed, certificate verify failed); the
        /// request's error only says that it failed. Redacted.
        client_error: Option<String>,
    },
    /// The cluster hides topics the flow names from ferry's principal: no ACL lets it DESCRIBE them.
    #[error(
        "cluster {cluster} does not let {principal} DESCRIBE topic {} (Kafka: topic authorization failed); \
         replicating it needs the DESCRIBE and READ ACLs on it",
        .topics.join(", ")
    )]
    TopicsDenied {
        /// Cluster alias.
        cluster: String,
        /// Who ferry logs in as, e.g. `User:alice` (or a description, when the user name is a secret).
        principal: String,
        /// The topics.
        topics: Vec<String>,
    },
    /// The cluster refused the request for one topic.
    #[error("cluster {cluster} refused to {what} topic {topic}: {code}")]
    Topic {
        /// Cluster alias.
        cluster: String,
        /// What was asked.
        what: &'static str,
        /// Topic name.
        topic: String,
        /// Kafka's error code.
        code: RDKafkaErrorCode,
    },
}

/// `User:<sasl.username>` when the name is configured inline and is not secret; a description otherwise.
fn principal(cluster: &ClusterConfig) -> String {
    match cluster.client.get("sasl.username") {
        Some(crate::config::ClientValue::Plain(name)) => format!("User:{name}"),
        Some(_) => "ferry's user (sasl.username)".to_owned(),
        None => "ferry's principal".to_owned(),
    }
}

fn client_error_suffix(client_error: &Option<String>) -> String {
    client_error.as_deref().map(|error| format!("; the client's last error: {error}")).unwrap_or_default()
}

/// How old a client error may be to explain a failed request: a few request timeouts, as librdkafka reports a
/// persisting failure again (it suppresses identical errors for a while in between).
const CLIENT_ERROR_RECENT: std::time::Duration = std::time::Duration::from_secs(60);

/// A topic as the cluster's metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Number of partitions.
    pub partitions: i32,
}

/// A topic's dynamic (explicitly set) configs.
pub type TopicConfigs = BTreeMap<String, String>;

/// Admin client of one cluster.
pub struct ClusterAdmin {
    alias: String,
    admin: AdminClient<ClusterContext>,
    /// Who ferry logs in as, for messages about ACLs.
    principal: String,
}

impl std::fmt::Debug for ClusterAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAdmin").field("cluster", &self.alias).finish_non_exhaustive()
    }
}

impl ClusterAdmin {
    /// Builds the admin client of cluster `alias`; it connects lazily.
    pub fn new(alias: &str, cluster: &ClusterConfig, metrics: &Metrics) -> Result<Self, AdminError> {
        let admin = client_config(alias, cluster, Role::Admin)?
            .create_with_context(ClusterContext::new(alias, cluster, metrics))
            .map_err(|source| ClientError::create(alias, cluster, &source))?;
        Ok(Self { alias: alias.to_owned(), admin, principal: principal(cluster) })
    }

    /// The cluster alias.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    fn request_error(&self, what: &'static str) -> impl FnOnce(KafkaError) -> AdminError + '_ {
        move |source| AdminError::Request {
            cluster: self.alias.clone(),
            what,
            source: Box::new(source),
            client_error: crate::kafka::recent_client_error(&self.alias, CLIENT_ERROR_RECENT),
        }
    }

    /// The ACLs allowing an operation on a topic named literally; `None` when the cluster has no authorizer.
    pub async fn topic_acls(&self) -> Result<Option<Vec<TopicAcl>>, AdminError> {
        tokio::task::block_in_place(|| acls::describe(self.admin.inner(), REQUEST_TIMEOUT))
            .map_err(self.request_error("describe ACLs"))
    }

    /// Creates `acls`, each allowing its operation on its topic.
    pub async fn create_topic_acls(&self, acls: &[TopicAcl]) -> Result<(), AdminError> {
        tokio::task::block_in_place(|| acls::create(self.admin.inner(), acls, REQUEST_TIMEOUT))
            .map_err(self.request_error("create ACLs"))
    }

    /// Every topic on the cluster with its partition count.
    pub async fn topics(&self) -> Result<BTreeMap<String, TopicInfo>, AdminError> {
        let metadata = tokio::task::block_in_place(|| self.admin.inner().fetch_metadata(None, REQUEST_TIMEOUT))
            .map_err(self.request_error("fetch metadata"))?;
        Ok(metadata
            .topics()
            .iter()
            // A topic whose metadata carries an error (being created or deleted) is looked at again next time.
            .filter(|topic| topic.error().is_none())
            .map(|topic| (topic.name().to_owned(), TopicInfo { partitions: topic.partitions().len() as i32 }))
            .collect())
    }

    /// Fails naming those of `topics` the cluster refuses to describe to ferry's principal (topics it does not
    /// list could be missing or hidden; only a request for the name tells).
    pub async fn check_described(&self, topics: &[&str]) -> Result<(), AdminError> {
        let mut denied = Vec::new();
        for topic in topics {
            let metadata =
                tokio::task::block_in_place(|| self.admin.inner().fetch_metadata(Some(topic), REQUEST_TIMEOUT))
                    .map_err(self.request_error("fetch topic metadata"))?;
            if metadata.topics().iter().any(|described| {
                described.error().map(RDKafkaErrorCode::from) == Some(RDKafkaErrorCode::TopicAuthorizationFailed)
            }) {
                denied.push((*topic).to_owned());
            }
        }
        if denied.is_empty() {
            Ok(())
        } else {
            Err(AdminError::TopicsDenied {
                cluster: self.alias.clone(),
                principal: self.principal.clone(),
                topics: denied,
            })
        }
    }

    /// The dynamic configs of each topic (the ones set on the topic, not inherited defaults).
    pub async fn topic_configs(&self, topics: &[&str]) -> Result<BTreeMap<String, TopicConfigs>, AdminError> {
        let mut out = BTreeMap::new();
        // Bounded batches keep each DescribeConfigs request a sensible size for thousands of topics.
        for chunk in topics.chunks(200) {
            let resources: Vec<ResourceSpecifier<'_>> =
                chunk.iter().map(|topic| ResourceSpecifier::Topic(topic)).collect();
            let results = self
                .admin
                .describe_configs(&resources, &self.options())
                .await
                .map_err(self.request_error("describe topic configs"))?;
            for (topic, result) in chunk.iter().zip(results) {
                match result {
                    Ok(resource) => {
                        let configs = resource
                            .entries
                            .into_iter()
                            .filter(|entry| entry.source == rdkafka::admin::ConfigSource::DynamicTopic)
                            .filter_map(|entry| entry.value.map(|value| (entry.name, value)))
                            .collect();
                        out.insert((*topic).to_owned(), configs);
                    }
                    Err(code) => {
                        return Err(AdminError::Topic {
                            cluster: self.alias.clone(),
                            what: "describe configs of",
                            topic: (*topic).to_owned(),
                            code,
                        })
                    }
                }
            }
        }
        Ok(out)
    }

    /// Creates a topic with the broker's default replication factor. An existing topic is not an error.
    pub async fn create_topic(&self, topic: &str, partitions: i32, configs: &TopicConfigs) -> Result<(), AdminError> {
        let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
        for (key, value) in configs {
            new_topic = new_topic.set(key, value);
        }
        let results = self
            .admin
            .create_topics([&new_topic], &self.options())
            .await
            .map_err(self.request_error("create topic"))?;
        self.check_topic_results("create", results, &[RDKafkaErrorCode::TopicAlreadyExists])
    }

    /// Grows a topic to `partitions` partitions.
    pub async fn create_partitions(&self, topic: &str, partitions: i32) -> Result<(), AdminError> {
        let request = NewPartitions::new(topic, partitions as usize);
        let results = self
            .admin
            .create_partitions([&request], &self.options())
            .await
            .map_err(self.request_error("create partitions"))?;
        self.check_topic_results("add partitions to", results, &[])
    }

    /// Replaces a topic's whole set of dynamic configs (the AlterConfigs semantics: keys left out return to
    /// their defaults).
    pub async fn replace_topic_configs(&self, topic: &str, configs: &TopicConfigs) -> Result<(), AdminError> {
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
        for (key, value) in configs {
            alter = alter.set(key, value);
        }
        let results =
            self.admin.alter_configs([&alter], &self.options()).await.map_err(self.request_error("alter configs"))?;
        for result in results {
            if let Err((_, code)) = result {
                return Err(AdminError::Topic {
                    cluster: self.alias.clone(),
                    what: "alter configs of",
                    topic: topic.to_owned(),
                    code,
                });
            }
        }
        Ok(())
    }

    fn check_topic_results(
        &self,
        what: &'static str,
        results: Vec<rdkafka::admin::TopicResult>,
        acceptable: &[RDKafkaErrorCode],
    ) -> Result<(), AdminError> {
        for result in results {
            if let Err((topic, code)) = result {
                if !acceptable.contains(&code) {
                    return Err(AdminError::Topic { cluster: self.alias.clone(), what, topic, code });
                }
            }
        }
        Ok(())
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT)).operation_timeout(Some(REQUEST_TIMEOUT))
    }
}
