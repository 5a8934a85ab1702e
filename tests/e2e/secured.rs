//! Secured clusters end to end (issue 15): ferry replicates from a SASL_SSL (SCRAM-SHA-512) listener to another,
//! with its passwords from an environment variable and a file and its checkpoints in an etcd with TLS, client
//! certificates and auth; each way the security can be wrong (a wrong password, a CA that did not sign the broker,
//! an etcd client certificate etcd does not trust, a user without ACLs) is reported with the cluster or etcd and the
//! reason; and no password or key ever shows in what ferry prints, serves or writes into etcd.
//!
//! ferry runs with `RUST_LOG=debug` in all of them: debug lines are where a secret would slip out first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, GetOptions, Identity, TlsOptions};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;

use crate::common::*;

/// Environment variables the configs read their secrets from (`{ env: ... }`).
const SOURCE_PASSWORD_VAR: &str = "SECURED_TEST_SOURCE_PASSWORD";
const ETCD_PASSWORD_VAR: &str = "SECURED_TEST_ETCD_PASSWORD";

/// One ferry set-up against the secured env; the failure tests change one part of it.
struct Setup<'a> {
    env: &'a SecureEnv,
    dir: &'a Path,
    flow: String,
    topic: String,
    prefix: String,
    /// Source user and the password ferry is given for it (through `SOURCE_PASSWORD_VAR`).
    source_login: Login,
    /// Password in the target's password file (`{ file: ... }`).
    target_password: String,
    /// CA file ferry trusts for the source cluster.
    source_ca: String,
    /// Client certificate and key ferry shows etcd.
    etcd_identity: (String, String),
    /// More settings of the flow (YAML lines indented for a flow entry).
    flow_extra: String,
}

impl<'a> Setup<'a> {
    /// Everything right: the admin user on both clusters, the env's CA, etcd's client certificate.
    fn new(env: &'a SecureEnv, dir: &'a Path, name: &str) -> Self {
        Setup {
            env,
            dir,
            flow: unique(name),
            topic: unique(name),
            prefix: format!("/ferry-test/{}", unique(name)),
            source_login: env.admin.clone(),
            target_password: env.admin.password.clone(),
            source_ca: env.ca_file.clone(),
            etcd_identity: (env.etcd.cert_file.clone(), env.etcd.key_file.clone()),
            flow_extra: String::new(),
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("ferry.yaml")
    }

    /// Writes the config and the target's password file.
    fn write(&self) -> PathBuf {
        let password_file = self.dir.join("target-password");
        std::fs::write(&password_file, format!("{}\n", self.target_password)).unwrap();
        let env = self.env;
        let config = format!(
            r#"clusters:
  src:
    bootstrap_servers: "{source}"
    client:
      security.protocol: SASL_SSL
      sasl.mechanism: SCRAM-SHA-512
      sasl.username: "{source_user}"
      sasl.password: {{ env: {SOURCE_PASSWORD_VAR} }}
      ssl.ca.location: "{source_ca}"
  dst:
    bootstrap_servers: "{target}"
    client:
      security.protocol: SASL_SSL
      sasl.mechanism: SCRAM-SHA-512
      sasl.username: "{target_user}"
      sasl.password: {{ file: "{password_file}" }}
      ssl.ca.location: "{ca}"
checkpoint:
  store: etcd
  interval: 1s
  etcd:
    endpoints: ["{etcd}"]
    prefix: "{prefix}"
    lease_ttl: 5s
    username: "{etcd_user}"
    password: {{ env: {ETCD_PASSWORD_VAR} }}
    tls: {{ ca_file: "{etcd_ca}", cert_file: "{etcd_cert}", key_file: "{etcd_key}" }}
discovery:
  interval: 2s
flows:
  - name: {flow}
    source: src
    target: dst
    topics: {{ include: ['{topic}'] }}
{flow_extra}"#,
            flow_extra = self.flow_extra,
            source = env.source,
            source_user = self.source_login.username,
            source_ca = self.source_ca,
            target = env.target,
            target_user = env.admin.username,
            password_file = password_file.display(),
            ca = env.ca_file,
            etcd = env.etcd.endpoints,
            prefix = self.prefix,
            etcd_user = env.etcd.username,
            etcd_ca = env.etcd.ca_file,
            etcd_cert = self.etcd_identity.0,
            etcd_key = self.etcd_identity.1,
            flow = self.flow,
            topic = self.topic,
        );
        let path = self.config_path();
        std::fs::write(&path, config).unwrap();
        path
    }

    /// The secrets the config reads from the environment.
    fn secret_vars(&self) -> [(&str, &str); 2] {
        [(SOURCE_PASSWORD_VAR, self.source_login.password.as_str()), (ETCD_PASSWORD_VAR, &self.env.etcd.password)]
    }

    /// `ferry run` on this set-up, logging at debug level.
    fn start(&self) -> Ferry {
        let path = self.write();
        let [source, etcd] = self.secret_vars();
        Ferry::start_with(path, free_port(), &[DEBUG_LOG, source, etcd])
    }

    /// A one-shot ferry command on this set-up's config (written before): exit code and everything it printed.
    fn command(&self, args: &[&str]) -> (Option<i32>, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .arg(self.config_path())
            .envs(self.secret_vars())
            .env(DEBUG_LOG.0, DEBUG_LOG.1)
            .output()
            .unwrap();
        let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.code(), printed)
    }

    /// The topic on the source, `partitions` partitions of `per_partition` records each, produced through the
    /// secured listener.
    async fn feed(&self, partitions: i32, per_partition: u64) -> Vec<Vec<Record>> {
        let admin: AdminClient<DefaultClientContext> =
            self.env.client(&self.env.source, &self.env.admin).create().expect("secured admin client");
        create_topic_with(&admin, &self.topic, partitions, &[]).await;
        let producer = producer_with(self.env.client(&self.env.source, &self.env.admin));
        let mut fed = Vec::new();
        for partition in 0..partitions {
            let records: Vec<Record> =
                (0..per_partition).map(|seq| Record::numbered(&self.topic, partition, seq)).collect();
            produce(&producer, &self.topic, partition, &records).await;
            fed.push(records);
        }
        fed
    }

    /// Waits until the target topic holds as many records as were `fed` to each partition, then reads every
    /// partition back over SASL_SSL as the admin user and checks it is exactly what was fed; the target topic.
    async fn wait_replicated(&self, fed: &[Vec<Record>]) -> String {
        let env = self.env;
        let target_topic = format!("src.{}", self.topic);
        wait_for("every record on the target", Duration::from_secs(120), || {
            fed.iter()
                .enumerate()
                .all(|(partition, records)| {
                    end_offset(&env.plain.target, &target_topic, partition as i32) == records.len() as i64
                })
                .then_some(())
        })
        .await;
        for (partition, expected) in fed.iter().enumerate() {
            let replicated: Vec<Record> =
                read_partition_with(env.client(&env.target, &env.admin), &target_topic, partition as i32)
                    .into_iter()
                    .map(|(_, record)| record)
                    .collect();
            assert!(replicated == *expected, "{target_topic}[{partition}] read over SASL_SSL differs from the source");
        }
        target_topic
    }

    /// Every key and value ferry wrote into etcd under its prefix, read as ferry's etcd user.
    async fn etcd_contents(&self) -> Vec<(String, Vec<u8>)> {
        let env = &self.env.etcd;
        let tls =
            TlsOptions::new().ca_certificate(Certificate::from_pem(std::fs::read(&env.ca_file).unwrap())).identity(
                Identity::from_pem(std::fs::read(&env.cert_file).unwrap(), std::fs::read(&env.key_file).unwrap()),
            );
        let options = ConnectOptions::new().with_tls(tls).with_user(env.username.clone(), env.password.clone());
        let mut client = etcd_client::Client::connect([env.endpoints.as_str()], Some(options)).await.unwrap();
        let response = client.get(self.prefix.as_str(), Some(GetOptions::new().with_prefix())).await.unwrap();
        response.kvs().iter().map(|kv| (kv.key_str().unwrap().to_owned(), kv.value().to_vec())).collect()
    }

    /// Every secret of the env, named: passwords and the private key ferry reads.
    fn secrets(&self) -> Vec<(String, String)> {
        let env = self.env;
        let mut secrets = vec![
            ("the admin's SCRAM password".to_owned(), env.admin.password.clone()),
            ("the limited user's SCRAM password".to_owned(), env.limited.password.clone()),
            ("the etcd password".to_owned(), env.etcd.password.clone()),
        ];
        for key_file in [&env.etcd.key_file, &self.etcd_identity.1] {
            secrets.extend(private_key_lines(key_file));
        }
        secrets
    }
}

/// The base64 lines of a PEM private key: any one of them in an output is a leak.
fn private_key_lines(path: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with("-----") && line.len() >= 16)
        .map(|line| (format!("a line of the private key {path}"), line.to_owned()))
        .collect()
}

/// Fails naming the output and the secret when any secret appears in `text`.
fn assert_no_secret(what: &str, text: &str, secrets: &[(String, String)]) {
    for (name, secret) in secrets {
        assert!(!text.contains(secret.as_str()), "{what} shows {name}:\n{text}");
    }
}

/// Checks every output of a running ferry and of `check-config` and `plan` on its config for secrets.
async fn assert_nothing_shows_a_secret(setup: &Setup<'_>, ferry: &Ferry) {
    let secrets = setup.secrets();
    let (_, metrics) = ferry.get("/metrics").expect("/metrics answers");
    assert_no_secret("/metrics", &metrics, &secrets);
    let (_, status) = ferry.get("/status").expect("/status answers");
    assert_no_secret("/status", &status, &secrets);
    let (_, ready) = ferry.get("/readyz").expect("/readyz answers");
    assert_no_secret("/readyz", &ready, &secrets);
    for command in [&["check-config"][..], &["plan", "--config"][..]] {
        let (_, printed) = setup.command(command);
        assert_no_secret(&format!("ferry {command:?}"), &printed, &secrets);
    }
    for (key, value) in setup.etcd_contents().await {
        assert_no_secret(&format!("etcd key {key}"), &key, &secrets);
        assert_no_secret(&format!("the value of etcd key {key}"), &String::from_utf8_lossy(&value), &secrets);
    }
    // Last: everything above may have made ferry log more.
    assert_no_secret("ferry's stdout and stderr", &ferry.logs(), &secrets);
}

/// A certificate and key of a CA nobody in the env trusts (it signed nothing of the env's).
fn rogue_certificate(dir: &Path, name: &str, extended_key_usage: &str) -> (String, String) {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    let output = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}"), "-addext", &format!("extendedKeyUsage={extended_key_usage}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (scripts/install-deps installs it)");
    assert!(output.status.success(), "openssl: {}", String::from_utf8_lossy(&output.stderr));
    (cert.display().to_string(), key.display().to_string())
}

/// A client certificate signed by the env's own CA (which etcd trusts) that expired years ago.
fn expired_certificate(env: &SecureEnv, dir: &Path, name: &str) -> (String, String) {
    let ca_key = Path::new(&env.ca_file).with_file_name("ca.key");
    let (cert, key, csr) =
        (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")), dir.join(format!("{name}.csr")));
    let ca_dir = dir.join(format!("{name}-ca"));
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::write(ca_dir.join("index.txt"), "").unwrap();
    std::fs::write(ca_dir.join("serial"), "1000\n").unwrap();
    let config = ca_dir.join("ca.cnf");
    std::fs::write(
        &config,
        format!(
            "[ca]\ndefault_ca = test\n[test]\ndatabase = {dir}/index.txt\nnew_certs_dir = {dir}\nserial = {dir}/serial\n\
             default_md = sha256\npolicy = any\nx509_extensions = client\n[any]\ncommonName = supplied\n\
             [client]\nextendedKeyUsage = clientAuth\n",
            dir = ca_dir.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let output =
            Command::new("openssl").args(args).output().expect("run openssl (scripts/install-deps installs it)");
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    let path = |p: &Path| p.display().to_string();
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        &path(&key),
        "-out",
        &path(&csr),
    ]);
    run(&[
        "ca",
        "-batch",
        "-notext",
        "-config",
        &path(&config),
        "-cert",
        &env.ca_file,
        "-keyfile",
        &path(&ca_key),
        "-in",
        &path(&csr),
        "-out",
        &path(&cert),
        "-startdate",
        "20200101000000Z",
        "-enddate",
        "20200102000000Z",
    ]);
    (path(&cert), path(&key))
}

/// Waits until `/readyz` answers 503 with a reason that contains every one of `words`; returns the reason.
async fn wait_not_ready_with(ferry: &Ferry, words: &[&str]) -> String {
    let what = format!("/readyz 503 naming {words:?}");
    let mut last = String::new();
    let found = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            if let Some((code, body)) = ferry.get("/readyz") {
                if code == 503 && words.iter().all(|word| body.contains(word)) {
                    return body;
                }
                last = format!("{code} {body}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}; last answer: {last}\nlogs:\n{}", ferry.logs()))
}

/// Waits until a log line contains every one of `words`; returns it.
async fn wait_log_line(ferry: &Ferry, words: &[&str]) -> String {
    let found = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            if let Some(line) = ferry.logs().lines().find(|line| words.iter().all(|word| line.contains(word))) {
                return line.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for a log line naming {words:?}; logs:\n{}", ferry.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_sasl_ssl_to_sasl_ssl_with_checkpoints_in_secured_etcd_and_shows_no_secret() {
    let env = secure_env!();
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&env, dir.path(), "secured");
    let fed = setup.feed(2, 300).await;
    let ferry = setup.start();

    setup.wait_replicated(&fed).await;
    wait_for("ferry ready", Duration::from_secs(60), || (ferry.get("/readyz")?.0 == 200).then_some(())).await;
    assert_eq!(ferry.metric("ferry_cluster_up", &[("cluster", "src")]), Some(1.0));
    assert_eq!(ferry.metric("ferry_cluster_up", &[("cluster", "dst")]), Some(1.0));
    // The checkpoints went through TLS and auth into etcd.
    let checkpoints = format!("{}/checkpoints/", setup.prefix);
    let contents = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let contents = setup.etcd_contents().await;
            if contents.iter().any(|(key, _)| key.starts_with(&checkpoints)) {
                return contents;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await
    .expect("checkpoints in the secured etcd");
    assert!(!contents.is_empty());

    let (code, printed) = setup.command(&["check-config"]);
    assert_eq!(code, Some(0), "check-config accepts the secured config:\n{printed}");
    let (code, printed) = setup.command(&["plan", "--config"]);
    assert_eq!(code, Some(0), "plan reads both secured clusters:\n{printed}");
    assert!(printed.contains(&setup.topic), "plan lists the topic:\n{printed}");
    assert_nothing_shows_a_secret(&setup, &ferry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sasl_password_is_named_with_the_cluster() {
    let env = secure_env!();
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&env, dir.path(), "wrong-password");
    setup.target_password = format!("{}-wrong", env.admin.password);
    setup.feed(1, 10).await;
    let ferry = setup.start();

    let line = wait_log_line(&ferry, &["dst", "Authentication failed"]).await;
    assert!(line.contains("SCRAM-SHA-512"), "the log line names the mechanism: {line}");
    wait_for("ferry_cluster_up of dst at 0", Duration::from_secs(60), || {
        (ferry.metric("ferry_cluster_up", &[("cluster", "dst")]) == Some(0.0)).then_some(())
    })
    .await;
    wait_not_ready_with(&ferry, &["dst", "Authentication failed"]).await;
    let mut secrets = setup.secrets();
    secrets.push(("the wrong password".to_owned(), setup.target_password.clone()));
    // plan has only admin clients, whose errors librdkafka queues where rust-rdkafka never reads them: it names the
    // cluster but cannot say why.
    let (code, plan) = setup.command(&["plan", "--config"]);
    assert!(code == Some(1) && plan.contains("dst"), "plan fails naming the cluster:\n{plan}");
    assert_no_secret("plan", &plan, &secrets);
    assert_nothing_shows_a_secret(&setup, &ferry).await;
    assert_no_secret("ferry's stdout and stderr", &ferry.logs(), &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_did_not_sign_the_broker_is_named_with_the_cluster() {
    let env = secure_env!();
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&env, dir.path(), "unknown-ca");
    setup.source_ca = rogue_certificate(dir.path(), "rogue-ca", "serverAuth").0;
    setup.feed(1, 10).await;
    let ferry = setup.start();

    wait_log_line(&ferry, &["src", "certificate verify failed"]).await;
    wait_for("ferry_cluster_up of src at 0", Duration::from_secs(60), || {
        (ferry.metric("ferry_cluster_up", &[("cluster", "src")]) == Some(0.0)).then_some(())
    })
    .await;
    wait_not_ready_with(&ferry, &["src", "certificate verify failed"]).await;
    assert_nothing_shows_a_secret(&setup, &ferry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_client_certificate_etcd_does_not_trust_is_named_with_etcd() {
    let env = secure_env!();
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&env, dir.path(), "rogue-etcd-cert");
    setup.etcd_identity = rogue_certificate(dir.path(), "rogue-client", "clientAuth");
    setup.feed(1, 10).await;
    let ferry = setup.start();

    let line = wait_log_line(&ferry, &["etcd", &env.etcd.endpoints, "BadCertificate"]).await;
    assert!(line.contains("ERROR"), "an error line: {line}");
    wait_not_ready_with(&ferry, &["etcd", &env.etcd.endpoints, "BadCertificate"]).await;
    let secrets = setup.secrets();
    for (what, text) in [("/metrics", ferry.get("/metrics").unwrap().1), ("/readyz", ferry.get("/readyz").unwrap().1)] {
        assert_no_secret(what, &text, &secrets);
    }
    assert_no_secret("ferry's stdout and stderr", &ferry.logs(), &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_user_without_acls_is_named_with_the_acl_and_recovers_once_granted() {
    let env = secure_env!();
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&env, dir.path(), "no-acl");
    setup.source_login = env.limited.clone();
    let fed = setup.feed(1, 50).await;
    let ferry = setup.start();

    let line = wait_log_line(&ferry, &["src", &setup.topic, "DESCRIBE"]).await;
    assert!(line.contains(&format!("User:{}", env.limited.username)), "the log line names the principal: {line}");
    wait_not_ready_with(&ferry, &["src", &setup.topic, "DESCRIBE", "READ"]).await;
    assert_nothing_shows_a_secret(&setup, &ferry).await;

    // Granted what the message asks for, ferry replicates without a restart.
    grant_read(&env, dir.path(), &env.limited.username, &setup.topic);
    setup.wait_replicated(&fed).await;
    wait_for("ferry ready once the ACLs exist", Duration::from_secs(60), || {
        (ferry.get("/readyz")?.0 == 200).then_some(())
    })
    .await;
    assert_nothing_shows_a_secret(&setup, &ferry).await;
}

/// Grants `user` DESCRIBE and READ on `topic` of the source, with Kafka's own ACL tool as the admin user.
fn grant_read(env: &SecureEnv, dir: &Path, user: &str, topic: &str) {
    let principal = format!("User:{user}");
    let grant =
        ["--add", "--allow-principal", &principal, "--operation", "Describe", "--operation", "Read", "--topic", topic];
    acl_tool(env, dir, &env.source, &grant);
}

/// Runs Kafka's own ACL tool as the admin user against `bootstrap` with `args`; what it printed.
fn acl_tool(env: &SecureEnv, dir: &Path, bootstrap: &str, args: &[&str]) -> String {
    let properties = dir.join("acl-admin.properties");
    std::fs::write(
        &properties,
        format!(
            "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\nssl.truststore.type=PEM\n\
             ssl.truststore.location={ca}\nsasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule \
             required username=\"{admin}\" password=\"{password}\";\n",
            ca = env.ca_file,
            admin = env.admin.username,
            password = env.admin.password,
        ),
    )
    .unwrap();
    let output = Command::new(repo_root().join("scripts/kafka-tool"))
        .args(["org.apache.kafka.tools.AclCommand", "--bootstrap-server", bootstrap, "--command-config"])
        .arg(&properties)
        .args(args)
        .env("FERRY_KAFKA_LIB", &env.plain.kafka_lib)
        .output()
        .unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "kafka AclCommand {args:?} failed: {printed}");
    printed
}

/// The records of `topic`[0] as `login` reads them on the target in consumer group `group`; `None` while the
/// cluster does not let it (no ACL yet).
fn read_as(env: &SecureEnv, login: &Login, group: &str, topic: &str, expected: usize) -> Option<Vec<Record>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer =
        env.client(&env.target, login).set("group.id", group).set("enable.auto.commit", "false").create().ok()?;
    let (low, _) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).ok()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Offset(low)).ok()?;
    consumer.assign(&assignment).ok()?;
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while records.len() < expected && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => records.push(Record {
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                headers: rdkafka::message::Headers::iter(message.headers()?)
                    .map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec)))
                    .collect(),
                timestamp: message.timestamp(),
            }),
            Some(Err(_)) => return None,
            None => {}
        }
    }
    (records.len() == expected).then_some(records)
}

/// Topic ACL sync, as MirrorMaker 2 does it: whoever may read a replicated topic on the source may read its replica
/// on the target; ALL becomes READ, and WRITE is never granted on the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_acls_are_mirrored_so_a_source_reader_reads_the_replica_and_write_is_never_granted() {
    let env = secure_env!();
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&env, dir.path(), "acl-sync");
    let fed = setup.feed(1, 20).await;
    let limited = &env.limited;
    grant_read(&env, dir.path(), &limited.username, &setup.topic);
    let (owner, producer_principal) = (format!("User:{}", unique("owner")), format!("User:{}", unique("producer")));
    acl_tool(
        &env,
        dir.path(),
        &env.source,
        &["--add", "--allow-principal", &owner, "--operation", "All", "--topic", &setup.topic],
    );
    acl_tool(
        &env,
        dir.path(),
        &env.source,
        &["--add", "--allow-principal", &producer_principal, "--operation", "Write", "--topic", &setup.topic],
    );
    let target_topic = format!("src.{}", setup.topic);
    // Group ACLs are the operator's to grant (neither MirrorMaker 2 nor ferry syncs them).
    let group = unique("limited-reader");
    let principal = format!("User:{}", limited.username);
    acl_tool(
        &env,
        dir.path(),
        &env.target,
        &["--add", "--allow-principal", &principal, "--operation", "Read", "--group", &group],
    );
    assert!(
        read_as(&env, limited, &group, &target_topic, 20).is_none(),
        "the limited user reads the target before any sync"
    );

    let ferry = setup.start();
    let read = wait_for("the source's reader reading the replica on the target", Duration::from_secs(120), || {
        read_as(&env, limited, &group, &target_topic, 20)
    })
    .await;
    assert!(read == fed[0], "the limited user read something else than was replicated");
    let listed = acl_tool(&env, dir.path(), &env.target, &["--list", "--topic", &target_topic]);
    let lines_of = |principal: &str| -> Vec<String> {
        listed.lines().filter(|line| line.contains(&format!("principal={principal},"))).map(str::to_owned).collect()
    };
    let limited_lines = lines_of(&format!("User:{}", limited.username));
    assert!(
        limited_lines.iter().any(|line| line.contains("operation=READ"))
            && limited_lines.iter().any(|line| line.contains("operation=DESCRIBE")),
        "{listed}"
    );
    let owner_lines = lines_of(&owner);
    assert!(owner_lines.len() == 1 && owner_lines[0].contains("operation=READ"), "ALL becomes READ: {listed}");
    assert!(lines_of(&producer_principal).is_empty(), "WRITE must never be granted on the target: {listed}");
    assert!(!listed.contains("operation=ALL") && !listed.contains("operation=WRITE"), "{listed}");
    assert!(ferry.logs().contains("created target topic ACLs mirrored from the source"), "{}", ferry.logs());
    assert_nothing_shows_a_secret(&setup, &ferry).await;
}

/// A password for etcd given with plain http endpoints travels readable: ferry warns once, naming the endpoints,
/// and never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_password_over_plain_http_is_warned_about_without_showing_it() {
    let env = test_env!();
    let [etcd] = dev_env_vars!("FERRY_TEST_ETCD_ENDPOINTS");
    let dir = tempfile::tempdir().unwrap();
    let password = format!("secret-{}", unique("etcd-password"));
    let endpoint = etcd.split(',').next().unwrap().to_owned();
    let config = format!(
        r#"clusters:
  src: {{ bootstrap_servers: "{source}" }}
  dst: {{ bootstrap_servers: "{target}" }}
checkpoint:
  store: etcd
  etcd:
    endpoints: ["{endpoint}"]
    prefix: "/ferry-test/{prefix}"
    username: ferry
    password: {{ env: {ETCD_PASSWORD_VAR} }}
flows:
  - name: {flow}
    source: src
    target: dst
    topics: {{ include: ['{topic}'] }}
"#,
        source = env.source,
        target = env.target,
        prefix = unique("plain-password"),
        flow = unique("plain-password"),
        topic = unique("plain-password"),
    );
    let path = dir.path().join("ferry.yaml");
    std::fs::write(&path, config).unwrap();
    let ferry = Ferry::start_with(path, free_port(), &[DEBUG_LOG, (ETCD_PASSWORD_VAR, &password)]);
    let line = wait_log_line(&ferry, &["sent to etcd over plain http"]).await;
    assert!(line.contains(&endpoint), "the warning names the endpoint: {line}");
    // This etcd has no auth: the login fails, and ferry keeps trying without ever printing the password.
    wait_for("/readyz saying why the store cannot be opened", Duration::from_secs(60), || {
        let (code, body) = ferry.get("/readyz")?;
        (code == 503).then_some(body)
    })
    .await;
    let logs = ferry.logs();
    assert_eq!(logs.matches("sent to etcd over plain http").count(), 1, "warned once:\n{logs}");
    assert!(!logs.contains(&password), "the log shows the etcd password");
    let (_, ready) = ferry.get("/readyz").unwrap();
    assert!(!ready.contains(&password), "/readyz shows the etcd password");
}

/// A three-member fleet on the secured etcd, replicating SASL_SSL to SASL_SSL: the members share the tasks, a
/// group's offsets are synced into the target and `ferry failover` commits a translated group, all through the same
/// security, with no secret in any output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_the_secured_etcd_syncs_groups_and_fails_over_through_sasl_ssl() {
    use crate::fleet_support::{owned, wait_balanced};
    const PARTITIONS: i32 = 3;
    let env = secure_env!();
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&env, dir.path(), "secure-fleet");
    let (synced_group, failed_over_group) = (unique("synced"), unique("failover"));
    setup.flow_extra =
        format!("    sync_group_offsets: {{ enabled: true, include: ['{synced_group}'], interval: 1s }}\n");
    let fed = setup.feed(PARTITIONS, 100).await;
    let path = setup.write();
    let [source_secret, etcd_secret] = setup.secret_vars();
    let members: Vec<Ferry> = (0..3)
        .map(|_| Ferry::start_with(path.clone(), free_port(), &[DEBUG_LOG, source_secret, etcd_secret]))
        .collect();
    let refs: Vec<&Ferry> = members.iter().collect();
    let counts = wait_balanced("3 tasks over 3 members", &refs, i64::from(PARTITIONS), Duration::from_secs(90)).await;
    assert_eq!(counts, vec![1, 1, 1]);
    let target_topic = setup.wait_replicated(&fed).await;

    // A source group's offsets synced into the target by the fleet.
    commit(&env.plain.source, &synced_group, &setup.topic, &[10, 20, 30]);
    wait_for("the group's offsets synced into the target", Duration::from_secs(60), || {
        (committed(&env.plain.target, &synced_group, &target_topic, PARTITIONS) == vec![Some(10), Some(20), Some(30)])
            .then_some(())
    })
    .await;

    // Another group failed over with the one-shot command, through SASL_SSL and the secured etcd.
    commit(&env.plain.source, &failed_over_group, &setup.topic, &[40, 50, 60]);
    let (code, printed) =
        setup.command(&["failover", "--flow", &setup.flow, "--group", &failed_over_group, "--config"]);
    assert_eq!(code, Some(0), "{printed}");
    assert_eq!(
        committed(&env.plain.target, &failed_over_group, &target_topic, PARTITIONS),
        vec![Some(40), Some(50), Some(60)],
        "{printed}"
    );
    let secrets = setup.secrets();
    assert_no_secret("ferry failover", &printed, &secrets);
    for member in &members {
        assert!(owned(member).is_some());
        assert_no_secret("a member's stdout and stderr", &member.logs(), &secrets);
    }
}

/// An etcd client certificate that expired (signed by the CA etcd trusts): etcd refuses the handshake, and ferry
/// names etcd and the refusal in its log and on `/readyz` instead of starting without its checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_etcd_client_certificate_is_named_with_etcd() {
    let env = secure_env!();
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&env, dir.path(), "expired-etcd-cert");
    setup.etcd_identity = expired_certificate(&env, dir.path(), "expired-client");
    setup.feed(1, 10).await;
    let ferry = setup.start();

    let line = wait_log_line(&ferry, &["etcd", &env.etcd.endpoints, "Certificate"]).await;
    assert!(line.contains("ERROR"), "an error line: {line}");
    wait_not_ready_with(&ferry, &["etcd", &env.etcd.endpoints, "Certificate"]).await;
    let target_topic = format!("src.{}", setup.topic);
    assert!(end_offset(&env.plain.target, &target_topic, 0) <= 0, "replicated without its checkpoint store");
    assert_no_secret("ferry's stdout and stderr", &ferry.logs(), &setup.secrets());
}
