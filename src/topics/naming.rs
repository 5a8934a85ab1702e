//! Remote-topic naming: what a source topic is called on the target, and which topics are never replicated.
//!
//! Invariant: no flow replicates a topic back towards where it came from. `prefix` naming refuses any topic that
//! already carries a known cluster alias as prefix (MirrorMaker 2's rule), `identity` naming relies on the
//! provenance header written by [`crate::replication::task`] instead.

use crate::config::{Config, FlowConfig, Naming};

/// Header that records which cluster a record was first produced on (identity naming only).
pub const PROVENANCE_HEADER: &str = "ferry.origin";

/// Why a source topic is not replicated by a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Kafka's or a replicator's own bookkeeping topic (`__consumer_offsets`, `*.internal`, ...).
    Internal,
    /// Already a remote topic: replicating it again would build a chain or a loop.
    RemotePrefix(String),
}

/// The naming policy of one flow.
#[derive(Debug, Clone)]
pub struct TopicNaming {
    policy: Naming,
    source_alias: String,
    /// Every alias in the config, longest first so that `us-east-1.` wins over `us-east.` when both exist.
    known_aliases: Vec<String>,
}

impl TopicNaming {
    /// A naming policy for a flow replicating from `source_alias`, aware of every configured cluster alias.
    pub fn new(policy: Naming, source_alias: &str, known_aliases: impl IntoIterator<Item = String>) -> Self {
        let mut known_aliases: Vec<String> = known_aliases.into_iter().collect();
        known_aliases.sort_by_key(|alias| std::cmp::Reverse(alias.len()));
        Self { policy, source_alias: source_alias.to_owned(), known_aliases }
    }

    /// The naming of `flow`, knowing every cluster alias of `config` (a topic starting with one is a replica).
    pub fn for_flow(config: &Config, flow: &FlowConfig) -> Self {
        Self::new(flow.naming, &flow.source, config.clusters.keys().cloned())
    }

    /// The policy this naming applies.
    pub fn policy(&self) -> Naming {
        self.policy
    }

    /// The target topic name for a source topic.
    pub fn remote_topic(&self, source_topic: &str) -> String {
        match self.policy {
            Naming::Prefix => format!("{}.{}", self.source_alias, source_topic),
            Naming::Identity => source_topic.to_owned(),
        }
    }

    /// Whether the flow may replicate this source topic at all, regardless of its include/exclude patterns.
    pub fn check(&self, source_topic: &str) -> Result<(), Skip> {
        if is_internal(source_topic) {
            return Err(Skip::Internal);
        }
        if self.policy == Naming::Prefix {
            if let Some(alias) = self.known_aliases.iter().find(|alias| {
                source_topic.len() > alias.len() + 1
                    && source_topic.starts_with(alias.as_str())
                    && source_topic.as_bytes()[alias.len()] == b'.'
            }) {
                return Err(Skip::RemotePrefix(alias.clone()));
            }
        }
        Ok(())
    }
}

/// Kafka's internal topics and replication bookkeeping (ours and MirrorMaker 2's) are never replicated.
pub fn is_internal(topic: &str) -> bool {
    topic.starts_with("__") || topic.starts_with('.') || topic.ends_with(".internal") || topic.ends_with("-internal")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naming(policy: Naming) -> TopicNaming {
        TopicNaming::new(policy, "us-east", ["us-east".to_owned(), "eu-west".to_owned(), "us".to_owned()])
    }

    #[test]
    fn prefix_naming_prepends_the_source_alias() {
        assert_eq!(naming(Naming::Prefix).remote_topic("orders.created"), "us-east.orders.created");
    }

    #[test]
    fn identity_naming_keeps_the_name() {
        assert_eq!(naming(Naming::Identity).remote_topic("orders.created"), "orders.created");
    }

    #[test]
    fn prefix_naming_refuses_remote_topics_of_any_known_cluster() {
        let naming = naming(Naming::Prefix);
        assert_eq!(naming.check("eu-west.orders"), Err(Skip::RemotePrefix("eu-west".into())));
        assert_eq!(naming.check("us-east.orders"), Err(Skip::RemotePrefix("us-east".into())));
        assert_eq!(naming.check("us.orders"), Err(Skip::RemotePrefix("us".into())));
        assert_eq!(naming.check("us-eastern.orders"), Ok(()));
        assert_eq!(naming.check("eu-west"), Ok(()), "a topic named exactly like an alias carries no prefix");
        assert_eq!(naming.check("orders"), Ok(()));
    }

    #[test]
    fn identity_naming_allows_dotted_names() {
        assert_eq!(naming(Naming::Identity).check("eu-west.orders"), Ok(()));
    }

    #[test]
    fn internal_topics_are_never_replicated() {
        for topic in
            ["__consumer_offsets", "__transaction_state", "mm2-offset-syncs.b.internal", "connect-offsets-internal"]
        {
            assert_eq!(naming(Naming::Identity).check(topic), Err(Skip::Internal), "{topic}");
        }
    }
}
