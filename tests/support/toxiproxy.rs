//! A Toxiproxy server of a test's own: TCP proxies on loopback that a test puts between ferry and a cluster or etcd,
//! and the network faults ("toxics") it switches on and off through the server's HTTP API.
//!
//! The server binary comes from `FERRY_TOXIPROXY_SERVER`, else from `scripts/install-toxiproxy` (on PATH, else built
//! once from its Go module and cached; `scripts/install-deps` builds it). Each test starts its own server, so tests
//! in parallel never share a proxy; the server is killed when dropped, which drops every connection through it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The toxiproxy-server binary. Panics with instructions when there is none.
pub fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("FERRY_TOXIPROXY_SERVER") {
            return PathBuf::from(path);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-toxiproxy");
        let out = Command::new(&script).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success() && !path.is_empty() && Path::new(&path).is_file(),
            "the network-fault tests need toxiproxy-server and scripts/install-toxiproxy could not provide it ({}).\n\
             Put toxiproxy-server on PATH, or install Go and run scripts/install-toxiproxy (it builds it from its Go \
             module and caches it), or set FERRY_TOXIPROXY_SERVER=/path/to/toxiproxy-server.\n\
             stderr of scripts/install-toxiproxy:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(path)
    })
}

/// A running toxiproxy-server on a loopback port; killed when dropped.
pub struct Toxiproxy {
    child: Child,
    api: String,
}

impl Toxiproxy {
    /// Starts a server on a free loopback port and waits until its API answers.
    pub fn start() -> Toxiproxy {
        // The port is free when picked but may be taken before the server binds it: then try another.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let child = Command::new(server_binary())
                .args(["-host", "127.0.0.1", "-port", &port.to_string()])
                // Every connection is logged at info; a test only needs to hear about trouble.
                .env("LOG_LEVEL", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", server_binary().display()));
            let mut server = Toxiproxy { child, api: format!("http://127.0.0.1:{port}") };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if server.child.try_wait().unwrap().is_some() {
                    break;
                }
                if ureq::get(&format!("{}/version", server.api)).timeout(Duration::from_secs(2)).call().is_ok() {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("toxiproxy-server ({}) did not start", server_binary().display());
    }

    /// A new proxy `name` on a free loopback port (chosen by the server, so no other process can take it first)
    /// forwarding every connection to `upstream` (`host:port`; it need not be listening yet).
    pub fn proxy(&self, name: &str, upstream: &str) -> Proxy {
        let body = serde_json::json!({ "name": name, "listen": "127.0.0.1:0", "upstream": upstream, "enabled": true });
        let created =
            self.call("POST", "/proxies", Some(body)).unwrap_or_else(|e| panic!("creating proxy {name}: {e}"));
        let listen = created["listen"].as_str().expect("the created proxy's listen address").to_owned();
        Proxy { api: self.api.clone(), name: name.to_owned(), listen }
    }

    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<serde_json::Value, String> {
        call(&self.api, method, path, body)
    }
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One proxy of a [`Toxiproxy`] server.
pub struct Proxy {
    api: String,
    name: String,
    listen: String,
}

/// Which way a toxic acts: on data to the upstream server, or on data back to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Upstream,
    Downstream,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Upstream => "upstream",
            Stream::Downstream => "downstream",
        }
    }
}

/// A network fault, with Toxiproxy's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toxic {
    /// Delays data by `ms` milliseconds.
    Latency { ms: u64 },
    /// Limits the rate to `kilobytes_per_second`.
    Bandwidth { kilobytes_per_second: u64 },
    /// Holds connections open and drops every byte until removed (`timeout` 0); removing it closes them.
    Stall,
    /// Resets connections (TCP RST) as soon as data arrives on them, `after_ms` later.
    ResetPeer { after_ms: u64 },
}

impl Toxic {
    fn kind_and_attributes(self) -> (&'static str, serde_json::Value) {
        match self {
            Toxic::Latency { ms } => ("latency", serde_json::json!({ "latency": ms, "jitter": 0 })),
            Toxic::Bandwidth { kilobytes_per_second } => {
                ("bandwidth", serde_json::json!({ "rate": kilobytes_per_second }))
            }
            Toxic::Stall => ("timeout", serde_json::json!({ "timeout": 0 })),
            Toxic::ResetPeer { after_ms } => ("reset_peer", serde_json::json!({ "timeout": after_ms })),
        }
    }
}

impl Proxy {
    /// The address clients connect to instead of the upstream: `127.0.0.1:<port>`.
    pub fn address(&self) -> &str {
        &self.listen
    }

    /// Adds `toxic` under `name` on `stream`, for new and existing connections alike.
    pub fn add(&self, name: &str, toxic: Toxic, stream: Stream) {
        let (kind, attributes) = toxic.kind_and_attributes();
        let body = serde_json::json!({
            "name": name, "type": kind, "stream": stream.as_str(), "toxicity": 1.0, "attributes": attributes,
        });
        call(&self.api, "POST", &format!("/proxies/{}/toxics", self.name), Some(body))
            .unwrap_or_else(|e| panic!("adding toxic {name} ({toxic:?}) to proxy {}: {e}", self.name));
    }

    /// Adds `toxic` on both streams, as `<name>-up` and `<name>-down`.
    pub fn add_both_ways(&self, name: &str, toxic: Toxic) {
        self.add(&format!("{name}-up"), toxic, Stream::Upstream);
        self.add(&format!("{name}-down"), toxic, Stream::Downstream);
    }

    /// Removes the toxic `name`.
    pub fn remove(&self, name: &str) {
        call(&self.api, "DELETE", &format!("/proxies/{}/toxics/{name}", self.name), None)
            .unwrap_or_else(|e| panic!("removing toxic {name} from proxy {}: {e}", self.name));
    }

    /// Removes the toxics [`Proxy::add_both_ways`] added.
    pub fn remove_both_ways(&self, name: &str) {
        self.remove(&format!("{name}-up"));
        self.remove(&format!("{name}-down"));
    }

    /// Disabled, the proxy closes its connections and refuses new ones (an outage); enabled, it listens again on the
    /// same port.
    pub fn set_enabled(&self, enabled: bool) {
        call(&self.api, "PATCH", &format!("/proxies/{}", self.name), Some(serde_json::json!({ "enabled": enabled })))
            .unwrap_or_else(|e| panic!("setting proxy {} enabled={enabled}: {e}", self.name));
    }
}

/// One API request; the JSON answer (`null` for an empty one), or what went wrong.
fn call(api: &str, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<serde_json::Value, String> {
    let request = ureq::request(method, &format!("{api}{path}")).timeout(Duration::from_secs(10));
    let response = match body {
        Some(body) => request.set("Content-Type", "application/json").send_string(&body.to_string()),
        None => request.call(),
    };
    match response {
        Ok(response) => {
            let text = response.into_string().map_err(|e| e.to_string())?;
            if text.trim().is_empty() {
                Ok(serde_json::Value::Null)
            } else {
                serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
            }
        }
        Err(ureq::Error::Status(code, response)) => {
            Err(format!("HTTP {code}: {}", response.into_string().unwrap_or_default()))
        }
        Err(error) => Err(error.to_string()),
    }
}
