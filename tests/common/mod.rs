//! A broker started in-process on 127.0.0.1:0, a real WebSocket client and a
//! plain HTTP/1.1 client, for the integration tests.
#![allow(dead_code)]

pub mod history;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stompede::{Broker, Config};
use stompede_protocol::{Decoder, Frame, Item, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(5);

pub struct TestBroker {
    pub addr: SocketAddr,
    pub broker: Arc<Broker>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// This process's resident memory, from /proc/self/status.
pub fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

pub fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    }
}

pub async fn start(config: Config) -> TestBroker {
    let listener = stompede::bind(config.listen).expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    let broker = Arc::new(Broker::new(config));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(stompede::serve(broker.clone(), listener, async move {
        let _ = stopped.await;
    }));
    TestBroker {
        addr,
        broker,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestBroker {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Starts shutting down; returns when `run` has returned.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("broker stops")
                .unwrap();
        }
    }

    pub async fn client(&self) -> Client {
        Client::open(&self.ws_url(), &["v12.stomp", "v11.stomp", "v10.stomp"])
            .await
            .expect("websocket opens")
    }

    /// A client that has sent CONNECT (STOMP 1.2) and read CONNECTED.
    pub async fn connected(&self) -> Client {
        let mut client = self.client().await;
        client
            .send("CONNECT\naccept-version:1.2\nhost:localhost\n\n\0")
            .await;
        let connected = client.frame().await;
        assert_eq!(
            connected.command,
            stompede_protocol::Command::Connected,
            "{connected:?}"
        );
        client
    }

    pub async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        http(self.addr, method, path, body, &[]).await
    }

    pub async fn publish(&self, destination: &str, body: &str) -> serde_json::Value {
        let request = serde_json::json!({ "destination": destination, "body": body }).to_string();
        let (status, response) = self.http("POST", "/api/v1/publish", Some(&request)).await;
        assert_eq!(status, 202, "{response}");
        response
    }

    /// Publishes through the broker itself (no HTTP), as the API does.
    pub async fn publish_direct(
        &self,
        destination: &str,
        headers: &stompede_protocol::Headers,
        body: bytes::Bytes,
    ) {
        let message =
            self.broker
                .publication(vec![destination.into()], headers.clone(), body, None);
        self.broker
            .publish(&message)
            .await
            .expect("the memory engine takes every publish");
    }

    /// Waits until `destination` has `count` subscribers.
    pub async fn wait_for_subscribers(&self, destination: &str, count: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.broker.subscriber_count(destination) != count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{destination} never reached {count} subscribers"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The subprotocol the server chose.
    pub subprotocol: Option<String>,
    buffer: BytesMut,
    decoder: Decoder,
    /// How long `message` waits (PATIENCE unless `with_patience` says otherwise).
    patience: Duration,
    /// Frames read ahead and put back: `next_frame` returns these first.
    pub unread: std::collections::VecDeque<Frame>,
}

impl Client {
    /// Waits up to `patience` for each message instead of PATIENCE (for
    /// tests whose frames cross several processes, such as a Redis).
    pub fn with_patience(mut self, patience: Duration) -> Client {
        self.patience = patience;
        self
    }

    pub async fn open(
        url: &str,
        subprotocols: &[&str],
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request()?;
        if !subprotocols.is_empty() {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&subprotocols.join(", ")).unwrap(),
            );
        }
        let (ws, response) = tokio_tungstenite::connect_async(request).await?;
        let subprotocol = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|value| value.to_str().unwrap().to_owned());
        let limits = Limits {
            max_body_bytes: 64 << 20,
            max_frame_bytes: 65 << 20,
            ..Limits::default()
        };
        Ok(Client {
            ws,
            subprotocol,
            buffer: BytesMut::new(),
            decoder: Decoder::new(limits),
            patience: PATIENCE,
            unread: Default::default(),
        })
    }

    /// Sends one text WebSocket message.
    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// The next WebSocket message, as received (None when closed).
    pub async fn message(&mut self) -> Option<Message> {
        match tokio::time::timeout(self.patience, self.ws.next())
            .await
            .expect("a message within the patience time")
        {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => None,
            Some(Ok(message)) => Some(message),
        }
    }

    /// The next data message's bytes, skipping heart-beats.
    pub async fn raw(&mut self) -> Vec<u8> {
        loop {
            match self.message().await.expect("connection open") {
                Message::Text(text) if text.as_str() == "\n" => continue,
                Message::Text(text) => return text.as_bytes().to_vec(),
                Message::Binary(bytes) => return bytes.to_vec(),
                _ => continue,
            }
        }
    }

    /// The next STOMP frame.
    pub async fn frame(&mut self) -> Frame {
        self.next_frame()
            .await
            .expect("a frame before the connection closed")
    }

    /// The next STOMP frame, or None once the connection is closed.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        if let Some(frame) = self.unread.pop_front() {
            return Some(frame);
        }
        loop {
            match self
                .decoder
                .decode(&mut self.buffer)
                .expect("server frames decode")
            {
                Some(Item::Frame(frame)) => return Some(frame),
                Some(Item::HeartBeat) => continue,
                None => {}
            }
            match self.message().await? {
                Message::Text(text) => self.buffer.extend_from_slice(text.as_bytes()),
                Message::Binary(bytes) => self.buffer.extend_from_slice(&bytes),
                _ => {}
            }
        }
    }

    /// Reads until the server closes the connection; panics on a data frame.
    pub async fn expect_closed(&mut self) {
        if let Some(frame) = self.next_frame().await {
            panic!("expected the connection to close, got {frame:?}");
        }
    }

    /// An ERROR frame followed by the close; returns the ERROR's message.
    pub async fn expect_error(&mut self) -> String {
        let frame = self.frame().await;
        assert_eq!(
            frame.command,
            stompede_protocol::Command::Error,
            "{frame:?}"
        );
        self.expect_closed().await;
        frame
            .headers
            .get("message")
            .expect("ERROR has a message")
            .to_owned()
    }
}

/// One HTTP/1.1 request over a fresh connection; returns status and JSON body.
/// A WebSocket upgrade request sent as plain HTTP (with `extra` headers),
/// for tests of how the upgrade is refused: the status and the JSON body.
pub async fn upgrade(addr: SocketAddr, extra: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut headers = vec![
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];
    headers.extend_from_slice(extra);
    http(addr, "GET", "/ws", None, &headers).await
}

pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let (status, body) = http_raw(addr, method, path, body.map(str::as_bytes), headers).await;
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or_default();
    request.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers")
        + 4;
    (status, response[split..].to_vec())
}
