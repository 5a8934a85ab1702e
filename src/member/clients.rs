//! The Kafka clients and throttles a member builds once per cluster alias, flow or throttle and reuses across
//! config reloads.
//!
//! Invariant: one producer per target cluster and one consumer per flow, however many tasks use them.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::info;

use crate::config::Config;
use crate::config::Delivery;
use crate::config::FlowConfig;
use crate::config::Naming;
use crate::coordination::ThrottleShare;
use crate::ops::metrics::Metrics;
use crate::replication::source::SourceConsumer;
use crate::replication::supervisor::FlowRuntime;
use crate::replication::target::TargetProducer;
use crate::replication::task::{PassThroughClusters, Provenance};
use crate::replication::throttle::Throttle;
use crate::replication::transaction::FlowTransactions;
use crate::topics::admin::ClusterAdmin;
use crate::topics::discovery::Discovery;
use crate::topics::discovery::FlowTopics;
use crate::wire::cluster::Cluster;

use super::MemberError;

/// The Kafka clients and throttles, built once per cluster alias, flow or throttle and reused across reloads.
pub(super) struct Clients {
    pub(super) metrics: Metrics,
    pub(super) admins: BTreeMap<String, Arc<ClusterAdmin>>,
    pub(super) producers: BTreeMap<String, TargetProducer>,
    pub(super) sources: BTreeMap<String, Arc<SourceConsumer>>,
    /// By the throttle's (from, to).
    pub(super) throttles: BTreeMap<(String, String), Arc<Throttle>>,
}

impl Clients {
    pub(super) fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            admins: BTreeMap::new(),
            producers: BTreeMap::new(),
            sources: BTreeMap::new(),
            throttles: BTreeMap::new(),
        }
    }

    pub(super) fn admin(&mut self, config: &Config, alias: &str) -> Result<Arc<ClusterAdmin>, MemberError> {
        if let Some(admin) = self.admins.get(alias) {
            return Ok(admin.clone());
        }
        let admin = Arc::new(ClusterAdmin::new(alias, &config.clusters[alias], &self.metrics)?);
        self.admins.insert(alias.to_owned(), admin.clone());
        Ok(admin)
    }

    /// A flow's runtime; its consumer is new (a changed flow starts over with its new settings).
    pub(super) fn flow_runtime(
        &mut self,
        config: &Config,
        flow: &FlowConfig,
        stored: BTreeMap<crate::checkpoint::TaskKey, crate::checkpoint::Checkpoint>,
    ) -> Result<FlowRuntime, MemberError> {
        for alias in [&flow.source, &flow.target] {
            self.admin(config, alias)?;
        }
        if !self.producers.contains_key(&flow.target) {
            let producer = TargetProducer::new(&flow.target, &config.clusters[&flow.target], &self.metrics)?;
            self.producers.insert(flow.target.clone(), producer);
        }
        let throttle = config.throttle_for(&flow.source, &flow.target).map(|(_, throttle)| {
            let key = (throttle.from.clone(), throttle.to.clone());
            let metrics = &self.metrics;
            self.throttles
                .entry(key)
                .or_insert_with(|| {
                    let series = metrics.throttle(&throttle.from, &throttle.to);
                    Arc::new(Throttle::new(throttle.rate.bytes_per_second(), series))
                })
                .clone()
        });
        let provenance = (flow.naming == Naming::Identity)
            .then(|| Provenance { source_alias: flow.source.clone(), target_alias: flow.target.clone() });
        let source =
            Arc::new(SourceConsumer::new(&flow.name, &flow.source, &config.clusters[&flow.source], &self.metrics)?);
        self.sources.insert(flow.name.clone(), source.clone());
        let transactions = match flow.delivery {
            Delivery::ExactlyOnce => {
                Some(Arc::new(FlowTransactions::new(flow, &config.clusters[&flow.target], &self.metrics)?))
            }
            Delivery::AtLeastOnce => None,
        };
        let passthrough = flow.passthrough.then(|| {
            let client_id = format!("ferry-{}", flow.name);
            let cluster = |alias: &str| Cluster::new(alias, &config.clusters[alias].bootstrap_servers, &client_id);
            Arc::new(PassThroughClusters { source: cluster(&flow.source), target: cluster(&flow.target) })
        });
        Ok(FlowRuntime {
            source,
            target: self.producers[&flow.target].clone(),
            throttle,
            provenance,
            stored,
            transactions,
            passthrough,
        })
    }

    /// Discovery over every flow of `config`.
    pub(super) fn discovery(&mut self, config: &Config) -> Result<Discovery, MemberError> {
        let mut flows = Vec::new();
        let mut admins = BTreeMap::new();
        for flow in &config.flows {
            for alias in [&flow.source, &flow.target] {
                admins.insert(alias.clone(), self.admin(config, alias)?);
            }
            flows.push(FlowTopics::from_config(config, flow)?);
        }
        Ok(Discovery::new(flows, admins, self.metrics.clone()))
    }

    /// Sets every throttle to its configured budget: the whole budget when this member is the whole fleet.
    pub(super) fn apply_configured_rates(&self, config: &Config) {
        for throttle in &config.throttles {
            if let Some(limiter) = self.throttles.get(&(throttle.from.clone(), throttle.to.clone())) {
                limiter.set_rate(throttle.rate.bytes_per_second());
            }
        }
    }

    /// Sets the throttles to this member's shares of the fleet-wide budgets.
    pub(super) fn apply_shares(&self, shares: &[ThrottleShare]) {
        for share in shares {
            if let Some(limiter) = self.throttles.get(&(share.from.clone(), share.to.clone())) {
                if limiter.bytes_per_second() != share.bytes_per_second {
                    info!(
                        from = share.from.as_str(),
                        to = share.to.as_str(),
                        bytes_per_second = share.bytes_per_second,
                        "throttle share set"
                    );
                }
                limiter.set_rate(share.bytes_per_second);
            } else {
                // No task of this pair runs here yet; its share still shows, for the dashboard's split.
                let rate = i64::try_from(share.bytes_per_second).unwrap_or(i64::MAX);
                self.metrics.throttle(&share.from, &share.to).rate_bytes.set(rate);
            }
        }
    }
}
