//! Reading one connection until the worker stops or the broker closes it.

use super::sequence::Verdict;
use super::{lock, Subscriber, WorkerState};
use crate::conn::Session;
use crate::frames::{parse_body, Incoming};
use crate::stats::record_ns;
use crate::sys::now_ns;
use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// Reads `session` until `stop` or the end of the connection. With a
/// `checked` subscriber every message is judged (sequence, destination) and
/// its latency recorded in shard `shard_key`; without one (storm
/// connections) messages are only counted.
pub(super) async fn read(
    mut session: Session,
    checked: Option<Arc<Subscriber>>,
    shard_key: usize,
    state: Arc<WorkerState>,
    mut stop: watch::Receiver<bool>,
) {
    let counters = &state.counters;
    let mut stopped = false;
    loop {
        // Cancel safety: `changed` and `StreamExt::next` lose nothing when
        // the other branch wins.
        let message = tokio::select! {
            biased;
            _ = stop.changed() => { stopped = true; break; }
            message = session.ws.next() => message,
        };
        let payload = match message {
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(Message::Text(text))) => text.into(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        };
        session.inbox.push_bytes(payload);
        let arrived_ns = now_ns();
        let mut messages = 0u64;
        // Both locks once per WebSocket payload, not per frame.
        let mut tracker = checked.as_ref().map(|s| lock(&s.tracker));
        let mut latency = checked
            .as_ref()
            .map(|_| lock(state.latency.shard(shard_key)));
        let mut ended = false;
        loop {
            match session.inbox.next() {
                Ok(Some(Incoming::Message(body))) => {
                    messages += 1;
                    let (Some(tracker), Some(latency), Some(subscriber)) =
                        (tracker.as_deref_mut(), latency.as_deref_mut(), &checked)
                    else {
                        continue;
                    };
                    let Some(stamp) = parse_body(&body) else {
                        counters.non_load.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    match tracker.check(subscriber.dest, &stamp) {
                        verdict if verdict.is_first_arrival() => {
                            record_ns(latency, arrived_ns.saturating_sub(stamp.sent_ns))
                        }
                        Verdict::Stale => {
                            counters.stale.fetch_add(1, Ordering::Relaxed);
                        }
                        Verdict::Untracked => {
                            counters.untracked.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
                Ok(Some(Incoming::Other(_))) => {
                    // ERROR (or anything else unexpected mid-stream): the
                    // broker closes after ERROR; treat it as the end.
                    ended = true;
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    ended = true;
                    break;
                }
            }
        }
        drop(tracker);
        drop(latency);
        counters.received.fetch_add(messages, Ordering::Relaxed);
        counters
            .step_received
            .fetch_add(messages, Ordering::Relaxed);
        if ended {
            break;
        }
    }
    counters.open.fetch_sub(1, Ordering::Relaxed);
    if !stopped {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(subscriber) = &checked {
            subscriber.alive.store(false, Ordering::Relaxed);
            subscriber.died_in_step.store(
                counters.current_step.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
        }
    }
}
