//! The `ferry` command line: the binary's edge, where errors become messages and exit codes
//! (0 ok, 1 runtime failure, 2 bad usage or config; `status` adds 3 degraded and 4 partial).
//!
//! Invariant: with `-o json` stdout carries exactly one JSON document; notes, warnings and errors go to stderr.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use ferry::config::Config;
use ferry::offsets::failover::{FailbackPlan, FailoverError, GroupTranslation, PartitionOffsets};
use ferry::ops::http::{BuildInfo, StatusReport};
use ferry::ops::telemetry::{self, LogFormat};
use ferry::replication::lag::TaskLag;

/// jemalloc serves every allocation in the process, librdkafka's included (the crate's unprefixed `malloc`):
/// records are allocated on one thread and freed on another, which glibc's allocator makes slow (ADR 15).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code for bad usage or an invalid configuration.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure while running.
const EXIT_RUNTIME: u8 = 1;
/// Exit code of `status` when every member answered but one is not ready or a task is paused.
const EXIT_DEGRADED: u8 = 3;
/// Exit code of `status` when a fleet member could not be reached, so its totals are partial; it outranks
/// `EXIT_DEGRADED`, since what the missing member would report is unknown.
const EXIT_PARTIAL: u8 = 4;

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
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Translate a consumer group's committed source offsets to the target, per partition.
    Translate {
        #[command(flatten)]
        group: GroupArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Commit a consumer group's translated offsets on the flow's target cluster.
    Failover {
        #[command(flatten)]
        group: GroupArgs,
        #[command(flatten)]
        commit: CommitArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Move a group back to the flow's source cluster after a failover: its offsets on the target's remote topics
    /// translated back (and on the target's own topics through the reverse flow), committed on the source.
    Failback {
        #[command(flatten)]
        group: GroupArgs,
        #[command(flatten)]
        commit: CommitArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show a running member's readiness and per-flow lag (of the whole fleet with etcd); exit 3 when a member is
    /// not ready or a task is paused, 4 when a member could not be reached.
    Status {
        /// The member's HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        url: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show ferry's version, the git commit it was built from and the librdkafka version it links.
    Version {
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// The one output flag of every command that prints a result.
#[derive(clap::Args, Debug)]
struct OutputArgs {
    /// Output format: `text` for people, `json` for one JSON document on stdout (everything else on stderr).
    #[arg(short = 'o', long = "format", value_enum, default_value = "text")]
    format: OutputFormat,
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

/// Output format of `-o` / `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    /// Aligned columns and sentences (`table` still works: `translate`'s name for it before every command had `-o`).
    #[value(alias = "table")]
    Text,
    /// One JSON document.
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
        Command::Plan { config, output } => plan(load_admitted(&config)?, output.format),
        Command::Translate { group: GroupArgs { config, flow, group }, output } => {
            let config = load_admitted(&config)?;
            let translation = translate_group(&config, &flow, &group)?;
            match output.format {
                OutputFormat::Text => print_offsets(&translation),
                // The rows alone, as scripts have read them since before the other commands had JSON; the note
                // about synced offsets cannot go in an array, so it goes to stderr.
                OutputFormat::Json => {
                    if let Some(note) = synced_note(&translation) {
                        eprintln!("note: {note}");
                    }
                    print_json(&translation.rows)?;
                }
            }
            Ok(())
        }
        Command::Failover {
            group: GroupArgs { config, flow, group },
            commit: CommitArgs { dry_run, force },
            output,
        } => {
            let config = load_admitted(&config)?;
            let translation = translate_group(&config, &flow, &group)?;
            let commit =
                || Ok(ferry::offsets::failover::commit_on_target(&config, &flow, &group, &translation.rows, force)?);
            let outcome = CommitReport { flow: &flow, group: &group, offsets: &translation, dry_run, committed: None };
            show_and_commit(output.format, outcome, |translation| print_offsets(translation), commit)
        }
        Command::Failback {
            group: GroupArgs { config, flow, group },
            commit: CommitArgs { dry_run, force },
            output,
        } => {
            let config = load_admitted(&config)?;
            let plan = runtime()?
                .block_on(ferry::offsets::failover::failback_plan(&config, &flow, &group))
                .map_err(failover_failure)?;
            let commit = || Ok(ferry::offsets::failover::commit_failback(&config, &flow, &group, &plan, force)?);
            let offsets = FailbackOffsets {
                back: &plan.back,
                reverse: plan.reverse.iter().map(|(flow, rows)| ReverseOffsets { flow, rows }).collect(),
            };
            let outcome = CommitReport { flow: &flow, group: &group, offsets, dry_run, committed: None };
            show_and_commit(output.format, outcome, |_| print_failback(&flow, &plan), commit)
        }
        Command::Status { url, output } => status(&url, output.format),
        Command::Version { output } => {
            let build = BuildInfo::current();
            match output.format {
                OutputFormat::Text => {
                    println!("ferry {}", build.version);
                    println!("commit: {}", build.commit);
                    println!("librdkafka: {}", build.librdkafka);
                }
                OutputFormat::Json => print_json(&build)?,
            }
            Ok(())
        }
    }
}

/// Prints `value` as the one JSON document of a command run with `-o json`.
fn print_json(value: &impl Serialize) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(value).context("cannot encode JSON")?);
    Ok(())
}

/// What `failover` or `failback` commits, its JSON: the offsets, and how many were committed (null on a dry run).
#[derive(Serialize)]
struct CommitReport<'a, T> {
    flow: &'a str,
    group: &'a str,
    #[serde(flatten)]
    offsets: T,
    dry_run: bool,
    committed: Option<usize>,
}

/// `failback`'s offsets in JSON: each reverse flow an object, not a pair.
#[derive(Serialize)]
struct FailbackOffsets<'a> {
    back: &'a [PartitionOffsets],
    reverse: Vec<ReverseOffsets<'a>>,
}

/// The rows one reverse flow contributes to a failback.
#[derive(Serialize)]
struct ReverseOffsets<'a> {
    flow: &'a str,
    rows: &'a [PartitionOffsets],
}

/// The end of `failover` and `failback`: the table comes first, so a refused commit still shows what it would have
/// committed; then the commit (unless a dry run) and its outcome, or with JSON one document once it is known.
fn show_and_commit<T: Serialize>(
    format: OutputFormat,
    mut outcome: CommitReport<'_, T>,
    print_table: impl FnOnce(&T),
    commit: impl FnOnce() -> Result<usize, Failure>,
) -> Result<(), Failure> {
    if format == OutputFormat::Text {
        print_table(&outcome.offsets);
    }
    if !outcome.dry_run {
        outcome.committed = Some(commit()?);
    }
    match (format, outcome.committed) {
        (OutputFormat::Json, _) => print_json(&outcome)?,
        (OutputFormat::Text, None) => println!("dry run: nothing committed"),
        (OutputFormat::Text, Some(committed)) => println!("committed {committed} offsets for group {}", outcome.group),
    }
    Ok(())
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
    if let Some(note) = synced_note(translation) {
        println!("{note}");
    }
    print_rows(&translation.rows);
}

/// Why the offsets are not the source's own, when they come from the last group sync.
fn synced_note(translation: &GroupTranslation) -> Option<String> {
    let synced_at_ms = translation.synced_at_ms?;
    let age = (ferry::clock::now_ms() - synced_at_ms).max(0) as f64 / 1000.0;
    Some(format!("source cluster unreachable: using the group offsets ferry synced {age:.0} s ago"))
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
        let BuildInfo { version, commit, librdkafka } = BuildInfo::current();
        info!(flows = config.flows.len(), version, commit, librdkafka, "ferry starting");
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

/// One flow of `plan`, its JSON: the topics it would replicate and the changes it would make on the target.
#[derive(Serialize)]
struct FlowPlan {
    name: String,
    source: String,
    target: String,
    topics: Vec<PlannedTopic>,
    /// Each an object with `action` (`create`, `add_partitions`, `replace_configs`), its fields and `description`,
    /// the text line's words.
    actions: Vec<serde_json::Value>,
}

/// A source topic `plan` would replicate, and its target name.
#[derive(Serialize)]
struct PlannedTopic {
    source: String,
    target: String,
    partitions: i32,
}

fn plan(config: Config, format: OutputFormat) -> Result<(), Failure> {
    use ferry::topics::admin::ClusterAdmin;
    use ferry::topics::discovery::FlowTopics;
    let flows = runtime()?.block_on(async move {
        let metrics = ferry::ops::metrics::Metrics::new(false);
        let mut admins: BTreeMap<String, ClusterAdmin> = BTreeMap::new();
        let mut flows = Vec::new();
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
            flows.push(FlowPlan {
                name: flow.name.clone(),
                source: flow.source.clone(),
                target: flow.target.clone(),
                topics: pairs
                    .into_iter()
                    .map(|pair| PlannedTopic { source: pair.source, target: pair.target, partitions: pair.partitions })
                    .collect(),
                actions: actions.iter().map(action_json).collect(),
            });
        }
        Ok::<_, Failure>(flows)
    })?;
    if format == OutputFormat::Json {
        return print_json(&serde_json::json!({ "flows": flows }));
    }
    for flow in flows {
        println!("flow {} ({} -> {}): {} topics", flow.name, flow.source, flow.target, flow.topics.len());
        for topic in &flow.topics {
            println!("  {} -> {} ({} partitions)", topic.source, topic.target, topic.partitions);
        }
        for action in &flow.actions {
            println!("  would {}", action["description"].as_str().unwrap_or_default());
        }
    }
    Ok(())
}

/// A change `plan` would make, as JSON: the action's fields, and the words of the text output.
fn action_json(action: &ferry::topics::sync::Action) -> serde_json::Value {
    use ferry::topics::sync::Action;
    let description = action.to_string();
    match action {
        Action::Create { topic, partitions, configs } => serde_json::json!({
            "action": "create", "topic": topic, "partitions": partitions, "configs": configs,
            "description": description,
        }),
        Action::AddPartitions { topic, from, to } => serde_json::json!({
            "action": "add_partitions", "topic": topic, "from": from, "to": to, "description": description,
        }),
        Action::ReplaceConfigs { topic, configs } => serde_json::json!({
            "action": "replace_configs", "topic": topic, "configs": configs, "description": description,
        }),
    }
}

/// One line of `ferry status`: a flow's topic summed over its partitions.
#[derive(Serialize)]
struct TopicRow {
    flow: String,
    topic: String,
    tasks: usize,
    paused: usize,
    /// Unknown (null, `-`) until every partition of the topic has been fetched once.
    lag_records: Option<i64>,
    /// The largest over the partitions.
    lag_seconds: f64,
}

/// One live member of the fleet as `ferry status` found it.
#[derive(Serialize)]
struct MemberRow {
    id: String,
    http: String,
    assigned_tasks: usize,
    leader: bool,
    /// Null when it could not be reached.
    ready: Option<bool>,
    not_ready_reason: Option<String>,
    /// Why it could not be reached.
    error: Option<String>,
    build: Option<BuildInfo>,
}

/// The verdict of `ferry status`, which its exit code carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Health {
    /// Every member answered, is ready, and no task is paused.
    Ok,
    /// Every member answered, but one is not ready or a task is paused.
    Degraded,
    /// A member could not be reached: the totals leave its tasks out.
    Partial,
}

/// What `ferry status` found, its JSON: the asked member, every fleet member, and the lag per topic over the
/// members that answered.
#[derive(Serialize)]
struct FleetReport {
    health: Health,
    /// The asked member's readiness.
    ready: bool,
    not_ready_reason: Option<String>,
    build: Option<BuildInfo>,
    /// The asked member's id and the leader's; null with the file store (one member, no fleet).
    member: Option<String>,
    leader: Option<String>,
    /// Every live member; empty with the file store.
    members: Vec<MemberRow>,
    topics: Vec<TopicRow>,
    /// Every task of the members that answered.
    tasks: Vec<TaskLag>,
}

fn status(url: &str, format: OutputFormat) -> Result<(), Failure> {
    let report = fleet_report(url)?;
    match format {
        OutputFormat::Text => print_fleet(&report),
        OutputFormat::Json => print_json(&report)?,
    }
    verdict(url, &report)
}

/// Asks the member at `url`, and with a fleet every other member, for its status.
fn fleet_report(url: &str) -> Result<FleetReport, Failure> {
    let StatusReport { status, build } = fetch_status(url)?;
    let mut tasks = status.tasks;
    let mut members = Vec::new();
    let (mut member, mut leader) = (None, None);
    if let Some(fleet) = status.fleet {
        for listed in fleet.members {
            let mut row = MemberRow {
                leader: fleet.leader.as_deref() == Some(listed.id.as_str()),
                id: listed.id,
                http: listed.http,
                assigned_tasks: listed.assigned_tasks,
                ready: None,
                not_ready_reason: None,
                error: None,
                build: None,
            };
            // Every member reports its own tasks' lag; the queried one's is already in hand.
            if row.id == fleet.member {
                row.ready = Some(status.ready);
                row.not_ready_reason.clone_from(&status.not_ready_reason);
                row.build.clone_from(&build);
            } else {
                match fetch_status(&row.http) {
                    Ok(other) => {
                        tasks.extend(other.status.tasks);
                        row.ready = Some(other.status.ready);
                        row.not_ready_reason = other.status.not_ready_reason;
                        row.build = other.build;
                    }
                    Err(failure) => row.error = Some(format!("{:#}", failure.error)),
                }
            }
            members.push(row);
        }
        member = Some(fleet.member);
        leader = fleet.leader;
    }
    let mut topics: BTreeMap<(&str, &str), TopicRow> = BTreeMap::new();
    for task in &tasks {
        let row = topics.entry((&task.flow, &task.topic)).or_insert_with(|| TopicRow {
            flow: task.flow.clone(),
            topic: task.topic.clone(),
            tasks: 0,
            paused: 0,
            lag_records: Some(0),
            lag_seconds: 0.0,
        });
        row.tasks += 1;
        row.paused += usize::from(task.paused);
        row.lag_records = row.lag_records.zip(task.lag_records).map(|(sum, lag)| sum + lag);
        row.lag_seconds = row.lag_seconds.max(task.lag_seconds);
    }
    let topics: Vec<TopicRow> = topics.into_values().collect();
    let health = if members.iter().any(|member| member.error.is_some()) {
        Health::Partial
    } else if !status.ready
        || members.iter().any(|member| member.ready == Some(false))
        || tasks.iter().any(|task| task.paused)
    {
        Health::Degraded
    } else {
        Health::Ok
    };
    Ok(FleetReport {
        health,
        ready: status.ready,
        not_ready_reason: status.not_ready_reason,
        build,
        member,
        leader,
        members,
        topics,
        tasks,
    })
}

fn print_fleet(report: &FleetReport) {
    match &report.not_ready_reason {
        _ if report.ready => println!("ready: yes"),
        reason => println!("ready: no ({})", reason.as_deref().unwrap_or_default()),
    }
    if let Some(build) = &report.build {
        println!("build: {} (commit {}, librdkafka {})", build.version, build.commit, build.librdkafka);
    }
    if let Some(member) = &report.member {
        println!("member: {member}");
        println!("leader: {}", report.leader.as_deref().unwrap_or("none elected"));
        println!();
        println!("{:<40} {:<24} {:>9} {:>7} {:>11} {:<10}", "MEMBER", "HTTP", "ASSIGNED", "LEADER", "READY", "VERSION");
        for member in &report.members {
            let ready = match member.ready {
                Some(true) => "yes",
                Some(false) => "no",
                None => "unreachable",
            };
            let leader = if member.leader { "*" } else { "" };
            let version = member.build.as_ref().map_or("-", |build| build.version.as_str());
            println!(
                "{:<40} {:<24} {:>9} {:>7} {:>11} {:<10}",
                member.id, member.http, member.assigned_tasks, leader, ready, version
            );
        }
        println!();
    }
    let unreachable = report.members.iter().filter(|member| member.error.is_some()).count();
    if unreachable > 0 {
        println!("fleet totals are partial: they leave out the tasks of {unreachable} unreachable member(s)");
    }
    println!("{:<24} {:<32} {:>6} {:>7} {:>12} {:>10}", "FLOW", "TOPIC", "TASKS", "PAUSED", "LAG_RECORDS", "LAG_SEC");
    for TopicRow { flow, topic, tasks, paused, lag_records, lag_seconds } in &report.topics {
        let lag_records = lag_records.map_or_else(|| "-".to_owned(), |lag| lag.to_string());
        println!("{flow:<24} {topic:<32} {tasks:>6} {paused:>7} {lag_records:>12} {lag_seconds:>10.1}");
    }
}

/// The exit of `ferry status`: what is wrong, on stderr, with the code a script or probe acts on.
fn verdict(url: &str, report: &FleetReport) -> Result<(), Failure> {
    /// Paused tasks named in the message; the JSON and the PAUSED column have them all.
    const NAMED_PAUSED: usize = 5;
    let mut problems = Vec::new();
    let unreachable: Vec<String> = report
        .members
        .iter()
        .filter_map(|member| Some(format!("{} ({})", member.id, member.error.as_deref()?)))
        .collect();
    if !unreachable.is_empty() {
        problems.push(format!(
            "fleet totals are partial: {} of {} members could not be reached: {}",
            unreachable.len(),
            report.members.len(),
            unreachable.join(", ")
        ));
    }
    if !report.ready {
        let who = report.member.as_deref().unwrap_or(url);
        problems.push(format!("{who} is not ready ({})", report.not_ready_reason.as_deref().unwrap_or_default()));
    }
    for member in &report.members {
        if member.ready == Some(false) && report.member.as_deref() != Some(member.id.as_str()) {
            problems.push(format!(
                "{} is not ready ({})",
                member.id,
                member.not_ready_reason.as_deref().unwrap_or_default()
            ));
        }
    }
    let paused: Vec<&TaskLag> = report.tasks.iter().filter(|task| task.paused).collect();
    if !paused.is_empty() {
        let named: Vec<String> = paused
            .iter()
            .take(NAMED_PAUSED)
            .map(|task| match &task.pause_reason {
                Some(reason) => format!("{}/{}/{} ({reason})", task.flow, task.topic, task.partition),
                None => format!("{}/{}/{}", task.flow, task.topic, task.partition),
            })
            .collect();
        let more = paused.len().saturating_sub(NAMED_PAUSED);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        problems.push(format!("{} task(s) paused: {}{more}", paused.len(), named.join(", ")));
    }
    let code = match report.health {
        Health::Ok => return Ok(()),
        Health::Degraded => EXIT_DEGRADED,
        Health::Partial => EXIT_PARTIAL,
    };
    Err(Failure { code, error: anyhow::anyhow!("{}", problems.join("; ")) })
}

/// One member's `/status`; `url` may omit the scheme (members advertise `host:port`).
fn fetch_status(url: &str) -> Result<StatusReport, Failure> {
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
