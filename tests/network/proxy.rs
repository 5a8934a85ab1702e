//! The Toxiproxy helper itself, against an echo server: each toxic does what the Kafka and etcd tests rely on.
//! Needs no dev env, only toxiproxy-server.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::toxiproxy::{Stream, Toxic, Toxiproxy};

/// An echo server on a free loopback port, serving each connection on a thread of its own until the test ends.
fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            let Ok(mut connection) = connection else { return };
            std::thread::spawn(move || {
                let mut buffer = [0u8; 16 * 1024];
                while let Ok(read @ 1..) = connection.read(&mut buffer) {
                    if connection.write_all(&buffer[..read]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

fn connect(address: &str) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// Sends `message` and reads its echo; how long the round trip took.
fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Duration> {
    let started = Instant::now();
    stream.write_all(message)?;
    let mut echo = vec![0u8; message.len()];
    stream.read_exact(&mut echo)?;
    assert_eq!(echo, message);
    Ok(started.elapsed())
}

#[test]
fn the_helper_adds_latency_limits_bandwidth_stalls_resets_and_disables() {
    let toxiproxy = Toxiproxy::start();
    let proxy = toxiproxy.proxy("echo", &echo_server());
    let mut stream = connect(proxy.address());
    let direct = round_trip(&mut stream, b"ping").unwrap();
    assert!(direct < Duration::from_millis(200), "without toxics: {direct:?}");

    proxy.add("latency", Toxic::Latency { ms: 300 }, Stream::Downstream);
    let delayed = round_trip(&mut stream, b"ping").unwrap();
    assert!(delayed >= Duration::from_millis(300), "with 300 ms latency, existing connection: {delayed:?}");
    proxy.remove("latency");

    proxy.add("slow", Toxic::Bandwidth { kilobytes_per_second: 64 }, Stream::Downstream);
    let limited = round_trip(&mut stream, &[7u8; 64 * 1024]).unwrap();
    assert!(limited >= Duration::from_millis(800), "64 KiB at 64 KB/s: {limited:?}");
    proxy.remove("slow");

    proxy.add_both_ways("stall", Toxic::Stall);
    stream.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    let error = round_trip(&mut stream, b"ping").unwrap_err();
    assert!(matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "stalled: {error:?}");
    proxy.remove_both_ways("stall");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    // Removing the stall closes the connection (Toxiproxy's cleanup), rather than leaving a gap in a live stream.
    if let Err(error) = stream.read_to_end(&mut rest) {
        assert!(!matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "still open: {error:?}");
    }
    assert!(rest.is_empty(), "nothing of the stalled data got through: {rest:?}");

    proxy.add_both_ways("reset", Toxic::ResetPeer { after_ms: 0 });
    let mut stream = connect(proxy.address());
    let error = round_trip(&mut stream, b"ping").unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe),
        "reset: {error:?}"
    );
    proxy.remove_both_ways("reset");
    round_trip(&mut connect(proxy.address()), b"ping").expect("a new connection works once the resets stop");

    proxy.set_enabled(false);
    let refused = TcpStream::connect(proxy.address()).map(|_| ()).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "disabled proxy");
    proxy.set_enabled(true);
    round_trip(&mut connect(proxy.address()), b"ping").expect("enabled again on the same port");
}
