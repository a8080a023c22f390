//! A destination's history in Redis: the publish script (see `mod.rs`)
//! keeps its `meta` hash (epoch, latest offset) and its `log` list (the last
//! `history-size` payloads); this reads them back, in one script call (one
//! round trip), for a resume, a catch-up or the HTTP API.

use super::{wire, Shared};
use crate::engine::EngineError;
use crate::fanout;
use crate::history::Position;
use fred::types::Value;
use std::sync::Arc;
use stompede_protocol::PreparedMessage;

/// KEYS: the destination's `meta` and `log`. ARGV: [1] `last` or `since`,
/// [2] the epoch (for `since`), [3] the most messages to return, [4] the
/// offset to read after (for `since`). Returns `{epoch, latest, covered,
/// {payloads...}}`: `epoch` is '' for a destination without a history;
/// `covered` is 1 when every message after the offset is still there (then
/// the payloads are those, oldest first), for `last` always (the last ones).
const HISTORY_SCRIPT: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return {'', 0, 0, {}} end
local latest = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local limit = tonumber(ARGV[3])
local len = redis.call('LLEN', KEYS[2])
if ARGV[1] == 'last' then
  if limit == 0 or len == 0 then return {epoch, latest, 1, {}} end
  return {epoch, latest, 1, redis.call('LRANGE', KEYS[2], -limit, -1)}
end
local after = tonumber(ARGV[4])
if ARGV[2] ~= epoch or after > latest then return {epoch, latest, 0, {}} end
if after == latest or limit == 0 then return {epoch, latest, 1, {}} end
local first = latest - len + 1
if after + 1 < first then return {epoch, latest, 0, {}} end
local start = after + 1 - first
return {epoch, latest, 1, redis.call('LRANGE', KEYS[2], start, start + limit - 1)}
"#;

/// What to read.
#[derive(Debug, Clone, Copy)]
pub enum Read<'a> {
    /// Every message after `after` in `epoch`, at most `limit`.
    Since {
        epoch: &'a str,
        after: u64,
        limit: usize,
    },
    /// The last `limit` messages.
    Last(usize),
}

/// What was read.
#[derive(Debug)]
pub struct HistoryRead {
    /// `None`: the destination has no history (never published, or expired whole).
    pub position: Option<Position>,
    /// For `Since`: whether every message after the offset was still there.
    pub covered: bool,
    /// Prepared for delivery, oldest first.
    pub messages: Vec<Arc<PreparedMessage>>,
}

pub fn script() -> fred::types::scripts::Script {
    fred::types::scripts::Script::from_lua(HISTORY_SCRIPT)
}

impl Shared {
    /// Reads `destination`'s history (one round trip, within `redis-command-timeout`).
    pub(super) async fn read_history(
        &self,
        destination: &str,
        read: Read<'_>,
    ) -> Result<HistoryRead, EngineError> {
        let keys = vec![
            self.settings.meta_key(destination),
            self.settings.log_key(destination),
        ];
        let args: Vec<Value> = match read {
            Read::Since {
                epoch,
                after,
                limit,
            } => vec![
                "since".into(),
                epoch.into(),
                (limit as i64).into(),
                (after.min(i64::MAX as u64) as i64).into(),
            ],
            Read::Last(limit) => vec!["last".into(), "".into(), (limit as i64).into(), 0.into()],
        };
        let call =
            self.history_script
                .evalsha_with_reload::<Value, _, _>(&self.commands, keys, args);
        let reply = self.timed("history", call).await?;
        self.parse_history(destination, reply)
            .ok_or_else(|| self.unavailable("unexpected reply to the history script"))
    }

    fn parse_history(&self, destination: &str, reply: Value) -> Option<HistoryRead> {
        let Value::Array(mut fields) = reply else {
            return None;
        };
        if fields.len() != 4 {
            return None;
        }
        let payloads = match fields.pop()? {
            Value::Array(payloads) => payloads,
            Value::Null => Vec::new(),
            _ => return None,
        };
        let covered = fields.pop()?.as_i64()? == 1;
        let latest = fields.pop()?.as_i64()?;
        let epoch = fields.pop()?.into_string()?;
        if epoch.is_empty() {
            return Some(HistoryRead {
                position: None,
                covered: false,
                messages: Vec::new(),
            });
        }
        let mut messages = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let decoded = payload
                .into_bytes()
                .and_then(|bytes| wire::decode(bytes).ok());
            let Some(decoded) = decoded else {
                self.metrics().engine_input_invalid.inc();
                continue;
            };
            let (offset, epoch) = decoded.position?;
            let position = Position {
                epoch: Arc::from(epoch),
                offset,
            };
            messages.push(Arc::new(fanout::prepare(
                destination,
                &decoded.message_id,
                Some(&position),
                &decoded.headers,
                decoded.body,
            )));
        }
        Some(HistoryRead {
            position: Some(Position {
                epoch: Arc::from(epoch),
                offset: u64::try_from(latest).unwrap_or(0),
            }),
            covered,
            messages,
        })
    }
}
