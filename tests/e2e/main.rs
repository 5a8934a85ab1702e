//! End-to-end tests against the dev env's real Kafka clusters (see `scripts/dev-env`).

#[macro_use]
#[path = "../support/dev_env.rs"]
mod dev_env;
#[macro_use]
mod common;
#[macro_use]
mod fleet_support;
mod corrupt_checkpoint;
mod etcd_failover;
mod exactly_once;
mod failover;
mod fidelity;
mod fleet;
mod group_sync;
mod metrics_scrape;
mod mm2_checkpoints;
mod oversize;
mod passthrough;
mod reload;
mod restart;
mod runtime_topics;
mod secured;
mod shutdown;
mod source_recreated;
mod source_retention;
mod target_outage;
mod target_recreated;
mod unreachable;
