use bytes::Bytes;

/// A STOMP protocol version. The ordering follows the version numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    /// The value used in `accept-version` / `version` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    pub fn parse(s: &str) -> Option<Version> {
        match s.trim() {
            "1.0" => Some(Version::V1_0),
            "1.1" => Some(Version::V1_1),
            "1.2" => Some(Version::V1_2),
            _ => None,
        }
    }
}

macro_rules! commands {
    ($($variant:ident => $name:literal,)*) => {
        /// Every client and server command of STOMP 1.0 to 1.2.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Command { $($variant,)* }

        impl Command {
            pub const ALL: &'static [Command] = &[$(Command::$variant,)*];

            /// The command as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $(Command::$variant => $name,)* }
            }
        }
    };
}

commands! {
    Connect => "CONNECT",
    Stomp => "STOMP",
    Send => "SEND",
    Subscribe => "SUBSCRIBE",
    Unsubscribe => "UNSUBSCRIBE",
    Begin => "BEGIN",
    Commit => "COMMIT",
    Abort => "ABORT",
    Ack => "ACK",
    Nack => "NACK",
    Disconnect => "DISCONNECT",
    Connected => "CONNECTED",
    Message => "MESSAGE",
    Receipt => "RECEIPT",
    Error => "ERROR",
}

impl Command {
    /// Parses a command line (without its EOL). Commands are case-sensitive.
    pub fn from_bytes(bytes: &[u8]) -> Option<Command> {
        // Byte-string patterns compile to a switch on the length, then a
        // compare or two (tests check this agrees with `as_str`).
        Some(match bytes {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"DISCONNECT" => Command::Disconnect,
            b"CONNECTED" => Command::Connected,
            b"MESSAGE" => Command::Message,
            b"RECEIPT" => Command::Receipt,
            b"ERROR" => Command::Error,
            _ => return None,
        })
    }

    /// CONNECT, STOMP and CONNECTED headers are never escaped (STOMP 1.2).
    pub fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }

    /// Whether a client may send this command.
    pub fn is_client_command(self) -> bool {
        !matches!(
            self,
            Command::Connected | Command::Message | Command::Receipt | Command::Error
        )
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Frame headers in wire order. Repeated names are kept; lookups return the
/// first occurrence, as STOMP 1.2 requires.
///
/// All names and values live back to back in one string, so a decoded frame
/// costs two allocations for its headers however many it has.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// Every name and value, concatenated in order, and nothing else (so the
    /// derived equality compares headers, not storage history).
    text: String,
    spans: Vec<Span>,
}

/// Where one header lives in `Headers::text`: the name is `start..split`,
/// the value `split..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    split: usize,
    end: usize,
}

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    pub fn with_capacity(n: usize) -> Headers {
        Headers {
            text: String::with_capacity(n * 24),
            spans: Vec::with_capacity(n),
        }
    }

    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Every value of headers called `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter().filter(move |(k, _)| *k == name).map(|(_, v)| v)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.iter().any(|(k, _)| k == name)
    }

    /// Appends a header (after any with the same name).
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.push_str(&name.into(), &value.into());
    }

    fn push_str(&mut self, name: &str, value: &str) {
        let start = self.text.len();
        self.text.push_str(name);
        let split = self.text.len();
        self.text.push_str(value);
        self.spans.push(Span {
            start,
            split,
            end: self.text.len(),
        });
    }

    /// Removes every header called `name`.
    pub fn remove(&mut self, name: &str) {
        if !self.contains(name) {
            return;
        }
        let mut kept = Headers {
            text: String::with_capacity(self.text.len()),
            spans: Vec::with_capacity(self.len()),
        };
        for (k, v) in self.iter().filter(|(k, _)| *k != name) {
            kept.push_str(k, v);
        }
        *self = kept;
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.spans
            .iter()
            .map(|s| (&self.text[s.start..s.split], &self.text[s.split..s.end]))
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Gives back the storage the decoder reserved beyond what the headers
    /// use (it grows by doubling), for headers that are kept.
    pub fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.spans.shrink_to_fit();
    }

    /// Bytes of every name and value, plus a colon and an EOL each: what the
    /// headers cost written out unescaped (and, within a few bytes, held).
    pub fn byte_len(&self) -> usize {
        self.text.len() + 2 * self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// For the decoder: a header is appended to the text in two steps, the
    /// name then the value, each written straight into the shared string.
    pub(crate) fn with_text_capacity(bytes: usize, headers: usize) -> Headers {
        Headers {
            text: String::with_capacity(bytes),
            spans: Vec::with_capacity(headers),
        }
    }

    pub(crate) fn text_mut(&mut self) -> &mut String {
        &mut self.text
    }

    /// Records the header whose name starts at `start` and ends at `split`
    /// in the text; its value is everything after, up to the end.
    pub(crate) fn end_header(&mut self, start: usize, split: usize) {
        self.spans.push(Span {
            start,
            split,
            end: self.text.len(),
        });
    }

    /// The value of the header last added by `end_header`.
    pub(crate) fn last_value(&self) -> &str {
        self.spans.last().map_or("", |s| &self.text[s.split..s.end])
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Headers {
        let mut headers = Headers::new();
        for (k, v) in iter {
            headers.push(k, v);
        }
        headers
    }
}

/// One STOMP frame. `body` shares the decoder's buffer: no copy on decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub headers: Headers,
    pub body: Bytes,
}

impl Frame {
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// Builder-style: adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.push(name, value);
        self
    }

    /// Builder-style: sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }
}
