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

            /// Parses a command line (without its EOL).
            pub fn from_bytes(bytes: &[u8]) -> Option<Command> {
                match bytes { $(_ if bytes == $name.as_bytes() => Some(Command::$variant),)* _ => None }
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    pub fn with_capacity(n: usize) -> Headers {
        Headers { entries: Vec::with_capacity(n) }
    }

    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every value of headers called `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.iter().any(|(k, _)| k == name)
    }

    /// Appends a header (after any with the same name).
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.entries.push((name.into(), value.into()));
    }

    /// Removes every header called `name`.
    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(k, _)| k != name);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Headers {
        Headers { entries: iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
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
        Frame { command, headers: Headers::new(), body: Bytes::new() }
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
