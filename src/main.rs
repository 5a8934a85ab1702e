//! The `ferry` command line: the binary's edge, where errors become messages and exit codes
//! (0 ok, 1 runtime failure, 2 bad usage or config).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use ferry::config::Config;
use ferry::offsets::failover::{FailbackPlan, FailoverError, GroupTranslation, PartitionOffsets};
use ferry::ops::telemetry::{self, LogFormat};

/// jemalloc serves every allocation in the process, librdkafka's included (the crate's unprefixed `malloc`):
/// records are allocated on one thread and freed on another, which glibc's allocator makes slow (ADR 15).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code for bad usage or an invalid configuration.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure while running.
const EXIT_RUNTIME: u8 = 1;

#[derive(Parser, Debug)]
#[command(name = "ferry", version, about = "Kafka cross-datacenter replication")]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "text", env = "FERRY_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replicate the configured flows until SIGTERM or SIGINT.
    Run {
        /// Config file (YAML); FERRY_* environment variables override it.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file without connecting to anything: exit 0 exactly when `run` would accept it.
    CheckConfig {
        /// Config file (YAML).
        #[arg(value_name = "FILE", required_unless_present = "config")]
        file: Option<PathBuf>,
        /// Config file, as an alternative to the positional argument.
        #[arg(long, short, conflicts_with = "file")]
        config: Option<PathBuf>,
        /// Do not read `{ env: VAR }` / `{ file: PATH }` secrets nor the etcd TLS files (where the pod's environment
        /// and mounted Secrets are absent, e.g. in CI).
        #[arg(long)]
        no_secrets: bool,
    },
    /// Show which topics each flow would replicate and what it would change on the targets.
    Plan {
        /// Config file (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Translate a consumer group's committed source offsets to the target, per partition.
    Translate {
        #[command(flatten)]
        group: GroupArgs,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
    /// Commit a consumer group's translated offsets on the flow's target cluster.
    Failover {
        #[command(flatten)]
        group: GroupArgs,
        #[command(flatten)]
        commit: CommitArgs,
    },
    /// Move a group back to the flow's source cluster after a failover: its offsets on the target's remote topics
    /// translated back (and on the target's own topics through the reverse flow), committed on the source.
    Failback {
        #[command(flatten)]
        group: GroupArgs,
        #[command(flatten)]
        commit: CommitArgs,
    },
    /// Show a running member's readiness and per-flow lag.
    Status {
        /// The member's HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        url: String,
    },
}

/// Which group, through which flow: the arguments of `translate`, `failover` and `failback`.
#[derive(clap::Args, Debug)]
struct GroupArgs {
    /// Config file (YAML).
    #[arg(long, short)]
    config: PathBuf,
    /// Flow whose checkpoints translate the offsets.
    #[arg(long)]
    flow: String,
    /// Consumer group.
    #[arg(long)]
    group: String,
}

/// How `failover` and `failback` commit.
#[derive(clap::Args, Debug)]
struct CommitArgs {
    /// Show what would be committed, commit nothing.
    #[arg(long)]
    dry_run: bool,
    /// Commit even while the group has active members on the cluster the offsets are committed on.
    #[arg(long)]
    force: bool,
}

/// Output format of `translate`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OutputFormat {
    /// Aligned columns.
    Table,
    /// One JSON array.
    Json,
}

/// An error with the exit code it maps to.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure { code: EXIT_RUNTIME, error: error.into() }
    }
}

fn config_failure(error: ferry::config::ConfigError) -> Failure {
    Failure { code: EXIT_CONFIG, error: anyhow::Error::new(error) }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}

fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Run { config: path } => {
            let config = Config::load(&path).map_err(config_failure)?;
            // The same admission as check-config and hot reload, before anything connects.
            let admitted = ferry::config::admit(config, ferry::config::SecretCheck::Resolve).map_err(config_failure)?;
            for warning in &admitted.warnings {
                warn!("config: {warning}");
            }
            run(admitted.config, path)
        }
        Command::CheckConfig { file, config, no_secrets } => {
            let path = file.or(config).expect("clap requires one of them");
            let config = Config::load(&path).map_err(config_failure)?;
            let secrets = if no_secrets {
                eprintln!(
                    "note: --no-secrets: secrets were not checked ({{ env }} and {{ file }} values and the etcd TLS files \
                     were not read)"
                );
                ferry::config::SecretCheck::Skip
            } else {
                ferry::config::SecretCheck::Resolve
            };
            let ferry::config::Admitted { config, warnings } =
                ferry::config::admit(config, secrets).map_err(config_failure)?;
            for warning in &warnings {
                eprintln!("warning: {warning}");
            }
            println!(
                "{}: ok ({} clusters, {} flows, {} throttles)",
                path.display(),
                config.clusters.len(),
                config.flows.len(),
                config.throttles.len()
            );
            Ok(())
        }
        Command::Plan { config } => plan(load_admitted(&config)?),
        Command::Translate { group: GroupArgs { config, flow, group }, format } => {
            let config = load_admitted(&config)?;
            let translation = translate_group(&config, &flow, &group)?;
            match format {
                OutputFormat::Table => print_offsets(&translation),
                OutputFormat::Json => {
                    println!("{}", serde_json::to_string_pretty(&translation.rows).context("cannot encode JSON")?)
                }
            }
            Ok(())
        }
        Command::Failover { group: GroupArgs { config, flow, group }, commit: CommitArgs { dry_run, force } } => {
            let config = load_admitted(&config)?;
            let translation = translate_group(&config, &flow, &group)?;
            print_offsets(&translation);
            if dry_run {
                println!("dry run: nothing committed");
                return Ok(());
            }
            let committed =
                ferry::offsets::failover::commit_on_target(&config, &flow, &group, &translation.rows, force)?;
            println!("committed {committed} offsets for group {group}");
            Ok(())
        }
        Command::Failback { group: GroupArgs { config, flow, group }, commit: CommitArgs { dry_run, force } } => {
            let config = load_admitted(&config)?;
            let plan = runtime()?
                .block_on(ferry::offsets::failover::failback_plan(&config, &flow, &group))
                .map_err(failover_failure)?;
            print_failback(&flow, &plan);
            if dry_run {
                println!("dry run: nothing committed");
                return Ok(());
            }
            let committed = ferry::offsets::failover::commit_failback(&config, &flow, &group, &plan, force)?;
            println!("committed {committed} offsets for group {group}");
            Ok(())
        }
        Command::Status { url } => status(&url),
    }
}

/// The config at `path`, admitted as `run` admits it: a one-shot command connects with the same clients, so it
/// refuses the same configs, with the same key paths and without showing a secret.
fn load_admitted(path: &std::path::Path) -> Result<Config, Failure> {
    let config = Config::load(path).map_err(config_failure)?;
    Ok(ferry::config::admit(config, ferry::config::SecretCheck::Resolve).map_err(config_failure)?.config)
}

fn failover_failure(error: FailoverError) -> Failure {
    match error {
        FailoverError::Config(error) => config_failure(error),
        other => other.into(),
    }
}

fn translate_group(config: &Config, flow: &str, group: &str) -> Result<GroupTranslation, Failure> {
    runtime()?.block_on(ferry::offsets::failover::translate_group(config, flow, group)).map_err(failover_failure)
}

fn print_offsets(translation: &GroupTranslation) {
    if let Some(synced_at_ms) = translation.synced_at_ms {
        let age = (ferry::clock::now_ms() - synced_at_ms).max(0) as f64 / 1000.0;
        println!("source cluster unreachable: using the group offsets ferry synced {age:.0} s ago");
    }
    print_rows(&translation.rows);
}

/// The failback table: the flow's topics first (committed on the source at SOURCE_OFFSET), then each reverse
/// flow's (committed on the source cluster at TARGET_OFFSET, under the reverse flow's remote topic).
fn print_failback(flow: &str, plan: &FailbackPlan) {
    println!("back through flow {flow}: the group resumes on the source at SOURCE_OFFSET");
    print_rows(&plan.back);
    for (reverse, rows) in &plan.reverse {
        println!();
        println!("forward through the reverse flow {reverse}: the group resumes at TARGET_OFFSET of TARGET_TOPIC");
        print_rows(rows);
    }
}

fn print_rows(rows: &[PartitionOffsets]) {
    let offset = |offset: Option<i64>| offset.map_or_else(|| "-".to_owned(), |offset| offset.to_string());
    println!(
        "{:<32} {:>9} {:>13} {:<32} {:>13} {:>14} {:>13}",
        "TOPIC", "PARTITION", "SOURCE_OFFSET", "TARGET_TOPIC", "TARGET_OFFSET", "NOT_REPLICATED", "MAY_REDELIVER"
    );
    for row in rows {
        print!(
            "{:<32} {:>9} {:>13} {:<32} {:>13} {:>14} {:>13}",
            row.topic,
            row.partition,
            offset(row.source_offset),
            row.target_topic,
            offset(row.target_offset),
            row.not_yet_replicated,
            row.may_redeliver
        );
        match &row.note {
            Some(note) => println!("  ({note})"),
            None => println!(),
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?)
}

fn run(config: Config, config_file: std::path::PathBuf) -> Result<(), Failure> {
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        info!(flows = config.flows.len(), version = env!("CARGO_PKG_VERSION"), "ferry starting");
        let member = ferry::member::Member::new(config).with_config_file(config_file);
        member.run(shutdown, |_| {}).await?;
        info!("ferry stopped");
        Ok(())
    })
}

/// The first SIGTERM/SIGINT starts a clean shutdown; a second one exits at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        warn!("cannot install signal handlers; stop ferry with SIGKILL");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM received"),
        _ = interrupt.recv() => info!("SIGINT received"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    warn!("second signal: exiting without waiting for the drain");
    std::process::exit(i32::from(EXIT_RUNTIME));
}

fn plan(config: Config) -> Result<(), Failure> {
    use ferry::topics::admin::ClusterAdmin;
    use ferry::topics::discovery::FlowTopics;
    runtime()?.block_on(async move {
        let metrics = ferry::ops::metrics::Metrics::new(false);
        let mut admins: BTreeMap<String, ClusterAdmin> = BTreeMap::new();
        for flow in &config.flows {
            for alias in [&flow.source, &flow.target] {
                if !admins.contains_key(alias) {
                    admins.insert(alias.clone(), ClusterAdmin::new(alias, &config.clusters[alias], &metrics)?);
                }
            }
            let flow_topics = FlowTopics::from_config(&config, flow).map_err(config_failure)?;
            let source = &admins[&flow.source];
            let target = &admins[&flow.target];
            let pairs = flow_topics.matching(&source.topics().await?);
            let actions = ferry::topics::sync::plan_against(source, target, &pairs).await?;
            println!("flow {} ({} -> {}): {} topics", flow.name, flow.source, flow.target, pairs.len());
            for pair in &pairs {
                println!("  {} -> {} ({} partitions)", pair.source, pair.target, pair.partitions);
            }
            for action in actions {
                println!("  would {action}");
            }
        }
        Ok(())
    })
}

/// One line of `ferry status`: a flow's topic summed over its partitions.
#[derive(Default)]
struct TopicRow {
    tasks: usize,
    paused: usize,
    lag_records: Option<i64>,
    lag_seconds: f64,
}

fn status(url: &str) -> Result<(), Failure> {
    let status = fetch_status(url)?;
    println!(
        "ready: {}",
        if status.ready {
            "yes".to_owned()
        } else {
            format!("no ({})", status.not_ready_reason.clone().unwrap_or_default())
        }
    );
    let mut tasks = status.tasks.clone();
    if let Some(fleet) = &status.fleet {
        println!("member: {}", fleet.member);
        println!("leader: {}", fleet.leader.as_deref().unwrap_or("none elected"));
        println!();
        println!("{:<40} {:<24} {:>9} {:>7} {:>6}", "MEMBER", "HTTP", "ASSIGNED", "LEADER", "READY");
        for member in &fleet.members {
            // Every member reports its own tasks' lag; the queried one is already in hand.
            let answer = if member.id == fleet.member { Ok(status.clone()) } else { fetch_status(&member.http) };
            let ready = match &answer {
                Ok(other) => {
                    if member.id != fleet.member {
                        tasks.extend(other.tasks.iter().cloned());
                    }
                    if other.ready {
                        "yes"
                    } else {
                        "no"
                    }
                }
                Err(_) => "unreachable",
            };
            let leader = if fleet.leader.as_deref() == Some(member.id.as_str()) { "*" } else { "" };
            println!("{:<40} {:<24} {:>9} {:>7} {:>6}", member.id, member.http, member.assigned_tasks, leader, ready);
        }
        println!();
    }
    // Lag in records is unknown ("-") until every partition of the topic has been fetched once.
    let mut flows: BTreeMap<(&str, &str), TopicRow> = BTreeMap::new();
    for task in &tasks {
        let row =
            flows.entry((&task.flow, &task.topic)).or_insert(TopicRow { lag_records: Some(0), ..TopicRow::default() });
        row.tasks += 1;
        row.paused += usize::from(task.paused);
        row.lag_records = row.lag_records.zip(task.lag_records).map(|(sum, lag)| sum + lag);
        row.lag_seconds = row.lag_seconds.max(task.lag_seconds);
    }
    println!("{:<24} {:<32} {:>6} {:>7} {:>12} {:>10}", "FLOW", "TOPIC", "TASKS", "PAUSED", "LAG_RECORDS", "LAG_SEC");
    for ((flow, topic), TopicRow { tasks, paused, lag_records, lag_seconds }) in flows {
        let lag_records = lag_records.map_or_else(|| "-".to_owned(), |lag| lag.to_string());
        println!("{flow:<24} {topic:<32} {tasks:>6} {paused:>7} {lag_records:>12} {lag_seconds:>10.1}");
    }
    Ok(())
}

/// One member's `/status`; `url` may omit the scheme (members advertise `host:port`).
fn fetch_status(url: &str) -> Result<ferry::ops::http::Status, Failure> {
    let base = if url.contains("://") { url.to_owned() } else { format!("http://{url}") };
    let endpoint = format!("{}/status", base.trim_end_matches('/'));
    let response = ureq::get(&endpoint).timeout(std::time::Duration::from_secs(5)).call();
    // A not-ready member still answers /status; only transport errors are failures here.
    let body = match response {
        Ok(response) => response.into_string(),
        Err(ureq::Error::Status(_, response)) => response.into_string(),
        Err(error) => return Err(anyhow::anyhow!("cannot reach ferry at {endpoint}: {error}").into()),
    }
    .with_context(|| format!("cannot read the answer of {endpoint}"))?;
    Ok(serde_json::from_str(&body).with_context(|| format!("{endpoint} did not answer ferry's status JSON"))?)
}
