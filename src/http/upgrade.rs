//! `GET /ws`: checks the WebSocket handshake, picks the STOMP subprotocol,
//! answers 101 and hands the upgraded connection to a session.

use super::{error, HttpResponse};
use crate::admission;
use crate::broker::{AdmissionRefusal, Broker, SessionSlot};
use crate::server;
use crate::session::connection;
use crate::session::message_limit::MessageLimit;
use crate::session::relocation::{MovableSocket, Relocation, SetUpHere};
use crate::session::writer::Gated;
use bytes::{Buf, Bytes};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

/// STOMP subprotocols, best first.
const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

pub fn handle(
    broker: Arc<Broker>,
    peer: std::net::SocketAddr,
    request: Request<Incoming>,
) -> HttpResponse {
    if request.method() != Method::GET {
        return super::method_not_allowed("GET");
    }
    let headers = request.headers();
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade request (Upgrade: websocket)",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut response = error(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version; use 13",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return error(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    if let Err(refusal) = check_origin(&broker.config().allowed_origins, headers) {
        return error(StatusCode::FORBIDDEN, refusal);
    }
    let subprotocol = match choose_subprotocol(headers) {
        Ok(subprotocol) => subprotocol,
        Err(offered) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unsupported WebSocket subprotocol {offered:?}; offer v12.stomp, v11.stomp or v10.stomp"),
            )
        }
    };
    if let Err(wait) = broker.admit_handshake() {
        return too_many_handshakes(&broker, wait);
    }
    let slot = match broker.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(refusal) => {
            let status = match refusal {
                AdmissionRefusal::ShuttingDown | AdmissionRefusal::AtCapacity => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                AdmissionRefusal::TooManyFromIp { .. } => StatusCode::TOO_MANY_REQUESTS,
            };
            return error(status, refusal.to_string());
        }
    };

    let accept = derive_accept_key(key.as_bytes());
    let config = broker.config();
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer_bytes)
        // tungstenite writes only control frames (pongs, close): the writer
        // in `session::writer` writes everything else itself.
        .write_buffer_size(0)
        .max_message_size(Some(config.ws_max_message_bytes()))
        .max_frame_size(Some(config.ws_max_frame_bytes()));
    let before_connect_limit = config.ws_max_message_bytes_before_connect();
    let connection_id = broker.next_connection_id();
    let span = tracing::info_span!("session", id = connection_id, %peer);
    let on_upgrade = hyper::upgrade::on(request);
    let setup = Setup {
        slot,
        ws_config,
        before_connect_limit,
        connection_id,
    };
    // Served on the handshake runtime, the session is set up there and
    // then moves to the sessions' runtime (see `relocation`).
    let sessions = server::session_runtime();
    let (moves_to, served) = match sessions {
        Some(sessions) => (Some(sessions.handle), Some(sessions.served)),
        None => (None, None),
    };
    let session_broker = broker.clone();
    let session = async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "upgrade failed");
                return;
            }
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                // Shared: the fan-out may write into it directly (see `outbox`).
                let socket = Arc::new(parts.io.into_inner());
                let io = Rewound::new(parts.read_buf, socket.clone());
                run_session(session_broker, moves_to, |relocation| {
                    setup.serve(io, Some(socket), relocation)
                })
                .await
            }
            // Not a plain TCP connection: served as it is, without direct writes.
            Err(upgraded) => {
                let io = TokioIo::new(upgraded);
                run_session(session_broker, moves_to, |relocation| {
                    setup.serve(io, None, relocation)
                })
                .await
            }
        }
    }
    .instrument(span);
    // One task per connection, bounded by `max-connections` (the slot).
    match served {
        Some(served) => broker.spawn(served.track_future(session)),
        None => broker.spawn(session),
    }

    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(subprotocol) = subprotocol {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, subprotocol);
    }
    response
        .body(Full::default())
        .expect("static response parts are valid")
}

/// Runs a session, boxed: the task's future would otherwise be laid out for
/// the two kinds of session side by side (5.3 KB, against 320 B and a box
/// of the one that runs). With `moves_to`, the session is set up here and
/// its box then moves to that runtime, ending the task it was set up in.
async fn run_session<F>(
    broker: Arc<Broker>,
    moves_to: Option<Handle>,
    session: impl FnOnce(Option<Relocation>) -> F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    match moves_to {
        Some(sessions) => {
            SetUpHere::new(broker, sessions, |relocation| session(Some(relocation))).await
        }
        None => Box::pin(session(None)).await,
    }
}

/// What an upgraded connection's session starts with, besides its socket.
struct Setup {
    slot: SessionSlot,
    ws_config: WebSocketConfig,
    before_connect_limit: usize,
    connection_id: u64,
}

impl Setup {
    /// Runs the session over `io`; `direct` is its TCP socket, when it is one.
    async fn serve<S>(self, io: S, direct: Option<Arc<TcpStream>>, relocation: Option<Relocation>)
    where
        S: AsyncRead + AsyncWrite + MovableSocket + Unpin,
    {
        let ws = WebSocketStream::from_raw_socket(
            Gated::new(MessageLimit::new(io, self.before_connect_limit)),
            Role::Server,
            Some(self.ws_config),
        )
        .await;
        connection::serve(self.slot, ws, self.connection_id, direct, relocation).await;
    }
}

/// The upgraded socket, first giving back what hyper had read past the
/// handshake request (a client may send its CONNECT right behind it). The
/// socket is shared with the connection's outbox, for direct writes, so it
/// is read and written through `&TcpStream` (readiness, then `try_*`).
struct Rewound {
    /// `None` once given back: even empty, the `Bytes` would keep hyper's
    /// whole read buffer (about 8 KB) alive for as long as the session.
    already_read: Option<Bytes>,
    /// `None` only while it moves to another runtime, or if that failed.
    socket: Option<Arc<TcpStream>>,
}

impl Rewound {
    fn new(already_read: Bytes, socket: Arc<TcpStream>) -> Rewound {
        Rewound {
            already_read: (!already_read.is_empty()).then_some(already_read),
            socket: Some(socket),
        }
    }

    fn socket(&self) -> io::Result<&TcpStream> {
        self.socket
            .as_deref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the socket was not moved"))
    }
}

impl MovableSocket for Rewound {
    fn take_socket(&mut self) -> Option<Arc<TcpStream>> {
        self.socket.take()
    }

    fn put_socket(&mut self, socket: Arc<TcpStream>) {
        self.socket = Some(socket);
    }
}

/// Not a TCP socket of its own (see `handle`): it stays where it is.
impl MovableSocket for TokioIo<hyper::upgrade::Upgraded> {
    fn take_socket(&mut self) -> Option<Arc<TcpStream>> {
        None
    }

    fn put_socket(&mut self, _socket: Arc<TcpStream>) {}
}

impl AsyncRead for Rewound {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(already_read) = &mut self.already_read {
            let n = already_read.len().min(buf.remaining());
            buf.put_slice(&already_read[..n]);
            already_read.advance(n);
            if already_read.is_empty() {
                self.already_read = None;
            }
            return Poll::Ready(Ok(()));
        }
        let socket = self.socket()?;
        loop {
            ready!(socket.poll_read_ready(cx))?;
            // `try_read` clears the readiness when the socket would block.
            // (tungstenite's buffers come initialized: nothing is zeroed here.)
            match socket.try_read(buf.initialize_unfilled()) {
                Ok(read) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let socket = self.socket()?;
        loop {
            ready!(socket.poll_write_ready(cx))?;
            match socket.try_write(buf) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TCP sends as it is written (TCP_NODELAY): nothing to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = socket2::SockRef::from(self.socket()?);
        Poll::Ready(socket.shutdown(std::net::Shutdown::Write))
    }
}

/// 503 with `Retry-After`, counted: past `max-handshakes-per-second`.
/// (Browsers cannot read it; the example page's jittered backoff is what
/// spreads them.)
fn too_many_handshakes(broker: &Broker, wait: std::time::Duration) -> HttpResponse {
    broker.metrics().handshakes_refused.inc();
    let seconds = admission::retry_after_seconds(wait);
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("too many handshakes; try again in {seconds} s (max-handshakes-per-second)"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// Whether a comma-separated header contains `token` (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

/// The best STOMP subprotocol offered; `Ok(None)` when none was offered,
/// `Err(offered)` when only unknown ones were.
fn choose_subprotocol(headers: &HeaderMap) -> Result<Option<&'static str>, String> {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|protocol| !protocol.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(None);
    }
    SUBPROTOCOLS
        .iter()
        .find(|supported| {
            offered
                .iter()
                .any(|protocol| protocol.eq_ignore_ascii_case(supported))
        })
        .map(|supported| Some(*supported))
        .ok_or_else(|| offered.join(", "))
}

/// Cross-site WebSocket hijacking defence: a browser always sends `Origin`.
/// With no `allowed-origin`, only same-host origins (and non-browser clients,
/// which send none) are accepted; `*` accepts any.
fn check_origin(allowed: &[String], headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    if allowed
        .iter()
        .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
    {
        return Ok(());
    }
    if allowed.is_empty() {
        let host = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .unwrap_or_default();
        let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
        if !host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
            return Ok(());
        }
    }
    Err(format!(
        "origin {origin:?} is not allowed (see the allowed-origin setting)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    /// Stands for hyper's read buffer: says when it is freed.
    struct ReadBuffer(Vec<u8>, Arc<AtomicBool>);

    impl AsRef<[u8]> for ReadBuffer {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for ReadBuffer {
        fn drop(&mut self) {
            self.1.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn what_hyper_read_is_given_back_first_and_its_buffer_then_freed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (mut client, socket) = (client.unwrap(), accepted.unwrap().0);
        let freed = Arc::new(AtomicBool::new(false));
        // hyper's buffer holds more than the bytes past the handshake.
        let buffer = Bytes::from_owner(ReadBuffer(b"GET /ws ...CONNECT".to_vec(), freed.clone()));
        let mut rewound = Rewound::new(buffer.slice(11..), Arc::new(socket));
        drop(buffer);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"\n\n\0")
            .await
            .unwrap();
        let mut read = vec![0u8; 7];
        rewound.read_exact(&mut read[..4]).await.unwrap();
        assert!(!freed.load(Ordering::SeqCst), "still being given back");
        rewound.read_exact(&mut read[4..]).await.unwrap();
        assert_eq!(&read, b"CONNECT");
        assert!(
            freed.load(Ordering::SeqCst),
            "given back, the buffer must not live as long as the session"
        );
        let mut rest = [0u8; 3];
        rewound.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"\n\n\0", "then the socket's own bytes");
    }

    /// Stands for the handshake runtime's task: its `Arc`'s count says
    /// whether anything still holds a waker of it.
    struct SetUpTask;

    impl std::task::Wake for SetUpTask {
        fn wake(self: Arc<Self>) {}
    }

    /// Sends one STOMP frame as a text message; the broker's next text frame.
    async fn exchange(client: &mut WebSocketStream<TcpStream>, frame: &str) -> String {
        use futures_util::{SinkExt, StreamExt};
        let message = tokio_tungstenite::tungstenite::Message::text(frame);
        client.send(message).await.unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), client.next());
        match next.await.expect("a frame in time") {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => text.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// A session set up under `SetUpHere` (its task's waker is ours here)
    /// moves once its SUBSCRIBE is answered. From then on nothing may hold
    /// the old task's waker: a waker keeps the task's memory (512 bytes on
    /// the handshake runtime) allocated for as long as the connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn once_moved_a_session_holds_no_waker_of_the_task_it_was_set_up_in() {
        use std::future::Future;
        let broker = Arc::new(Broker::new(crate::config::Config::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (client, (socket, peer)) = (client.unwrap(), accepted.unwrap());
        let socket = Arc::new(socket);
        let setup = Setup {
            slot: broker.admit(peer.ip()).unwrap(),
            ws_config: WebSocketConfig::default().write_buffer_size(0),
            before_connect_limit: 4096,
            connection_id: 1,
        };
        let io = Rewound::new(Bytes::new(), socket.clone());
        let mut set_up_here = Box::pin(SetUpHere::new(
            broker.clone(),
            tokio::runtime::Handle::current(),
            |relocation| setup.serve(io, Some(socket), Some(relocation)),
        ));

        let reader = tokio::spawn(async move {
            let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
            let connected = exchange(&mut client, "CONNECT\naccept-version:1.2\nhost:h\n\n\0");
            assert!(connected.await.starts_with("CONNECTED"));
            let subscribe = "SUBSCRIBE\nid:0\ndestination:/topic/t\nreceipt:r\n\n\0";
            let receipt = exchange(&mut client, subscribe).await;
            assert!(receipt.starts_with("RECEIPT\nreceipt-id:r\n"));
            client
        });
        let set_up_task = Arc::new(SetUpTask);
        let waker = std::task::Waker::from(set_up_task.clone());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while set_up_here
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the session never moved"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drop((set_up_here, waker));
        let mut client = reader.await.unwrap();

        // An idle reader: nothing is written to it after the move, and what
        // it was set up with must let go of the old task all the same.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while Arc::strong_count(&set_up_task) > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(
            Arc::strong_count(&set_up_task) - 1,
            0,
            "wakers of the set-up task still held by the moved session"
        );
        // And the moved session runs: it answers.
        let receipt = exchange(&mut client, "UNSUBSCRIBE\nid:0\nreceipt:u\n\n\0").await;
        assert!(receipt.starts_with("RECEIPT\nreceipt-id:u\n"));
    }
}
