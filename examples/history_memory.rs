//! Measures what the memory engine's history costs: publishes `messages`
//! comments of `bytes` bytes to each of `destinations` destinations (no
//! subscribers, through the broker's own publish path), then prints the
//! process's RSS growth beside what the history counts against
//! `history-max-bytes`.
//!
//! ```text
//! cargo run --release --example history_memory -- DESTINATIONS MESSAGES BYTES [stompede flags]
//! cargo run --release --example history_memory -- 100000 100 300 --history-max-bytes 268435456
//! ```

use bytes::Bytes;
use std::time::Instant;
use stompede::broker::Broker;
use stompede::config::Config;
use stompede_protocol::Headers;

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches(" kB").parse::<usize>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut number = |what: &str| -> usize {
        args.next()
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| {
                panic!("usage: history_memory DESTINATIONS MESSAGES BYTES [flags]; missing {what}")
            })
    };
    let (destinations, messages, bytes) =
        (number("DESTINATIONS"), number("MESSAGES"), number("BYTES"));
    let flags = std::iter::once("stompede".to_owned()).chain(std::env::args().skip(4));
    let config = Config::load_from(flags).expect("valid flags");
    let max_bytes = config.history_max_bytes;
    let broker = Broker::new(config);
    let body = Bytes::from(vec![b'c'; bytes]);
    let mut headers = Headers::new();
    headers.push("content-type", "text/plain;charset=utf-8");
    let names: Vec<String> = (0..destinations)
        .map(|n| format!("/topic/comments.{n}"))
        .collect();

    let before = rss_bytes();
    let started = Instant::now();
    // Round-robin over the destinations, as comments on many articles arrive.
    for _ in 0..messages {
        for name in &names {
            let publication =
                broker.publication(vec![name.clone()], headers.clone(), body.clone(), None);
            broker.publish(&publication).await.expect("memory engine");
        }
    }
    let elapsed = started.elapsed();
    let after = rss_bytes();
    let text = broker.metrics().render();
    let held = metric(&text, "stompede_history_bytes");
    let kept = metric(&text, "stompede_history_destinations");
    let evicted = metric(&text, "stompede_history_evicted_destinations_total");
    let published = destinations * messages;
    println!(
        "published {published} messages of {bytes} B to {destinations} destinations in {:.1} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        published as f64 / elapsed.as_secs_f64()
    );
    println!(
        "history-max-bytes {max_bytes} ({:.1} MiB); history counts {held:.0} B ({:.1} MiB); \
         destinations kept {kept:.0}, forgotten {evicted:.0}",
        max_bytes as f64 / 1048576.0,
        held / 1048576.0
    );
    println!(
        "RSS {:.1} MiB -> {:.1} MiB: grew {:.1} MiB, {:.2}x what the history counts",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after - before) as f64 / 1048576.0,
        (after - before) as f64 / held.max(1.0)
    );
}
