//! One TCP connection to one broker: requests written in order, responses read in the same order by a reader task
//! of its own, so a caller may keep several requests in flight and wait for the next response in a `select!`.
//!
//! Invariant: responses are matched to requests by correlation id and in order (Kafka answers a connection's
//! requests in the order they arrived); anything else closes the connection with an error.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::WireError;

/// How long to wait for a TCP connection to a broker.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response frame accepted: a fetch response is bounded by the request's `max_bytes` plus overhead.
const MAX_FRAME: usize = 256 << 20;

/// A request sent and not yet answered.
#[derive(Debug)]
struct Outstanding {
    correlation_id: i32,
    api_key: i16,
    version: i16,
    sent_at: Instant,
}

/// A connection to one broker.
#[derive(Debug)]
pub struct Connection {
    broker: String,
    client_id: StrBytes,
    writer: OwnedWriteHalf,
    frames: mpsc::Receiver<std::io::Result<Bytes>>,
    reader: JoinHandle<()>,
    next_correlation_id: i32,
    outstanding: VecDeque<Outstanding>,
    /// Reused to build each request frame.
    frame: BytesMut,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Connection {
    /// Connects to `broker` (`host:port`).
    pub async fn open(broker: &str, client_id: &str) -> Result<Self, WireError> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(broker)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(WireError::Io { broker: broker.to_owned(), source }),
            Err(_) => {
                return Err(WireError::Io {
                    broker: broker.to_owned(),
                    source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
                })
            }
        };
        stream.set_nodelay(true).map_err(|source| WireError::Io { broker: broker.to_owned(), source })?;
        let (mut read, writer) = stream.into_split();
        // A few responses of read-ahead: a caller that stops reading stops the socket, not memory.
        let (frames_tx, frames) = mpsc::channel(8);
        let reader = tokio::spawn(async move {
            loop {
                let frame = async {
                    let length = read.read_u32().await? as usize;
                    if length > MAX_FRAME {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("response frame of {length} bytes is larger than the {MAX_FRAME} accepted"),
                        ));
                    }
                    // Not zeroed first: the socket fills it.
                    let mut body = BytesMut::with_capacity(length);
                    let mut frame = (&mut read).take(length as u64);
                    while body.len() < length {
                        if frame.read_buf(&mut body).await? == 0 {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                    }
                    Ok(body.freeze())
                }
                .await;
                let failed = frame.is_err();
                if frames_tx.send(frame).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Connection {
            broker: broker.to_owned(),
            client_id: StrBytes::from_string(client_id.to_owned()),
            writer,
            frames,
            reader,
            next_correlation_id: 0,
            outstanding: VecDeque::new(),
            frame: BytesMut::new(),
        })
    }

    /// The broker's `host:port`.
    pub fn broker(&self) -> &str {
        &self.broker
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.outstanding.len()
    }

    /// When the oldest unanswered request was sent.
    pub fn oldest_sent_at(&self) -> Option<Instant> {
        self.outstanding.front().map(|outstanding| outstanding.sent_at)
    }

    /// Writes `request` at `version`; its response is read later, in order, with [`Connection::receive`].
    pub async fn send<R: Request>(&mut self, request: &R, version: i16) -> Result<(), WireError> {
        let correlation_id = self.encode(request, version, 0)?;
        self.writer
            .write_all(&self.frame)
            .await
            .map_err(|source| WireError::Io { broker: self.broker.clone(), source })?;
        self.sent::<R>(correlation_id, version);
        Ok(())
    }

    /// Writes a request whose encoding ends with a null `bytes` field (a produce request of one partition whose
    /// `records` is `None`, at a version without tagged fields), with `head` and then `tail` as that field's value:
    /// a batch goes out without being copied into the request.
    pub async fn send_with_records<R: Request>(
        &mut self,
        request: &R,
        version: i16,
        head: &[u8],
        tail: &Bytes,
    ) -> Result<(), WireError> {
        let records = head.len() + tail.len();
        let correlation_id = self.encode(request, version, records)?;
        let end = self.frame.len();
        if end < 8 || self.frame[end - 4..] != [0xff; 4] {
            return Err(self.protocol("the request does not end with a null records field".to_owned()));
        }
        let length = i32::try_from(records).map_err(|_| self.protocol("records too large".to_owned()))?;
        self.frame[end - 4..].copy_from_slice(&length.to_be_bytes());
        self.frame.put_slice(head);
        let mut frame = Buf::chain(&self.frame[..], &tail[..]);
        self.writer
            .write_all_buf(&mut frame)
            .await
            .map_err(|source| WireError::Io { broker: self.broker.clone(), source })?;
        self.sent::<R>(correlation_id, version);
        Ok(())
    }

    /// Encodes the frame of `request` into `self.frame`, its length counting `extra` bytes written after it.
    fn encode<R: Request>(&mut self, request: &R, version: i16, extra: usize) -> Result<i32, WireError> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(self.client_id.clone());
        self.frame.clear();
        self.frame.put_u32(0);
        let encoded = header
            .encode(&mut self.frame, R::header_version(version))
            .and_then(|()| request.encode(&mut self.frame, version));
        if let Err(error) = encoded {
            return Err(self.protocol(format!("cannot encode request (api key {}): {error}", R::KEY)));
        }
        let length =
            u32::try_from(self.frame.len() - 4 + extra).map_err(|_| self.protocol("request too large".to_owned()))?;
        self.frame[..4].copy_from_slice(&length.to_be_bytes());
        Ok(correlation_id)
    }

    fn sent<R: Request>(&mut self, correlation_id: i32, version: i16) {
        self.outstanding.push_back(Outstanding { correlation_id, api_key: R::KEY, version, sent_at: Instant::now() });
    }

    /// The response to the oldest unanswered request, which must be an `R`. Cancel-safe: a response is only taken
    /// when this returns.
    pub async fn receive<R: Request>(&mut self) -> Result<R::Response, WireError> {
        let Some(expected) = self.outstanding.front() else {
            return Err(self.protocol("no request is waiting for a response".to_owned()));
        };
        if expected.api_key != R::KEY {
            return Err(self.protocol(format!(
                "the next response answers api key {}, not {} as the caller expects",
                expected.api_key,
                R::KEY
            )));
        }
        let frame = match self.frames.recv().await {
            Some(Ok(frame)) => frame,
            Some(Err(source)) => return Err(WireError::Io { broker: self.broker.clone(), source }),
            None => {
                return Err(WireError::Io {
                    broker: self.broker.clone(),
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                })
            }
        };
        let expected = self.outstanding.pop_front().expect("checked above");
        let mut frame = frame;
        let header_version = <R::Response as HeaderVersion>::header_version(expected.version);
        let header = ResponseHeader::decode(&mut frame, header_version)
            .map_err(|error| self.protocol(format!("cannot decode a response header: {error}")))?;
        if header.correlation_id != expected.correlation_id {
            return Err(self.protocol(format!(
                "response with correlation id {} where {} was expected",
                header.correlation_id, expected.correlation_id
            )));
        }
        let response = R::Response::decode(&mut frame, expected.version)
            .map_err(|error| self.protocol(format!("cannot decode a response (api key {}): {error}", R::KEY)))?;
        if frame.has_remaining() {
            return Err(self.protocol(format!("{} bytes left after a response (api key {})", frame.len(), R::KEY)));
        }
        Ok(response)
    }

    /// Sends `request` and waits for its response; only with nothing else in flight.
    pub async fn call<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response, WireError> {
        self.send(request, version).await?;
        self.receive::<R>().await
    }

    fn protocol(&self, detail: String) -> WireError {
        WireError::Protocol { broker: self.broker.clone(), detail }
    }
}
