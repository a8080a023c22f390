//! What the comment API does after storing a comment: POST it to stompede,
//! which pushes it to every reader of the article.
//!
//! cargo run --example publish_comment -- --destination /topic/comments.42 --text "Nice article!"

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

#[derive(Parser)]
struct Args {
    /// stompede's HTTP address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    api: String,
    /// The API token, if stompede has one (`--api-token`).
    #[arg(long, env = "STOMPEDE_API_TOKEN")]
    token: Option<String>,
    /// The article's destination.
    #[arg(long, default_value = "/topic/comments.42")]
    destination: String,
    #[arg(long, default_value = "anonymous")]
    author: String,
    #[arg(long)]
    text: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // The comment as the page will render it; a JSON body goes out compact
    // with content-type application/json.
    let comment = serde_json::json!({
        "id": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis().to_string(),
        "author": args.author,
        "text": args.text,
    });
    let request_body = serde_json::json!({ "destination": args.destination, "body": comment });

    let stream = tokio::net::TcpStream::connect(&args.api).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = Request::post("/api/v1/publish")
        .header("host", &args.api)
        .header("content-type", "application/json");
    if let Some(token) = &args.token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::from(request_body.to_string())))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    // 202 {"message_id": "...", "subscribers": N}
    println!("{status} {}", String::from_utf8_lossy(&body));
    if !status.is_success() {
        std::process::exit(1);
    }
    Ok(())
}
