//! Consumer offsets across clusters: the translation rule, one-shot failover and failback of a group, continuous
//! group offset sync, and MirrorMaker 2's checkpoint records.
//!
//! Invariant: translation never skips a record the group has not read, and offsets are committed into a group
//! only while it has no active member on that cluster (unless forced).
//!
//! Layout: [`translate`] (the rule, both ways), [`group`] (reading and committing one group's offsets),
//! [`failover`] (failover and failback), [`group_sync`] (continuous sync), [`mm2`] (MM2's checkpoint format).

pub mod failover;
pub mod group;
pub mod group_sync;
pub mod mm2;
pub mod translate;
