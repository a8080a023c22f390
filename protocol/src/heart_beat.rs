//! The `heart-beat` header of CONNECT and CONNECTED (STOMP 1.1+): `cx,cy`.

use std::time::Duration;

/// A `heart-beat` header value: how often its sender can send heart-beats
/// (`cx`) and how often it wants to receive them (`cy`); zero means never.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeartBeat {
    pub can_send: Duration,
    pub wants_to_receive: Duration,
}

impl HeartBeat {
    /// Parses `cx,cy` in milliseconds (spaces around each number allowed).
    pub fn parse(value: &str) -> Option<HeartBeat> {
        let (cx, cy) = value.split_once(',')?;
        let millis = |text: &str| text.trim().parse::<u64>().ok().map(Duration::from_millis);
        Some(HeartBeat {
            can_send: millis(cx)?,
            wants_to_receive: millis(cy)?,
        })
    }
}

impl std::fmt::Display for HeartBeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{},{}",
            self.can_send.as_millis(),
            self.wants_to_receive.as_millis()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_cx_cy() {
        let beat = HeartBeat::parse(" 10000, 250").unwrap();
        assert_eq!(beat.can_send, Duration::from_secs(10));
        assert_eq!(beat.wants_to_receive, Duration::from_millis(250));
        assert_eq!(beat.to_string(), "10000,250");
        for bad in ["", "1", "1,", ",1", "a,1", "-1,0", "1,2,3"] {
            assert_eq!(HeartBeat::parse(bad), None, "{bad:?}");
        }
    }
}
