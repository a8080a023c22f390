//! The one place destinations are checked, for SUBSCRIBE, SEND and the HTTP API.

/// Longest destination accepted, in bytes.
pub const MAX_DESTINATION_BYTES: usize = 256;

/// Returns why `destination` is not acceptable, if it is not.
pub fn validate(destination: &str) -> Result<(), String> {
    if destination.is_empty() {
        return Err("destination is empty".into());
    }
    if destination.len() > MAX_DESTINATION_BYTES {
        return Err(format!("destination is longer than {MAX_DESTINATION_BYTES} bytes"));
    }
    if destination.chars().any(char::is_control) {
        return Err("destination contains a control character".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_comment_topic() {
        assert_eq!(validate("/topic/comments.42"), Ok(()));
    }

    #[test]
    fn refuses_empty_long_and_control_characters() {
        assert_eq!(validate(""), Err("destination is empty".into()));
        assert!(validate(&"a".repeat(257)).unwrap_err().contains("longer than 256"));
        assert!(validate(&"a".repeat(256)).is_ok());
        assert!(validate("/topic/a\nb").unwrap_err().contains("control character"));
        assert!(validate("/topic/a\u{7f}").unwrap_err().contains("control character"));
    }
}
