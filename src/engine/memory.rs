//! The in-process engine: one node, nothing external. A publish is fanned out
//! to local subscribers before it returns.

use super::{Publication, Published};
use crate::fanout;
use crate::history::{History, HistoryMetrics, HistorySettings};
use crate::hub::Hub;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long, and how many, idempotency keys are remembered.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencySettings {
    /// `idempotency-window`.
    pub window: Duration,
    /// `idempotency-keys-max`: past it the oldest key is forgotten early.
    pub max_keys: usize,
}

pub struct MemoryEngine {
    hub: Arc<Hub>,
    recent: Mutex<RecentKeys>,
    history: Arc<History>,
}

impl MemoryEngine {
    pub fn new(
        hub: Arc<Hub>,
        idempotency: IdempotencySettings,
        history: HistorySettings,
        epoch_prefix: String,
    ) -> MemoryEngine {
        let history = History::start(history, epoch_prefix, HistoryMetrics::of(hub.metrics()));
        MemoryEngine {
            hub,
            recent: Mutex::new(RecentKeys::new(idempotency)),
            history,
        }
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn publish(&self, publication: &Publication) -> Published {
        if let Some(key) = &publication.idempotency_key {
            // Held across the fan-out so that two concurrent retries cannot both deliver;
            // a std Mutex: the fan-out never waits.
            let mut recent = self
                .recent
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(first) = recent.get(key, Instant::now()) {
                return first.clone();
            }
            let published = self.deliver(publication);
            recent.insert(key.clone(), published.clone(), Instant::now());
            return published;
        }
        self.deliver(publication)
    }

    fn deliver(&self, publication: &Publication) -> Published {
        let subscribers = publication
            .destinations
            .iter()
            .map(|destination| {
                self.history.publish(
                    destination,
                    |position| {
                        Arc::new(fanout::prepare(
                            destination,
                            &publication.message_id,
                            Some(position),
                            &publication.headers,
                            publication.body.clone(),
                        ))
                    },
                    |message| self.hub.deliver_prepared(destination, message),
                )
            })
            .sum();
        Published {
            message_id: publication.message_id.clone(),
            subscribers,
        }
    }

    pub fn subscriber_count(&self, destination: &str) -> usize {
        self.hub.subscriber_count(destination)
    }
}

/// Idempotency keys seen within the window, oldest first; bounded by `max_keys`.
struct RecentKeys {
    settings: IdempotencySettings,
    answers: HashMap<String, Published>,
    by_age: VecDeque<(Instant, String)>,
}

impl RecentKeys {
    fn new(settings: IdempotencySettings) -> RecentKeys {
        RecentKeys {
            settings,
            answers: HashMap::new(),
            by_age: VecDeque::new(),
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((seen, _)) = self.by_age.front() {
            let expired = now.saturating_duration_since(*seen) >= self.settings.window;
            if !expired && self.by_age.len() <= self.settings.max_keys {
                break;
            }
            let (_, key) = self.by_age.pop_front().expect("not empty");
            self.answers.remove(&key);
        }
    }

    fn get(&mut self, key: &str, now: Instant) -> Option<&Published> {
        self.expire(now);
        self.answers.get(key)
    }

    fn insert(&mut self, key: String, answer: Published, now: Instant) {
        self.by_age.push_back((now, key.clone()));
        self.answers.insert(key, answer);
        self.expire(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: &str) -> Published {
        Published {
            message_id: id.into(),
            subscribers: 0,
        }
    }

    #[test]
    fn keys_are_remembered_for_the_window_and_bounded_in_number() {
        let settings = IdempotencySettings {
            window: Duration::from_secs(10),
            max_keys: 2,
        };
        let mut recent = RecentKeys::new(settings);
        let start = Instant::now();
        recent.insert("a".into(), answer("1"), start);
        assert_eq!(
            recent.get("a", start + Duration::from_secs(9)),
            Some(&answer("1"))
        );
        assert_eq!(
            recent.get("a", start + Duration::from_secs(10)),
            None,
            "past the window"
        );

        recent.insert("b".into(), answer("2"), start);
        recent.insert("c".into(), answer("3"), start);
        recent.insert("d".into(), answer("4"), start);
        assert_eq!(recent.answers.len(), 2, "bounded by max_keys");
        assert_eq!(recent.get("b", start), None, "the oldest went first");
        assert_eq!(recent.get("d", start), Some(&answer("4")));
    }
}
