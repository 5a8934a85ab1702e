//! A single-node Kafka cluster of a test's own that ferry reaches only through a Toxiproxy proxy, while the test's
//! own clients reach it directly.
//!
//! Clients bootstrap once and then connect to the addresses the broker advertises for the listener they came in
//! on, so the broker has two client listeners: PLAINTEXT (direct, advertised as itself: the test's producers and
//! readers, the broker's own inter-broker traffic and `scripts/kafka-node`'s readiness check) and PROXIED (the
//! proxy's upstream, advertised as the proxy's address: ferry). A fault on the proxy then hits ferry alone: the
//! test keeps feeding and reading the cluster while ferry is cut off.

use std::process::Command;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::common::{free_port, repo_root, TestEnv};
use crate::toxiproxy::{Proxy, Toxiproxy};

/// A running single-node cluster behind `proxy`; stopped when dropped.
pub struct KafkaBehindProxy {
    dir: tempfile::TempDir,
    lib: String,
    direct_port: u16,
    pub proxy: Proxy,
}

impl KafkaBehindProxy {
    /// Starts a node and a proxy `name` on `toxiproxy` in front of its PROXIED listener, and checks that each
    /// listener advertises the address it should.
    pub fn start(env: &TestEnv, toxiproxy: &Toxiproxy, name: &str) -> Self {
        let (direct_port, controller_port, proxied_port) = (free_port(), free_port(), free_port());
        let proxy = toxiproxy.proxy(name, &format!("127.0.0.1:{proxied_port}"));
        // scripts/kafka-node writes its own listener lines first; these later keys win.
        let properties = format!(
            "listeners=PLAINTEXT://127.0.0.1:{direct_port},CONTROLLER://127.0.0.1:{controller_port},\
             PROXIED://127.0.0.1:{proxied_port}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{direct_port},CONTROLLER://127.0.0.1:{controller_port},\
             PROXIED://{proxy}\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT",
            proxy = proxy.address(),
        );
        let node =
            KafkaBehindProxy { dir: tempfile::tempdir().unwrap(), lib: env.kafka_lib.clone(), direct_port, proxy };
        let status = Command::new(repo_root().join("scripts/kafka-node"))
            .arg("start")
            .arg(node.dir.path())
            .args([direct_port.to_string(), controller_port.to_string()])
            .env("FERRY_KAFKA_LIB", &node.lib)
            .env("KAFKA_NODE_PROPERTIES", properties)
            .status()
            .unwrap();
        assert!(status.success(), "kafka-node start behind proxy {name} failed");
        assert_eq!(advertised(&node.direct()), vec![node.direct()], "the direct listener's advertised address");
        assert_eq!(advertised(node.via_proxy()), vec![node.via_proxy().to_owned()], "the proxied listener's address");
        node
    }

    /// The bootstrap address of the test's own clients: straight to the broker.
    pub fn direct(&self) -> String {
        format!("127.0.0.1:{}", self.direct_port)
    }

    /// The bootstrap address for ferry: the proxy, which the broker also advertises to clients that come through it.
    pub fn via_proxy(&self) -> &str {
        self.proxy.address()
    }
}

impl Drop for KafkaBehindProxy {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/kafka-node"))
            .arg("stop")
            .arg(self.dir.path())
            .arg("--kill")
            .env("FERRY_KAFKA_LIB", &self.lib)
            .status();
    }
}

/// The broker addresses a client bootstrapped at `bootstrap` is told to use.
fn advertised(bootstrap: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let metadata = consumer.fetch_metadata(None, std::time::Duration::from_secs(30)).unwrap();
    metadata.brokers().iter().map(|broker| format!("{}:{}", broker.host(), broker.port())).collect()
}
