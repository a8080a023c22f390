//! Opening one STOMP-over-WebSocket connection: TCP from a spread loopback
//! source address, the WebSocket handshake offering v12/v11/v10.stomp,
//! CONNECT, and optionally a SUBSCRIBE confirmed by a RECEIPT.

use crate::frames::{self, Credentials, Inbox, Incoming};
use crate::target::{source_ip, Target};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stompede_protocol::Command;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Per-connection read buffer. tungstenite's default is 128 KiB and stays
/// resident; a few KiB is plenty for small frames and keeps 19k sockets cheap.
pub const READ_BUFFER_BYTES: usize = 4 * 1024;

/// The setup stages a timeout can hit, in order.
const STAGES: [&str; 3] = ["tcp connect", "websocket handshake", "CONNECTED"];

/// Everything needed to open connections; shared by all of a worker's tasks.
#[derive(Debug)]
pub struct Dialer {
    /// The nodes (one or more `--url`s): connection `index` goes to
    /// `targets[index % len]`, so connections are dealt over them in turn.
    pub targets: Vec<Target>,
    pub timeout: Duration,
    connect_frame: Bytes,
}

/// Why a connection could not be set up. `cause()` is the key the reports
/// group failures by.
#[derive(Debug)]
pub enum SetupError {
    Tcp(std::io::Error),
    Handshake(String),
    StompError(String),
    Closed,
    Decode(String),
    Timeout(&'static str),
}

impl SetupError {
    pub fn cause(&self) -> String {
        match self {
            SetupError::Tcp(e) => match e.raw_os_error() {
                Some(libc::ECONNREFUSED) => "tcp: connection refused".into(),
                Some(libc::ECONNRESET) => "tcp: connection reset".into(),
                Some(libc::EADDRNOTAVAIL) => "tcp: no source address/port left".into(),
                Some(libc::EMFILE) => "tcp: too many open files".into(),
                _ => format!("tcp: {e}"),
            },
            SetupError::Handshake(e) => format!("websocket handshake: {}", truncate(e)),
            SetupError::StompError(m) => format!("STOMP ERROR: {}", truncate(m)),
            SetupError::Closed => "closed by broker during setup".into(),
            SetupError::Decode(e) => format!("bad frame: {}", truncate(e)),
            SetupError::Timeout(stage) => format!("timeout waiting for {stage}"),
        }
    }
}

fn truncate(s: &str) -> &str {
    let end = s.char_indices().nth(80).map(|(i, _)| i).unwrap_or(s.len());
    &s[..end]
}

/// An open, CONNECTed session.
pub struct Session {
    pub ws: Ws,
    pub inbox: Inbox,
}

impl Dialer {
    /// A dialer for `targets` (at least one).
    pub fn new(targets: Vec<Target>, creds: Credentials, timeout: Duration) -> Arc<Dialer> {
        assert!(!targets.is_empty(), "a dialer needs a target");
        let connect_frame = frames::connect_frame(&creds);
        Arc::new(Dialer {
            targets,
            timeout,
            connect_frame,
        })
    }

    /// Which of the targets connection `index` goes to.
    pub fn node_of(&self, index: u64) -> usize {
        node_of(index, self.targets.len())
    }

    /// Opens connection number `index` of the run (the index picks the
    /// source address and the node) and CONNECTs. Bounded by the dialer's
    /// timeout.
    pub async fn open(&self, index: u64) -> Result<Session, SetupError> {
        self.open_on(self.node_of(index), index).await
    }

    /// Like `open`, to `targets[node]` whatever the index.
    pub async fn open_on(&self, node: usize, index: u64) -> Result<Session, SetupError> {
        let stage = AtomicUsize::new(0);
        let target = &self.targets[node % self.targets.len()];
        match tokio::time::timeout(self.timeout, self.open_inner(target, index, &stage)).await {
            Ok(r) => r,
            Err(_) => Err(SetupError::Timeout(STAGES[stage.load(Ordering::Relaxed)])),
        }
    }

    async fn open_inner(
        &self,
        target: &Target,
        index: u64,
        stage: &AtomicUsize,
    ) -> Result<Session, SetupError> {
        let stream = tcp_connect(target.addr, index)
            .await
            .map_err(SetupError::Tcp)?;
        stage.store(1, Ordering::Relaxed);
        let mut req = target
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| SetupError::Handshake(e.to_string()))?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "v12.stomp, v11.stomp, v10.stomp"
                .parse()
                .expect("static header value"),
        );
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        let (mut ws, _resp) =
            tokio_tungstenite::client_async_with_config(req, stream, Some(config))
                .await
                .map_err(|e| SetupError::Handshake(e.to_string()))?;
        stage.store(2, Ordering::Relaxed);
        ws.send(Message::Binary(self.connect_frame.clone()))
            .await
            .map_err(|e| SetupError::Handshake(e.to_string()))?;
        let mut session = Session {
            ws,
            inbox: Inbox::default(),
        };
        let frame = session.next_control().await?;
        match frame.command {
            Command::Connected => Ok(session),
            Command::Error => Err(SetupError::StompError(error_text(&frame))),
            other => Err(SetupError::Decode(format!(
                "expected CONNECTED, got {other}"
            ))),
        }
    }

    /// Opens, CONNECTs and SUBSCRIBEs to `destination`, waiting for the
    /// RECEIPT so the subscription is known to be in place.
    pub async fn open_subscribed(
        &self,
        index: u64,
        destination: &str,
    ) -> Result<Session, SetupError> {
        let fut = async {
            let mut s = self.open(index).await?;
            s.subscribe(index, destination).await?;
            Ok(s)
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(SetupError::Timeout("setup")),
        }
    }
}

impl Session {
    /// Sends SUBSCRIBE with a receipt and waits for it.
    pub async fn subscribe(&mut self, id: u64, destination: &str) -> Result<(), SetupError> {
        let receipt = format!("sub-{id}");
        let frame = frames::subscribe_frame(id, destination, Some(&receipt));
        self.ws
            .send(Message::Binary(frame))
            .await
            .map_err(|e| SetupError::Handshake(e.to_string()))?;
        loop {
            let f = self.next_control().await?;
            match f.command {
                Command::Receipt if f.headers.get("receipt-id") == Some(receipt.as_str()) => {
                    return Ok(())
                }
                Command::Error => return Err(SetupError::StompError(error_text(&f))),
                _ => {}
            }
        }
    }

    /// Sends DISCONNECT with a receipt, waits for it (messages in between
    /// are dropped), then closes the WebSocket. `Ok(true)`: the RECEIPT
    /// came; `Ok(false)`: the broker closed without one.
    pub async fn disconnect(mut self, timeout: Duration) -> Result<bool, SetupError> {
        let fut = async {
            self.ws
                .send(Message::Binary(frames::disconnect_frame("bye")))
                .await
                .map_err(|e| SetupError::Handshake(e.to_string()))?;
            let receipt = loop {
                match self.next_control().await {
                    Ok(f) if f.command == Command::Receipt => break true,
                    Ok(f) if f.command == Command::Error => {
                        return Err(SetupError::StompError(error_text(&f)))
                    }
                    Ok(_) => {}
                    Err(SetupError::Closed) => break false,
                    Err(e) => return Err(e),
                }
            };
            let _ = self.ws.close(None).await;
            Ok(receipt)
        };
        tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or(Err(SetupError::Timeout("DISCONNECT receipt")))
    }

    /// The next non-MESSAGE frame.
    async fn next_control(&mut self) -> Result<stompede_protocol::Frame, SetupError> {
        loop {
            match self
                .inbox
                .next()
                .map_err(|e| SetupError::Decode(e.to_string()))?
            {
                Some(Incoming::Other(f)) => return Ok(f),
                Some(Incoming::Message(_)) => continue,
                None => {}
            }
            match self.ws.next().await {
                Some(Ok(Message::Binary(b))) => self.inbox.push(&b),
                Some(Ok(Message::Text(t))) => self.inbox.push(t.as_bytes()),
                Some(Ok(Message::Close(_))) | None => return Err(SetupError::Closed),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(SetupError::Handshake(e.to_string())),
            }
        }
    }
}

pub fn error_text(f: &stompede_protocol::Frame) -> String {
    let m = f.headers.get("message").unwrap_or("").to_string();
    if m.is_empty() {
        String::from_utf8_lossy(&f.body).into_owned()
    } else {
        m
    }
}

/// Which of `nodes` targets connection `index` goes to: round-robin.
pub fn node_of(index: u64, nodes: usize) -> usize {
    (index % nodes.max(1) as u64) as usize
}

/// TCP connect from a loopback source address picked by `index`.
pub async fn tcp_connect(addr: SocketAddr, index: u64) -> std::io::Result<TcpStream> {
    let stream = if addr.is_ipv4() {
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(source_ip(index), 0))?;
        sock.connect(addr).await?
    } else {
        TcpSocket::new_v6()?.connect(addr).await?
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    #[test]
    fn connections_are_dealt_over_the_nodes_in_turn() {
        let nodes: Vec<usize> = (0..6).map(|i| super::node_of(i, 3)).collect();
        assert_eq!(nodes, [0, 1, 2, 0, 1, 2]);
        assert_eq!(super::node_of(7, 1), 0);
    }
}
