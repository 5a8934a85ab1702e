//! What operators see: the metrics registry, the HTTP endpoint that serves it with health and status, and logging.
//!
//! Invariant: every metric ferry exports is declared in [`metrics`], with bounded label values.

pub mod http;
pub mod metrics;
pub mod telemetry;
