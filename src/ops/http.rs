//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz` (connected and
//! replicating), `/status` (JSON for `ferry status`, with the build the member runs).
//!
//! Invariant: handlers only read shared snapshots; nothing here can block replication.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::ops::metrics::Metrics;
use crate::replication::lag::TaskLag;

/// What `/readyz` and `/status` report, refreshed by the member.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// Whether the member is connected to every cluster and runs its tasks.
    pub ready: bool,
    /// Why not, when not ready.
    pub not_ready_reason: Option<String>,
    /// Every task's lag.
    pub tasks: Vec<TaskLag>,
    /// The fleet as this member sees it; absent with the file store (one member, no coordination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
}

/// The `/status` answer: the member's status and the build it runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusReport {
    /// What the member reports.
    #[serde(flatten)]
    pub status: Status,
    /// The build it runs; absent from members older than this field, which `ferry status` still reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildInfo>,
}

/// What this binary is: `ferry version`, the `build` of `/status` and the labels of `ferry_build_info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    /// ferry's version, from Cargo.toml.
    pub version: String,
    /// The git commit built (12 hex digits), or `unknown` when built outside a git checkout (see build.rs).
    pub commit: String,
    /// The librdkafka version linked, which decides client behaviour as much as ferry's own.
    pub librdkafka: String,
}

impl BuildInfo {
    /// This process's build.
    pub fn current() -> Self {
        BuildInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            // build.rs always sets it; a build that bypasses cargo's build script still compiles.
            commit: option_env!("FERRY_GIT_COMMIT").unwrap_or("unknown").to_owned(),
            librdkafka: rdkafka::util::get_rdkafka_version().1,
        }
    }
}

/// The members of a coordinated fleet, as one member last read them from etcd.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetStatus {
    /// This member's id.
    pub member: String,
    /// The controller's member id, if one is elected.
    pub leader: Option<String>,
    /// Every live member.
    pub members: Vec<FleetMember>,
}

/// One live member.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetMember {
    /// Its id.
    pub id: String,
    /// Its HTTP endpoint, `host:port`.
    pub http: String,
    /// Tasks the controller assigned to it.
    pub assigned_tasks: usize,
}

/// Shared state of the handlers.
#[derive(Clone, Debug)]
pub struct HttpState {
    /// Metrics to render.
    pub metrics: Metrics,
    /// Latest status.
    pub status: Arc<RwLock<Status>>,
}

/// Errors of the HTTP endpoint.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listen address is taken or not allowed.
    #[error("cannot listen on {address} (http.listen): {source}")]
    Bind {
        /// The configured address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Binds `address` and serves until `shutdown`. Binding happens before this returns, so a taken port is reported
/// at start.
pub async fn serve(
    address: SocketAddr,
    state: HttpState,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), HttpError> {
    let listener =
        tokio::net::TcpListener::bind(address).await.map_err(|source| HttpError::Bind { address, source })?;
    let bound = listener.local_addr().map_err(|source| HttpError::Bind { address, source })?;
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(state);
    let handle = tokio::spawn(async move {
        let served = axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        if let Err(error) = served {
            tracing::error!(%error, "HTTP server failed");
        }
    });
    Ok((bound, handle))
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    // Strict scrapers want the exposition format's version in the content type.
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

fn read_status(state: &HttpState) -> Status {
    state.status.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let status = read_status(&state);
    if status.ready {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        let reason = status.not_ready_reason.unwrap_or_else(|| "starting".to_owned());
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n"))
    }
}

async fn status(State(state): State<HttpState>) -> Json<StatusReport> {
    Json(StatusReport { status: read_status(&state), build: Some(BuildInfo::current()) })
}
