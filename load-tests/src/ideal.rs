//! `stompede-load ideal-broker`: the least a STOMP-over-WebSocket broker can
//! do for the fan-out scenario, as a peer to run beside a real broker on the
//! same box, against the same readers (this tool's), so that "the floor" is
//! read with exactly the readers, frames and machine of the run.
//!
//! One thread. It answers the handshake, CONNECT and SUBSCRIBE (with its
//! RECEIPT), and on a client SEND (`--publish stomp`) writes the MESSAGE to
//! every subscriber of its destination at once, each with one non-blocking
//! `send()` of one WebSocket frame, encoded once per subscription id. No
//! queue, no heart-beats, no limits, no history: a socket that cannot take a
//! frame at once loses it (counted, and printed when the peer stops). It is
//! a measuring stick, not a broker: loopback only, and never for real use.

use bytes::BytesMut;
use futures_util::StreamExt;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use stompede_protocol::{Command, Decoder, Frame, Headers, Item, Limits, PreparedMessage, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Debug)]
pub struct IdealArgs {
    /// Where to listen (loopback only).
    #[arg(long, default_value = "127.0.0.1:18999")]
    pub listen: std::net::SocketAddr,
}

/// One subscription: its socket and its `id`.
struct Reader {
    socket: Rc<TcpStream>,
    id: String,
}

#[derive(Default)]
struct State {
    destinations: HashMap<String, Vec<Reader>>,
    messages: u64,
    /// Frames a socket could not take at once (lost: there is no queue).
    not_taken: u64,
}

pub fn run(args: &IdealArgs) -> Result<(), String> {
    if !args.listen.ip().is_loopback() {
        return Err("ideal-broker listens on loopback only".into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("ideal-broker: bind {}: {e}", args.listen))?;
        eprintln!("ideal-broker listening on {}", args.listen);
        let state = Rc::new(RefCell::new(State::default()));
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((socket, _)) = accepted else { continue };
                    let _ = socket.set_nodelay(true);
                    tokio::task::spawn_local(serve(Rc::new(socket), state.clone()));
                }
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        let state = state.borrow();
        eprintln!(
            "ideal-broker: {} messages fanned out, {} frames not taken by a full socket",
            state.messages, state.not_taken
        );
        Ok(())
    })
}

// tungstenite's handshake callback returns its (large) error response by value.
#[allow(clippy::result_large_err)]
async fn serve(socket: Rc<TcpStream>, state: Rc<RefCell<State>>) {
    let choose_protocol = |request: &Request, mut response: Response| {
        let offered = request
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(',').map(str::trim).find(|p| p.starts_with('v')))
            .map(str::to_owned);
        if let Some(protocol) = offered.and_then(|p| HeaderValue::from_str(&p).ok()) {
            response
                .headers_mut()
                .insert("sec-websocket-protocol", protocol);
        }
        Ok(response)
    };
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async(Shared(socket.clone()), choose_protocol).await
    else {
        return;
    };
    let mut decoder = Decoder::new(Limits::default());
    decoder.set_version(Version::V1_2);
    let mut inbound = BytesMut::new();
    let mut mine: Vec<String> = Vec::new();
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Text(text) => inbound.extend_from_slice(text.as_bytes()),
            Message::Binary(bytes) => inbound.extend_from_slice(&bytes),
            Message::Close(_) => break,
            _ => continue,
        }
        while let Ok(Some(item)) = decoder.decode(&mut inbound) {
            let Item::Frame(frame) = item else { continue };
            let reply = match frame.command {
                Command::Connect | Command::Stomp => Some(
                    Frame::new(Command::Connected)
                        .header("version", "1.2")
                        .header("heart-beat", "0,0"),
                ),
                Command::Subscribe => {
                    let destination = frame.headers.get("destination").unwrap_or_default();
                    let id = frame.headers.get("id").unwrap_or_default().to_owned();
                    mine.push(destination.to_owned());
                    state
                        .borrow_mut()
                        .destinations
                        .entry(destination.to_owned())
                        .or_default()
                        .push(Reader {
                            socket: socket.clone(),
                            id,
                        });
                    receipt(&frame)
                }
                Command::Send => {
                    fan_out(&mut state.borrow_mut(), &frame);
                    receipt(&frame)
                }
                Command::Disconnect => receipt(&frame),
                _ => None,
            };
            if let Some(reply) = reply {
                let mut out = BytesMut::new();
                stompede_protocol::encode(&reply, Version::V1_2, &mut out);
                let text = String::from_utf8_lossy(&out).into_owned();
                if futures_util::SinkExt::send(&mut ws, Message::text(text))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    let mut state = state.borrow_mut();
    for destination in mine {
        if let Some(readers) = state.destinations.get_mut(&destination) {
            readers.retain(|reader| !Rc::ptr_eq(&reader.socket, &socket));
        }
    }
}

fn receipt(frame: &Frame) -> Option<Frame> {
    let id = frame.headers.get("receipt")?;
    Some(Frame::new(Command::Receipt).header("receipt-id", id))
}

/// One `send()` of one WebSocket frame per reader, encoded once per subscription id.
fn fan_out(state: &mut State, send: &Frame) {
    let destination = send.headers.get("destination").unwrap_or_default();
    state.messages += 1;
    let mut headers = Headers::new();
    headers.push("destination", destination);
    headers.push("message-id", state.messages.to_string());
    for (name, value) in send.headers.iter() {
        if !matches!(name, "destination" | "receipt" | "content-length") {
            headers.push(name, value);
        }
    }
    let message = PreparedMessage::new(headers, send.body.clone());
    let Some(readers) = state.destinations.get(destination) else {
        return;
    };
    let mut frame = BytesMut::new();
    let mut encoded_for: Option<&str> = None;
    let mut not_taken = 0;
    for reader in readers {
        if encoded_for != Some(reader.id.as_str()) {
            frame.clear();
            let len = message.len_for_with(Version::V1_2, &reader.id, None, &[]);
            frame.extend_from_slice(&[0x81]);
            if len < 126 {
                frame.extend_from_slice(&[len as u8]);
            } else {
                frame.extend_from_slice(&[126]);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            message.write_for_with(Version::V1_2, &reader.id, None, &[], &mut frame);
            encoded_for = Some(reader.id.as_str());
        }
        if !matches!(reader.socket.try_write(&frame), Ok(written) if written == frame.len()) {
            not_taken += 1;
        }
    }
    state.not_taken += not_taken;
}

/// The socket, read and written through `&TcpStream` so that the fan-out
/// can write into it while the connection's task holds it.
struct Shared(Rc<TcpStream>);

impl AsyncRead for Shared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
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

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
