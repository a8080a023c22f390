//! A Rust STOMP subscriber: connects over WebSocket, subscribes to one
//! destination and prints every MESSAGE that arrives.
//!
//! cargo run --example subscribe -- --url ws://127.0.0.1:8080/ws --destination /topic/comments.42

use bytes::BytesMut;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use stompede_protocol::{encode, Command, Decoder, Frame, Item, Limits, Version};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    #[arg(long, default_value = "/topic/comments.42")]
    destination: String,
    /// Stop after this many messages (default: run until the connection closes).
    #[arg(long)]
    count: Option<usize>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut request = args.url.as_str().into_client_request()?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("v12.stomp"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;

    let send = |frame: Frame| {
        let mut out = BytesMut::new();
        encode(&frame, Version::V1_2, &mut out);
        Message::Binary(out.freeze())
    };
    // No heart-beats: a simple subscriber that only listens.
    ws.send(send(
        Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("heart-beat", "0,0"),
    ))
    .await?;
    ws.send(send(
        Frame::new(Command::Subscribe)
            .header("id", "0")
            .header("destination", &args.destination),
    ))
    .await?;

    let mut decoder = Decoder::new(Limits::default());
    let mut buffer = BytesMut::new();
    let mut received = 0;
    while let Some(message) = ws.next().await {
        match message? {
            Message::Text(text) => buffer.extend_from_slice(text.as_bytes()),
            Message::Binary(bytes) => buffer.extend_from_slice(&bytes),
            Message::Close(_) => break,
            _ => continue,
        }
        while let Some(item) = decoder.decode(&mut buffer)? {
            let Item::Frame(frame) = item else { continue };
            match frame.command {
                Command::Connected => eprintln!("connected, subscribed to {}", args.destination),
                Command::Message => {
                    println!("{}", String::from_utf8_lossy(&frame.body));
                    received += 1;
                    if args.count == Some(received) {
                        return Ok(());
                    }
                }
                Command::Error => {
                    eprintln!(
                        "ERROR: {}",
                        frame.headers.get("message").unwrap_or_default()
                    );
                    std::process::exit(1);
                }
                _ => {}
            }
        }
    }
    Ok(())
}
