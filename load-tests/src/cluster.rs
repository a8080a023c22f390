//! Which broker a run drives: how many nodes, which engine. Each node the
//! run talks to (every `--url`, and the publish endpoint) is asked once,
//! at the start, for stompede's `GET /readyz`, whose JSON body names the
//! node (`node`) and its engine (`engine.name`). A broker without it
//! (RabbitMQ) is fine: `--engine-label` names the engine then, and the
//! nodes are counted by address.

use crate::broker_metrics;
use crate::target::Target;
use serde::Serialize;

/// One node as it answered.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// The `/readyz` URL asked.
    pub readyz: String,
    /// What the run does there: "subscribers", "publish", or both.
    pub role: String,
    /// `node` from `/readyz` (`None`: no such answer).
    pub node: Option<String>,
    /// `engine.name` from `/readyz`.
    pub engine: Option<String>,
    pub engine_up: Option<bool>,
    /// Why `/readyz` gave nothing usable, if it did not.
    pub error: Option<String>,
}

/// The report's `cluster` section.
#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    /// The engine: `--engine-label`, else what every node's `/readyz`
    /// said ("mixed: a, b" if they differ), else "unknown".
    pub engine: String,
    /// Where `engine` came from: "flag", "readyz" or "none".
    pub engine_source: String,
    /// Distinct nodes (by `/readyz` node id, else by address) the run uses.
    pub nodes: usize,
    /// How many `--url`s subscribers are dealt over.
    pub subscriber_urls: usize,
    /// How publishing reaches the nodes.
    pub publishing: String,
    pub node_list: Vec<Node>,
}

impl Cluster {
    /// Asks every node. `ws_urls` are the subscribers' `--url`s, `publish`
    /// the HTTP publish targets (empty with STOMP SEND), `publishing` how
    /// they are used.
    pub async fn probe(
        ws_urls: &[Target],
        publish: &[Target],
        publishing: String,
        engine_label: Option<&str>,
    ) -> Cluster {
        // (authority, role) per distinct host:port, in order of appearance.
        let mut hosts: Vec<(String, String)> = Vec::new();
        let mut add = |target: &Target, role: &str| match hosts
            .iter_mut()
            .find(|(authority, _)| *authority == target.authority)
        {
            Some((_, roles)) if !roles.contains(role) => *roles += &format!("+{role}"),
            Some(_) => {}
            None => hosts.push((target.authority.clone(), role.to_string())),
        };
        for target in ws_urls {
            add(target, "subscribers");
        }
        for target in publish {
            add(target, "publish");
        }
        let mut node_list = Vec::new();
        for (authority, role) in hosts {
            node_list.push(ask(&format!("http://{authority}/readyz"), role).await);
        }
        let mut ids: Vec<String> = node_list
            .iter()
            .map(|n| n.node.clone().unwrap_or_else(|| n.readyz.clone()))
            .collect();
        ids.sort();
        ids.dedup();
        let mut engines: Vec<String> = node_list.iter().filter_map(|n| n.engine.clone()).collect();
        engines.sort();
        engines.dedup();
        let (engine, engine_source) = match (engine_label, engines.len()) {
            (Some(label), _) => (label.to_string(), "flag"),
            (None, 0) => ("unknown".to_string(), "none"),
            (None, 1) => (engines[0].clone(), "readyz"),
            (None, _) => (format!("mixed: {}", engines.join(", ")), "readyz"),
        };
        Cluster {
            engine,
            engine_source: engine_source.into(),
            nodes: ids.len(),
            subscriber_urls: ws_urls.len(),
            publishing,
            node_list,
        }
    }

    /// The table's line: "redis (from /readyz), 2 nodes".
    pub fn describe(&self) -> String {
        let source = match self.engine_source.as_str() {
            "flag" => " (--engine-label)",
            "readyz" => " (from /readyz)",
            _ => " (no /readyz answer; give --engine-label)",
        };
        format!(
            "{}{source}, {} node{}",
            self.engine,
            self.nodes,
            if self.nodes == 1 { "" } else { "s" }
        )
    }
}

async fn ask(url: &str, role: String) -> Node {
    let mut node = Node {
        readyz: url.to_string(),
        role,
        node: None,
        engine: None,
        engine_up: None,
        error: None,
    };
    // 503 (at capacity, shutting down) still has the body.
    match broker_metrics::get(url).await {
        Ok((_, body)) => match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(value) => {
                node.node = value["node"].as_str().map(str::to_string);
                node.engine = value["engine"]["name"].as_str().map(str::to_string);
                node.engine_up = value["engine"]["up"].as_bool();
                if node.engine.is_none() {
                    node.error = Some("no engine.name in the answer".into());
                }
            }
            Err(_) => node.error = Some("the answer is not JSON".into()),
        },
        Err(error) => node.error = Some(error),
    }
    node
}
