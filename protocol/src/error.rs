use thiserror::Error;

/// Why a byte stream is not valid STOMP. Each message is meant to be shown to
/// the peer (the broker puts it in an ERROR frame), so it says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("header line has no colon: {0:?}")]
    HeaderWithoutColon(String),
    #[error("CR not followed by LF")]
    CarriageReturnWithoutLineFeed,
    #[error("undefined escape \\{0} in header")]
    UndefinedEscape(char),
    #[error("header is not valid UTF-8")]
    InvalidUtf8,
    #[error("content-length is not a number: {0:?}")]
    InvalidContentLength(String),
    #[error("frame body is not followed by NUL (content-length is {0}: too short?)")]
    MissingNul(usize),
    #[error("frame has more than {0} headers")]
    TooManyHeaders(usize),
    #[error("header line exceeds {0} bytes")]
    HeaderLineTooLong(usize),
    #[error("frame body exceeds {0} bytes")]
    BodyTooLarge(usize),
    #[error("frame exceeds {0} bytes")]
    FrameTooLarge(usize),
}
