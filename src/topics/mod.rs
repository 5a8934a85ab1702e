//! Which topics a flow replicates and how they look on the target: discovery of source topic-partitions, target
//! topic creation and config sync, the naming policy, and the admin requests behind them.
//!
//! Invariant: a topic is replicated only if its flow's filters match and the naming policy does not call it a
//! replica or internal, so no flow copies a copy (no loops in active-active pairs).
//!
//! Layout: [`naming`] (remote names, what never replicates), [`discovery`] (wanted tasks from source metadata),
//! [`sync`] (target topics created and kept in step), [`admin`] (metadata and admin requests to one cluster),
//! [`identity`] (topic ids: a topic deleted and created again is another topic), [`acls`] (topic ACLs mirrored to
//! the target), [`native`] (the admin requests rdkafka does not wrap).

pub mod acls;
pub mod admin;
pub mod discovery;
pub mod identity;
pub mod naming;
mod native;
pub mod sync;
