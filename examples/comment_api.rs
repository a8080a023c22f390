//! A small comment service in front of stompede: what a real site's comment
//! API does, in one file.
//!
//! - serves the comment page (`examples/comment-page/`) and the
//!   `@stomp/stompjs` bundle from that directory's `node_modules`;
//! - stores comments in SQLite and answers the latest ones on page load;
//! - on a new comment, stores it, then POSTs it to stompede's
//!   `/api/v1/publish` with the API token, so every reader of the article
//!   gets it over their WebSocket within milliseconds;
//! - proxies the article's reader count (stompede's subscriber count), so the
//!   page needs no API token.
//!
//! ```text
//! npm install --prefix examples/comment-page
//! cargo run --release --example comment_api -- --api-token dev-token
//! ```
//!
//! Routes (`{article}` is 1-64 of `A-Z a-z 0-9 - _`):
//!
//! | route | answer |
//! |---|---|
//! | `GET /`, `/app.js`, `/style.css` | the page |
//! | `GET /vendor/stomp.umd.min.js` | `@stomp/stompjs` from `node_modules` |
//! | `GET /api/articles/{article}` | `{article, destination, ws_url, comments: [..latest, oldest first]}` |
//! | `POST /api/articles/{article}/comments` | JSON `{author, text}` -> 201 `{comment, published, subscribers}`; a form post -> 303 back to the page |
//! | `GET /api/articles/{article}/readers` | `{readers}`, from stompede |
//! | `GET /healthz` | `{status: "ok"}` |

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};

/// Largest request body the comment API reads, in bytes.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Longest author name, in characters.
const MAX_AUTHOR_CHARS: usize = 60;
/// Longest comment, in characters.
const MAX_TEXT_CHARS: usize = 2000;
/// How long one call to stompede's API may take before we give up on it.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// The comment service for stompede's example comment page.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to serve the page and the comment API on.
    #[arg(long, env = "COMMENT_API_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,

    /// Base URL of stompede's HTTP API (http only), as this service reaches it.
    #[arg(long, env = "STOMPEDE_URL", default_value = "http://127.0.0.1:8080")]
    stompede_url: String,

    /// The WebSocket URL browsers connect to (behind TLS: `wss://example.com/ws`).
    /// [default: the --stompede-url with ws:// and /ws]
    #[arg(long, env = "STOMPEDE_WS_URL")]
    stompede_ws_url: Option<String>,

    /// stompede's API token (its --api-token); without one, stompede accepts loopback callers only.
    #[arg(long, env = "STOMPEDE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,

    /// The SQLite database file (created if missing).
    #[arg(long, env = "COMMENT_API_DB", default_value = "comments.sqlite3")]
    db: PathBuf,

    /// The page's directory (index.html, app.js, style.css, node_modules/).
    #[arg(long, env = "COMMENT_PAGE_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/comment-page"))]
    page_dir: PathBuf,

    /// How many of the latest comments a page load gets.
    #[arg(long, env = "COMMENT_API_LATEST", default_value_t = 50)]
    latest: u32,
}

/// One stored comment; also the JSON body published to stompede.
#[derive(Debug, Clone, Serialize)]
struct Comment {
    id: i64,
    article: String,
    author: String,
    text: String,
    /// Milliseconds since the Unix epoch.
    created_at: i64,
}

#[derive(Debug, Deserialize)]
struct NewComment {
    #[serde(default)]
    author: String,
    text: String,
}

struct App {
    args: Args,
    broker: Broker,
    ws_url: String,
    /// rusqlite is blocking: it is only used inside `spawn_blocking`, and the
    /// guard never lives across an `.await`.
    db: Arc<Mutex<rusqlite::Connection>>,
}

type HttpResponse = Response<Full<Bytes>>;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("comment_api: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let broker = Broker::new(&args.stompede_url, args.api_token.clone())?;
    let ws_url = match &args.stompede_ws_url {
        Some(url) => url.clone(),
        None => format!("ws://{}/ws", broker.authority),
    };
    let db = open_db(&args.db)
        .map_err(|e| format!("cannot open database {}: {e}", args.db.display()))?;
    if !args.page_dir.join("node_modules/@stomp/stompjs").is_dir() {
        tracing::warn!(page_dir = %args.page_dir.display(), "@stomp/stompjs is not installed; run `npm install` in the page directory");
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "comment page: http://{address}/  (WebSocket {ws_url}, stompede API {})",
        args.stompede_url
    );
    let app = Arc::new(App {
        args,
        broker,
        ws_url,
        db: Arc::new(Mutex::new(db)),
    });

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        // Cancel safety: `accept` loses nothing when the signal wins.
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&app, request).await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    tracing::info!("shutting down");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        // Cancel safety: both futures only wait for a signal.
        Ok(mut terminate) => tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn route(app: &App, request: Request<Incoming>) -> HttpResponse {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let response = match (&method, path.as_str()) {
        (&Method::GET | &Method::HEAD, "/" | "/index.html") => {
            static_file(app, "index.html", "text/html; charset=utf-8").await
        }
        (&Method::GET | &Method::HEAD, "/app.js") => {
            static_file(app, "app.js", "text/javascript; charset=utf-8").await
        }
        (&Method::GET | &Method::HEAD, "/style.css") => {
            static_file(app, "style.css", "text/css; charset=utf-8").await
        }
        (&Method::GET | &Method::HEAD, "/vendor/stomp.umd.min.js") => {
            static_file(
                app,
                "node_modules/@stomp/stompjs/bundles/stomp.umd.min.js",
                "text/javascript; charset=utf-8",
            )
            .await
        }
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (_, path) if path.starts_with("/api/articles/") => {
            articles(app, request, &path["/api/articles/".len()..]).await
        }
        (_, path) => error(StatusCode::NOT_FOUND, format!("no route for {path}")),
    };
    tracing::info!(%method, %path, status = response.status().as_u16(), "request");
    response
}

/// `/api/articles/{article}[/comments|/readers]`.
async fn articles(app: &App, request: Request<Incoming>, rest: &str) -> HttpResponse {
    let (article, action) = rest.split_once('/').unwrap_or((rest, ""));
    if !valid_article(article) {
        return error(
            StatusCode::NOT_FOUND,
            "an article id is 1-64 of A-Z a-z 0-9 - _",
        );
    }
    let article = article.to_owned();
    match (request.method(), action) {
        (&Method::GET, "") => article_page(app, article).await,
        (&Method::GET, "readers") => readers(app, &article).await,
        (&Method::POST, "comments") => post_comment(app, article, request).await,
        (_, "" | "readers") => method_not_allowed("GET"),
        (_, "comments") => method_not_allowed("POST"),
        _ => error(StatusCode::NOT_FOUND, "no such article route"),
    }
}

fn valid_article(article: &str) -> bool {
    (1..=64).contains(&article.len())
        && article
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn destination(article: &str) -> String {
    format!("/topic/comments.{article}")
}

/// Everything the page needs on load: where to connect and the latest comments.
async fn article_page(app: &App, article: String) -> HttpResponse {
    let db = app.db.clone();
    let limit = app.args.latest;
    let lookup = article.clone();
    let comments = tokio::task::spawn_blocking(move || {
        let db = db.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        latest_comments(&db, &lookup, limit)
    })
    .await;
    match comments {
        Ok(Ok(comments)) => json(
            StatusCode::OK,
            serde_json::json!({
                "article": article,
                "destination": destination(&article),
                "ws_url": app.ws_url,
                "comments": comments,
            }),
        ),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("database: {e}")),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("database task: {e}"),
        ),
    }
}

/// The article's reader count: stompede's subscriber count of its destination.
async fn readers(app: &App, article: &str) -> HttpResponse {
    let encoded = percent_encoding::utf8_percent_encode(
        &destination(article),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string();
    match app
        .broker
        .call(
            Method::GET,
            &format!("/api/v1/destinations/{encoded}"),
            None,
        )
        .await
    {
        Ok((StatusCode::OK, body)) => {
            let subscribers = body
                .get("subscribers")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            json(
                StatusCode::OK,
                serde_json::json!({ "readers": subscribers }),
            )
        }
        Ok((status, body)) => error(
            StatusCode::BAD_GATEWAY,
            format!("stompede answered {status}: {body}"),
        ),
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("stompede: {e}")),
    }
}

async fn post_comment(app: &App, article: String, request: Request<Incoming>) -> HttpResponse {
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    let body = match Limited::new(request.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a comment request is at most {MAX_REQUEST_BYTES} bytes"),
            )
        }
    };
    let new = if is_form {
        parse_form(&body)
    } else {
        serde_json::from_slice::<NewComment>(&body).map_err(|e| format!("invalid JSON: {e}"))
    };
    let new = match new.and_then(validate) {
        Ok(new) => new,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };

    let db = app.db.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let db = db.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        insert_comment(&db, &article, new)
    })
    .await;
    let comment = match stored {
        Ok(Ok(comment)) => comment,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("database: {e}")),
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("database task: {e}"),
            )
        }
    };

    // Stored first, then published: a comment the broker did not get is still
    // there on the next page load (and on the page's catch-up after a reconnect).
    let publish = serde_json::json!({
        "destination": destination(&comment.article),
        "body": comment,
        "headers": { "comment-id": comment.id.to_string() },
    });
    let (published, subscribers) = match app
        .broker
        .call(Method::POST, "/api/v1/publish", Some(publish))
        .await
    {
        Ok((StatusCode::ACCEPTED, body)) => (
            true,
            body.get("subscribers").and_then(serde_json::Value::as_u64),
        ),
        Ok((status, body)) => {
            tracing::warn!(%status, %body, comment = comment.id, "stompede refused the publish");
            (false, None)
        }
        Err(e) => {
            tracing::warn!(error = %e, comment = comment.id, "cannot publish to stompede");
            (false, None)
        }
    };
    tracing::info!(comment = comment.id, article = %comment.article, published, subscribers, "comment stored");

    if is_form {
        // A page without JavaScript: back to the article, at the new comment.
        let location = format!("/?article={}#comment-{}", comment.article, comment.id);
        return Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(header::LOCATION, location)
            .body(Full::default())
            .expect("static response parts are valid");
    }
    json(
        StatusCode::CREATED,
        serde_json::json!({ "comment": comment, "published": published, "subscribers": subscribers }),
    )
}

fn parse_form(body: &[u8]) -> Result<NewComment, String> {
    let body = std::str::from_utf8(body).map_err(|_| "the form is not valid UTF-8".to_owned())?;
    let mut new = NewComment {
        author: String::new(),
        text: String::new(),
    };
    for pair in body.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = value.replace('+', " ");
        let value = percent_encoding::percent_decode_str(&value)
            .decode_utf8()
            .map_err(|_| format!("form field {name:?} is not valid UTF-8"))?
            .into_owned();
        match name {
            "author" => new.author = value,
            "text" => new.text = value,
            _ => {}
        }
    }
    Ok(new)
}

fn validate(new: NewComment) -> Result<NewComment, String> {
    let author = new.author.trim();
    let author = if author.is_empty() {
        "Anonymous"
    } else {
        author
    };
    let text = new.text.trim();
    if text.is_empty() {
        return Err("the comment is empty".into());
    }
    if author.chars().count() > MAX_AUTHOR_CHARS || author.chars().any(char::is_control) {
        return Err(format!(
            "the name is at most {MAX_AUTHOR_CHARS} characters, on one line"
        ));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(format!("a comment is at most {MAX_TEXT_CHARS} characters"));
    }
    Ok(NewComment {
        author: author.to_owned(),
        text: text.to_owned(),
    })
}

// ---- SQLite -----------------------------------------------------------------

fn open_db(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    let db = rusqlite::Connection::open(path)?;
    db.busy_timeout(Duration::from_secs(5))?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS comments (
             id         INTEGER PRIMARY KEY AUTOINCREMENT,
             article    TEXT    NOT NULL,
             author     TEXT    NOT NULL,
             text       TEXT    NOT NULL,
             created_at INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS comments_by_article ON comments (article, id);",
    )?;
    Ok(db)
}

fn insert_comment(
    db: &rusqlite::Connection,
    article: &str,
    new: NewComment,
) -> rusqlite::Result<Comment> {
    let created_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    db.execute(
        "INSERT INTO comments (article, author, text, created_at) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![article, new.author, new.text, created_at],
    )?;
    Ok(Comment {
        id: db.last_insert_rowid(),
        article: article.to_owned(),
        author: new.author,
        text: new.text,
        created_at,
    })
}

/// The latest `limit` comments of `article`, oldest first.
fn latest_comments(
    db: &rusqlite::Connection,
    article: &str,
    limit: u32,
) -> rusqlite::Result<Vec<Comment>> {
    let mut statement = db.prepare_cached(
        "SELECT id, article, author, text, created_at FROM comments
         WHERE article = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let mut comments = statement
        .query_map(rusqlite::params![article, limit], |row| {
            Ok(Comment {
                id: row.get(0)?,
                article: row.get(1)?,
                author: row.get(2)?,
                text: row.get(3)?,
                created_at: row.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    comments.reverse();
    Ok(comments)
}

// ---- stompede's HTTP API ----------------------------------------------------

/// A client for stompede's HTTP API: one short HTTP/1.1 connection per call
/// (a comment service publishes a few times a second, not thousands).
struct Broker {
    /// `host:port`.
    authority: String,
    /// Path prefix from the base URL (e.g. behind a proxy), without a trailing `/`.
    prefix: String,
    token: Option<String>,
}

impl Broker {
    fn new(base_url: &str, token: Option<String>) -> Result<Broker, String> {
        let uri: Uri = base_url
            .parse()
            .map_err(|e| format!("invalid --stompede-url {base_url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("--stompede-url must be http://HOST:PORT (got {base_url:?}); reach stompede's API directly, not through TLS"));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("--stompede-url {base_url:?} has no host"))?;
        let authority = format!("{host}:{}", uri.port_u16().unwrap_or(80));
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Broker {
            authority,
            prefix,
            token: token.filter(|token| !token.is_empty()),
        })
    }

    /// Calls stompede; answers the status and the JSON body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, serde_json::Value), String> {
        tokio::time::timeout(BROKER_TIMEOUT, self.call_inner(method, path, body))
            .await
            .map_err(|_| format!("no answer within {BROKER_TIMEOUT:?}"))?
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, serde_json::Value), String> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        // The connection task ends when the response is read and `sender` is dropped.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "stompede connection");
            }
        });
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(header::HOST, &self.authority);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(value) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(value.to_string()))
            }
            None => Full::default(),
        };
        let request = request.body(body).map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_REQUEST_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        });
        Ok((status, value))
    }
}

// ---- responses --------------------------------------------------------------

async fn static_file(app: &App, relative: &str, content_type: &'static str) -> HttpResponse {
    let path = app.args.page_dir.join(relative);
    let read = path.clone();
    let contents = tokio::task::spawn_blocking(move || std::fs::read(read))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    match contents {
        Ok(contents) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Full::new(Bytes::from(contents)))
            .expect("static response parts are valid"),
        Err(e) if relative.starts_with("node_modules/") => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "{}: {e}; run `npm install` in {}",
                path.display(),
                app.args.page_dir.display()
            ),
        ),
        Err(e) => error(StatusCode::NOT_FOUND, format!("{}: {e}", path.display())),
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> HttpResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("static response parts are valid")
}

fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    json(status, serde_json::json!({ "error": message.into() }))
}

fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}
