//! The data path: a source consumer hands each task its partition queue; the task passes the throttle, produces to
//! the target producer and advances its position on acknowledgements; the supervisor owns every running task.
//!
//! Invariant: a task's position moves only over what the target acknowledged, in source-offset order, so nothing
//! this folder reports or checkpoints is ahead of the target.
//!
//! Layout: [`source`] (one consumer per flow, a queue per partition), [`task`] (the per-partition loop),
//! [`throttle`] (byte-rate budgets), [`target`] (one producer per target cluster, acknowledgement sinks),
//! [`progress`] (positions and sync points), [`lag`] (how far behind), [`supervisor`] (starts, stops, restarts),
//! [`transaction`] (exactly-once: buckets of tasks committing records and positions in one Kafka transaction).

pub mod lag;
pub mod ledger;
pub mod progress;
pub mod source;
pub mod supervisor;
pub mod target;
pub mod task;
pub mod throttle;
pub mod transaction;
