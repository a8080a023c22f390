//! The receive task: fans out every message the pub/sub link brings, in the
//! order Redis sent them (which is each destination's offset order), and
//! fills the gaps a node can have from the destinations' history, so its
//! readers miss nothing without reconnecting:
//!
//! - the pub/sub link dropped and came back (Redis restarted, the network
//!   blinked, or Redis cut the link past `client-output-buffer-limit
//!   pubsub`): once it is subscribed again, every destination is read from
//!   the last offset this node received;
//! - this task fell behind and the link's queue (`redis-input-queue`) lost
//!   messages: the same, at once;
//! - a message arrives whose offset skips some: the skipped ones are read.
//!
//! What history no longer holds is lost: the first message after such a
//! gap carries `x-gap:true` for every local subscriber (and the jump in
//! `x-offset` shows how many), and a new epoch (Redis lost the history)
//! counts as a gap too. The task awaits those reads itself, so messages
//! wait in the link's queue meanwhile and keep their order; once a read has
//! delivered a destination up to some offset, queued messages up to it are
//! skipped.

use super::history::Read;
use super::{wire, Shared};
use crate::fanout;
use crate::history::Position;
use fred::interfaces::EventInterface;
use std::collections::HashMap;
use std::sync::Arc;
use stompede_protocol::PreparedMessage;

/// Most history reads in flight at once when every destination is read
/// again (fred pipelines them on the one connection).
const CATCH_UP_BATCH: usize = 256;

/// What this node last delivered of one destination.
#[derive(Debug, Clone)]
struct Delivered {
    epoch: Arc<str>,
    offset: u64,
    /// Messages after `offset` were lost: the next one carries `x-gap:true`.
    gap: bool,
}

/// Per destination this node received: bounded by the destinations it
/// listens to (see `Shared::remember`).
#[derive(Default)]
struct Progress {
    destinations: HashMap<Arc<str>, Delivered>,
}

/// Past this many more destinations than the node listens to, those it no
/// longer listens to are forgotten.
const PROGRESS_SLACK: usize = 1024;

enum Event {
    Message(Result<fred::types::Message, tokio::sync::broadcast::error::RecvError>),
    FillGaps,
}

impl Shared {
    /// Fans out every message the pub/sub link receives, filling gaps from
    /// history (see the module's comment).
    pub(super) async fn receive_messages(self: Arc<Self>) {
        let mut messages = self.pubsub.message_rx();
        let mut progress = Progress::default();
        loop {
            // Cancel safety: a broadcast `recv` and `notified` lose nothing when dropped.
            let event = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                _ = self.fill_gaps.notified() => Event::FillGaps,
                message = messages.recv() => Event::Message(message),
            };
            match event {
                Event::FillGaps => self.catch_up_all(&mut progress).await,
                Event::Message(Ok(message)) => {
                    self.metrics()
                        .engine_input_queued
                        .set(messages.len() as i64);
                    self.receive(message, &mut progress).await;
                }
                Event::Message(Err(tokio::sync::broadcast::error::RecvError::Lagged(lost))) => {
                    self.metrics().engine_input_dropped.inc_by(lost);
                    tracing::warn!(
                        lost,
                        "redis input queue overflowed: messages lost (redis-input-queue); \
                         reading them from history"
                    );
                    self.catch_up_all(&mut progress).await;
                }
                Event::Message(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return,
            }
        }
    }

    async fn receive(&self, message: fred::types::Message, progress: &mut Progress) {
        let Some(destination) = self.settings.destination(&message.channel) else {
            return;
        };
        let Some(payload) = message.value.into_bytes() else {
            self.metrics().engine_input_invalid.inc();
            return;
        };
        let decoded = match wire::decode(payload) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.metrics().engine_input_invalid.inc();
                tracing::warn!(%error, destination, "cannot read a message from redis");
                return;
            }
        };
        self.metrics().engine_received.inc();
        let Some((offset, epoch)) = decoded.position else {
            // From a node of the version before history: nothing to track.
            self.hub.deliver(
                destination,
                &decoded.message_id,
                None,
                &decoded.headers,
                decoded.body,
            );
            return;
        };
        let mut gap = false;
        if let Some(known) = progress.destinations.get(destination).cloned() {
            if *known.epoch == *epoch && offset <= known.offset {
                // Delivered already, by a read from history.
                return;
            }
            if *known.epoch != *epoch || offset > known.offset + 1 {
                let now = self.catch_up(destination, known).await;
                let delivered_it = *now.epoch == *epoch && offset <= now.offset;
                self.remember(progress, destination, now.clone());
                if delivered_it {
                    return;
                }
                gap = now.gap || *now.epoch != *epoch;
            }
        }
        let position = Position {
            epoch: Arc::from(epoch),
            offset,
        };
        let message = Arc::new(fanout::prepare_marked(
            destination,
            &decoded.message_id,
            Some(&position),
            gap,
            &decoded.headers,
            decoded.body,
        ));
        self.deliver(destination, &position, &message);
        self.remember(
            progress,
            destination,
            Delivered {
                epoch: position.epoch,
                offset,
                gap: false,
            },
        );
    }

    /// Notes what was delivered of `destination`; a new destination may
    /// first make room by forgetting those this node no longer listens to.
    fn remember(&self, progress: &mut Progress, destination: &str, delivered: Delivered) {
        if let Some(known) = progress.destinations.get_mut(destination) {
            *known = delivered;
            return;
        }
        if progress.destinations.len() > 2 * self.interest.len() + PROGRESS_SLACK {
            progress
                .destinations
                .retain(|destination, _| self.interest.contains_key(destination));
        }
        progress
            .destinations
            .insert(Arc::from(destination), delivered);
    }

    /// Keeps `message` in this node's copy of the destination's history and
    /// hands it to the local subscribers, under the destination's lock (so
    /// a resume served from the copy meets the live stream with no gap).
    fn deliver(&self, destination: &str, position: &Position, message: &Arc<PreparedMessage>) {
        self.local
            .append(destination, position, message, |message| {
                self.hub.deliver_prepared(destination, message)
            });
    }

    /// Reads every destination with local subscribers from where this node
    /// left it, and delivers what it missed.
    async fn catch_up_all(&self, progress: &mut Progress) {
        // Forget destinations without local subscribers: nobody to fill for.
        progress
            .destinations
            .retain(|destination, _| self.hub.subscriber_count(destination) > 0);
        let known: Vec<(Arc<str>, Delivered)> = progress
            .destinations
            .iter()
            .map(|(destination, delivered)| (destination.clone(), delivered.clone()))
            .collect();
        if known.is_empty() {
            return;
        }
        tracing::info!(
            destinations = known.len(),
            "reading what this node missed from history"
        );
        for batch in known.chunks(CATCH_UP_BATCH) {
            let reads = batch.iter().map(|(destination, delivered)| async move {
                (
                    destination.clone(),
                    self.catch_up(destination, delivered.clone()).await,
                )
            });
            for (destination, now) in futures_util::future::join_all(reads).await {
                progress.destinations.insert(destination, now);
            }
        }
    }

    /// Delivers what `destination`'s history holds after what this node
    /// delivered; answers where the destination stands now. A read that
    /// fails (Redis unreachable) changes nothing: the next message, or
    /// the next reconnect, tries again.
    async fn catch_up(&self, destination: &str, known: Delivered) -> Delivered {
        let size = self.settings.history_size;
        let read = Read::Since {
            epoch: &known.epoch,
            after: known.offset,
            limit: size,
        };
        let Ok(since) = self.read_history(destination, read).await else {
            return known;
        };
        let Some(position) = since.position else {
            // No history at all any more: whatever comes next follows a gap.
            return Delivered { gap: true, ..known };
        };
        let (messages, mut gap) = if since.covered {
            (since.messages, known.gap)
        } else {
            // Some are gone (older than history, or another epoch): give
            // what history still has, the first marked.
            let Ok(last) = self.read_history(destination, Read::Last(size)).await else {
                return known;
            };
            let same_epoch = *position.epoch == *known.epoch;
            let newer = last
                .messages
                .into_iter()
                .filter(|message| !same_epoch || offset_of(message) > known.offset)
                .collect();
            (newer, true)
        };
        let metrics = self.metrics();
        if since.covered {
            metrics.engine_gap_filled.inc_by(messages.len() as u64);
        } else {
            metrics.engine_gap_unfilled.inc();
        }
        let mut offset = if *position.epoch == *known.epoch {
            known.offset
        } else {
            0
        };
        for message in messages {
            let message = if gap {
                // The first one after what was lost carries the mark.
                gap = false;
                Arc::new(marked_after_gap(destination, &message))
            } else {
                message
            };
            let position = Position {
                epoch: Arc::from(
                    message
                        .headers()
                        .get(fanout::EPOCH_HEADER)
                        .unwrap_or_default(),
                ),
                offset: offset_of(&message),
            };
            offset = offset.max(position.offset);
            self.deliver(destination, &position, &message);
        }
        if !since.covered {
            // Nothing left to give, or given: from here the stream goes on.
            offset = offset.max(position.offset);
        }
        Delivered {
            epoch: position.epoch,
            offset,
            gap,
        }
    }
}

fn offset_of(message: &stompede_protocol::PreparedMessage) -> u64 {
    message
        .headers()
        .get(fanout::OFFSET_HEADER)
        .and_then(|offset| offset.parse().ok())
        .unwrap_or(0)
}

/// The same message with `x-gap:true` (prepared again: the shared encoding
/// is per message, and the mark is for every subscriber).
fn marked_after_gap(
    destination: &str,
    message: &stompede_protocol::PreparedMessage,
) -> stompede_protocol::PreparedMessage {
    let headers = message.headers();
    let position = Position {
        epoch: Arc::from(headers.get(fanout::EPOCH_HEADER).unwrap_or_default()),
        offset: offset_of(message),
    };
    fanout::prepare_marked(
        destination,
        headers.get("message-id").unwrap_or_default(),
        Some(&position),
        true,
        headers,
        message.body().clone(),
    )
}
