//! The one place destinations are checked, for SUBSCRIBE, SEND and the HTTP API.

/// Longest destination accepted, in bytes.
pub const MAX_DESTINATION_BYTES: usize = 256;

/// Returns why `destination` is not acceptable, if it is not.
pub fn validate(destination: &str) -> Result<(), String> {
    if destination.is_empty() {
        return Err("destination is empty".into());
    }
    if destination.len() > MAX_DESTINATION_BYTES {
        return Err(format!(
            "destination is longer than {MAX_DESTINATION_BYTES} bytes"
        ));
    }
    if destination.chars().any(char::is_control) {
        return Err("destination contains a control character".into());
    }
    Ok(())
}

/// Why a client may not SUBSCRIBE to `destination` (already [`validate`]d),
/// if it may not: it must start with one of `prefixes` (`subscribe-prefix`).
pub fn check_subscribe(destination: &str, prefixes: &[String]) -> Result<(), String> {
    check_prefix(destination, prefixes).map_err(|allowed| {
        format!(
            "not allowed to subscribe to {destination:?}: destinations must start with {allowed}"
        )
    })
}

/// Why a client may not SEND to `destination` (already [`validate`]d), if it
/// may not: it must start with one of `prefixes` (`send-prefix`).
pub fn check_send(destination: &str, prefixes: &[String]) -> Result<(), String> {
    check_prefix(destination, prefixes).map_err(|allowed| {
        format!("not allowed to send to {destination:?}: destinations must start with {allowed}")
    })
}

fn check_prefix(destination: &str, prefixes: &[String]) -> Result<(), String> {
    if prefixes
        .iter()
        .any(|prefix| destination.starts_with(prefix.as_str()))
    {
        Ok(())
    } else {
        Err(prefixes
            .iter()
            .map(|prefix| format!("{prefix:?}"))
            .collect::<Vec<_>>()
            .join(" or "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_comment_topic() {
        assert_eq!(validate("/topic/comments.42"), Ok(()));
    }

    #[test]
    fn subscribe_and_send_are_limited_to_prefixes() {
        let prefixes = vec!["/topic/".to_owned(), "/live/".to_owned()];
        assert_eq!(check_subscribe("/topic/comments.42", &prefixes), Ok(()));
        assert_eq!(check_send("/live/7", &prefixes), Ok(()));
        assert_eq!(
            check_subscribe("/queue/admin", &prefixes),
            Err("not allowed to subscribe to \"/queue/admin\": destinations must start with \"/topic/\" or \"/live/\"".into())
        );
        assert!(check_send("/topicx", &prefixes)
            .unwrap_err()
            .starts_with("not allowed to send to"));
    }

    #[test]
    fn refuses_empty_long_and_control_characters() {
        assert_eq!(validate(""), Err("destination is empty".into()));
        assert!(validate(&"a".repeat(257))
            .unwrap_err()
            .contains("longer than 256"));
        assert!(validate(&"a".repeat(256)).is_ok());
        assert!(validate("/topic/a\nb")
            .unwrap_err()
            .contains("control character"));
        assert!(validate("/topic/a\u{7f}")
            .unwrap_err()
            .contains("control character"));
    }
}
