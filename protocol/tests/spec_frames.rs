//! The example frames of the STOMP 1.2 specification (and the 1.0/1.1
//! variants where they differ), decoded whole, split at every byte offset and
//! byte by byte, plus streams of several frames and heart-beats.
//!
//! The spec's examples write `^@` for NUL. Where an example leaves out the
//! blank line that ends the headers (DISCONNECT, RECEIPT), the frame grammar
//! requires it, so it is written here.

mod common;

use common::*;
use stompede_protocol::{Command, Frame, Item, Limits, Version};

#[test]
fn connect() {
    let f = decode_one(b"CONNECT\naccept-version:1.2\nhost:stomp.github.org\n\n\0");
    assert_eq!(f.command, Command::Connect);
    assert_eq!(
        headers_of(&f),
        [("accept-version", "1.2"), ("host", "stomp.github.org")]
    );
    assert!(f.body.is_empty());
}

#[test]
fn connect_with_login_and_heart_beat() {
    let f = decode_one(
        b"CONNECT\naccept-version:1.0,1.1,1.2\nhost:stomp.github.org\nlogin:guest\npasscode:guest\nheart-beat:0,1000\n\n\0",
    );
    assert_eq!(f.command, Command::Connect);
    assert_eq!(f.headers.get("login"), Some("guest"));
    assert_eq!(f.headers.get("passcode"), Some("guest"));
    assert_eq!(f.headers.get("heart-beat"), Some("0,1000"));
    assert_eq!(f.headers.get("accept-version"), Some("1.0,1.1,1.2"));
}

#[test]
fn stomp() {
    let f = decode_one(b"STOMP\naccept-version:1.2\nhost:stomp.github.org\n\n\0");
    assert_eq!(f.command, Command::Stomp);
    assert_eq!(
        headers_of(&f),
        [("accept-version", "1.2"), ("host", "stomp.github.org")]
    );
}

#[test]
fn connected() {
    let f = decode_one(b"CONNECTED\nversion:1.2\n\n\0");
    assert_eq!(f.command, Command::Connected);
    assert_eq!(headers_of(&f), [("version", "1.2")]);
    let f = decode_one(
        b"CONNECTED\nversion:1.2\nsession:abc\nserver:stompede/0.1\nheart-beat:10000,10000\n\n\0",
    );
    assert_eq!(f.headers.get("heart-beat"), Some("10000,10000"));
    assert_eq!(f.headers.get("server"), Some("stompede/0.1"));
}

#[test]
fn send_with_content_type() {
    let f = decode_one(b"SEND\ndestination:/queue/a\ncontent-type:text/plain\n\nhello queue a\n\0");
    assert_eq!(f.command, Command::Send);
    assert_eq!(
        headers_of(&f),
        [("destination", "/queue/a"), ("content-type", "text/plain")]
    );
    assert_eq!(&f.body[..], b"hello queue a\n");
}

#[test]
fn send_with_receipt() {
    let f = decode_one(b"SEND\ndestination:/queue/a\nreceipt:message-12345\n\nhello queue a\0");
    assert_eq!(
        headers_of(&f),
        [("destination", "/queue/a"), ("receipt", "message-12345")]
    );
    assert_eq!(&f.body[..], b"hello queue a");
}

#[test]
fn send_with_content_length_and_nul_in_body() {
    let f = decode_one(b"SEND\ndestination:/queue/a\ncontent-type:application/octet-stream\ncontent-length:5\n\na\0b\0c\0");
    assert_eq!(&f.body[..], b"a\0b\0c");
    assert_eq!(f.headers.get("content-length"), Some("5"));
}

#[test]
fn send_in_a_transaction() {
    let f = decode_one(
        b"SEND\ndestination:/queue/a\ntransaction:tx1\ncontent-type:text/plain\n\nhello queue a\0",
    );
    assert_eq!(f.headers.get("transaction"), Some("tx1"));
}

#[test]
fn subscribe_with_each_ack_mode() {
    for ack in ["auto", "client", "client-individual"] {
        let input = format!("SUBSCRIBE\nid:0\ndestination:/queue/foo\nack:{ack}\n\n\0");
        let f = decode_one(input.as_bytes());
        assert_eq!(f.command, Command::Subscribe);
        assert_eq!(
            headers_of(&f),
            [("id", "0"), ("destination", "/queue/foo"), ("ack", ack)]
        );
    }
    let f = decode_one(b"SUBSCRIBE\nid:0\ndestination:/queue/foo\n\n\0");
    assert_eq!(f.headers.get("ack"), None);
}

#[test]
fn unsubscribe() {
    let f = decode_one(b"UNSUBSCRIBE\nid:0\n\n\0");
    assert_eq!(f.command, Command::Unsubscribe);
    assert_eq!(headers_of(&f), [("id", "0")]);
}

#[test]
fn ack_and_nack() {
    let f = decode_one(b"ACK\nid:12345\ntransaction:tx1\n\n\0");
    assert_eq!(f.command, Command::Ack);
    assert_eq!(headers_of(&f), [("id", "12345"), ("transaction", "tx1")]);
    let f = decode_one(b"NACK\nid:12345\ntransaction:tx1\n\n\0");
    assert_eq!(f.command, Command::Nack);
    assert_eq!(headers_of(&f), [("id", "12345"), ("transaction", "tx1")]);
    // STOMP 1.1 ACK names the subscription and the message id.
    let f = decode_one_as(b"ACK\nsubscription:0\nmessage-id:007\n\n\0", Version::V1_1);
    assert_eq!(
        headers_of(&f),
        [("subscription", "0"), ("message-id", "007")]
    );
}

#[test]
fn begin_commit_abort() {
    for (wire, command) in [
        ("BEGIN", Command::Begin),
        ("COMMIT", Command::Commit),
        ("ABORT", Command::Abort),
    ] {
        let f = decode_one(format!("{wire}\ntransaction:tx1\n\n\0").as_bytes());
        assert_eq!(f.command, command);
        assert_eq!(headers_of(&f), [("transaction", "tx1")]);
    }
}

#[test]
fn disconnect_with_receipt_and_the_receipt() {
    let f = decode_one(b"DISCONNECT\nreceipt:77\n\n\0");
    assert_eq!(f.command, Command::Disconnect);
    assert_eq!(headers_of(&f), [("receipt", "77")]);
    let f = decode_one(b"RECEIPT\nreceipt-id:77\n\n\0");
    assert_eq!(f.command, Command::Receipt);
    assert_eq!(headers_of(&f), [("receipt-id", "77")]);
}

#[test]
fn message() {
    let f = decode_one(
        b"MESSAGE\nsubscription:0\nmessage-id:007\ndestination:/queue/a\ncontent-type:text/plain\n\nhello queue a\0",
    );
    assert_eq!(f.command, Command::Message);
    assert_eq!(
        headers_of(&f),
        [
            ("subscription", "0"),
            ("message-id", "007"),
            ("destination", "/queue/a"),
            ("content-type", "text/plain")
        ]
    );
    assert_eq!(&f.body[..], b"hello queue a");
}

#[test]
fn message_with_ack_header() {
    let f = decode_one(
        b"MESSAGE\nsubscription:0\nmessage-id:007\ndestination:/queue/a\nack:a-1\n\nhi\0",
    );
    assert_eq!(f.headers.get("ack"), Some("a-1"));
}

const ERROR_BODY: &str = "The message:\n-----\nMESSAGE\ndestined:/queue/a\nreceipt:message-12345\n\nHello queue a!\n-----\nDid not contain a destination header, which is REQUIRED\nfor message propagation.\n";

#[test]
fn error_with_a_body() {
    // The spec's example says content-length:171; the body as printed there
    // is this long (the spec's count is not exact), so the frame below uses
    // the real length.
    let input = format!(
        "ERROR\nreceipt-id:message-12345\ncontent-type:text/plain\ncontent-length:{}\nmessage:malformed frame received\n\n{ERROR_BODY}\0",
        ERROR_BODY.len()
    );
    let f = decode_one(input.as_bytes());
    assert_eq!(f.command, Command::Error);
    assert_eq!(f.headers.get("message"), Some("malformed frame received"));
    assert_eq!(f.headers.get("receipt-id"), Some("message-12345"));
    assert_eq!(&f.body[..], ERROR_BODY.as_bytes());
}

#[test]
fn error_for_version_negotiation() {
    let f = decode_one(b"ERROR\nversion:1.2,2.1\ncontent-type:text/plain\n\nSupported protocol versions are 1.2 2.1\0");
    assert_eq!(f.headers.get("version"), Some("1.2,2.1"));
    assert_eq!(&f.body[..], b"Supported protocol versions are 1.2 2.1");
}

#[test]
fn repeated_headers_keep_order_and_first_wins() {
    let f = decode_one(b"MESSAGE\nfoo:World\nfoo:Hello\n\n\0");
    assert_eq!(f.headers.get("foo"), Some("World"));
    assert_eq!(
        f.headers.get_all("foo").collect::<Vec<_>>(),
        ["World", "Hello"]
    );
    assert_eq!(f.headers.len(), 2);
}

#[test]
fn repeated_content_length_first_wins() {
    let f = decode_one(b"SEND\ncontent-length:3\ncontent-length:1\n\nabc\0");
    assert_eq!(&f.body[..], b"abc");
}

#[test]
fn crlf_line_endings() {
    let f =
        decode_one(b"SEND\r\ndestination:/queue/a\r\ncontent-type:text/plain\r\n\r\nhello\r\n\0");
    assert_eq!(
        headers_of(&f),
        [("destination", "/queue/a"), ("content-type", "text/plain")]
    );
    assert_eq!(&f.body[..], b"hello\r\n");
}

#[test]
fn header_values_keep_spaces_and_colons() {
    // No trimming; only the first colon separates name from value.
    let f = decode_one(b"CONNECT\nhost: stomp.github.org \nlogin:a:b\n\n\0");
    assert_eq!(
        headers_of(&f),
        [("host", " stomp.github.org "), ("login", "a:b")]
    );
    let f = decode_one(b"SEND\nempty:\n:no-name\n\n\0");
    assert_eq!(headers_of(&f), [("empty", ""), ("", "no-name")]);
}

#[test]
fn every_command_decodes() {
    for &command in Command::ALL {
        let f = decode_one(format!("{command}\n\n\0").as_bytes());
        assert_eq!(f.command, command);
        assert!(f.headers.is_empty());
    }
}

fn spec_stream() -> (Vec<u8>, Vec<Item>) {
    let frames: [&[u8]; 4] = [
        b"CONNECT\naccept-version:1.2\nhost:stomp.github.org\n\n\0",
        b"SUBSCRIBE\nid:0\ndestination:/queue/foo\nack:client\n\n\0",
        b"SEND\ndestination:/queue/a\ncontent-length:4\n\nab\0c\0",
        b"DISCONNECT\nreceipt:77\n\n\0",
    ];
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        // 0, 1, 2 or 3 heart-beats before each frame, mixing LF and CRLF.
        for j in 0..i {
            input.extend_from_slice(if j % 2 == 0 { b"\n" } else { b"\r\n" });
            expected.push(Item::HeartBeat);
        }
        input.extend_from_slice(f);
        expected.push(Item::Frame(decode_one(f)));
    }
    (input, expected)
}

#[test]
fn several_frames_in_one_buffer() {
    let frames: [&[u8]; 3] = [
        b"SEND\ndestination:/a\n\none\0",
        b"SEND\ndestination:/b\ncontent-length:3\n\ntwo\0",
        b"SEND\ndestination:/c\n\nthree\0",
    ];
    let input = frames.concat();
    let outcome = decode_every_way(&input, Limits::default(), Version::V1_2);
    assert_eq!(outcome.end, Ok(0));
    let bodies: Vec<_> = outcome
        .items
        .iter()
        .map(|item| match item {
            Item::Frame(f) => f.body.clone(),
            Item::HeartBeat => panic!("no heart-beat in this input"),
        })
        .collect();
    assert_eq!(bodies, [&b"one"[..], b"two", b"three"]);
}

#[test]
fn heart_beats_before_between_and_after_frames() {
    let (mut input, mut expected) = spec_stream();
    input.extend_from_slice(b"\n\r\n\n");
    expected.extend([Item::HeartBeat, Item::HeartBeat, Item::HeartBeat]);
    let outcome = decode_every_way(&input, Limits::default(), Version::V1_2);
    assert_eq!(outcome.items, expected);
    assert_eq!(outcome.end, Ok(0));
}

#[test]
fn heart_beats_alone() {
    let outcome = decode_every_way(b"\n\n\r\n\n\r\n", Limits::default(), Version::V1_2);
    assert_eq!(outcome.items, vec![Item::HeartBeat; 5]);
    assert_eq!(outcome.end, Ok(0));
    // A lone CR waits for its LF.
    let outcome = decode_whole(b"\n\r", Limits::default(), Version::V1_2);
    assert_eq!(outcome.items, [Item::HeartBeat]);
    assert_eq!(outcome.end, Ok(1));
}

#[test]
fn partial_frame_is_not_consumed_and_completes_later() {
    let input = b"SEND\ndestination:/queue/a\n\nhello\0";
    for at in 0..input.len() {
        let outcome = decode_whole(&input[..at], Limits::default(), Version::V1_2);
        assert_eq!(outcome.items, []);
        assert_eq!(
            outcome.end,
            Ok(at),
            "a partial frame of {at} bytes stays in the buffer"
        );
    }
}

#[test]
fn body_is_not_copied() {
    use bytes::BytesMut;
    use stompede_protocol::Decoder;
    let mut buf =
        BytesMut::from(&b"SEND\ndestination:/a\ncontent-length:5\n\nhello\0SEND\n\nworld\0"[..]);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let mut decoder = Decoder::new(Limits::default());
    for expected in [&b"hello"[..], b"world"] {
        let Some(Item::Frame(f)) = decoder.decode(&mut buf).unwrap() else {
            panic!("expected a frame")
        };
        assert_eq!(&f.body[..], expected);
        let p = f.body.as_ptr() as usize;
        assert!(
            start <= p && p + f.body.len() <= end,
            "the body must point into the read buffer"
        );
    }
}

mod escaping {
    use super::*;

    const ESCAPED: &[u8] = b"MESSAGE\nfoo\\cbar:a\\nb\\\\c\\rd\n\n\0";

    #[test]
    fn v1_2_decodes_all_four_escapes() {
        let f = decode_one_as(ESCAPED, Version::V1_2);
        assert_eq!(headers_of(&f), [("foo:bar", "a\nb\\c\rd")]);
    }

    #[test]
    fn v1_1_has_no_cr_escape() {
        let err = decode_every_way(ESCAPED, Limits::default(), Version::V1_1)
            .end
            .unwrap_err();
        assert_eq!(err, stompede_protocol::DecodeError::UndefinedEscape('r'));
        let f = decode_one_as(b"MESSAGE\nfoo\\cbar:a\\nb\\\\c\n\n\0", Version::V1_1);
        assert_eq!(headers_of(&f), [("foo:bar", "a\nb\\c")]);
    }

    #[test]
    fn v1_0_has_no_escapes() {
        let f = decode_one_as(ESCAPED, Version::V1_0);
        assert_eq!(headers_of(&f), [("foo\\cbar", "a\\nb\\\\c\\rd")]);
        // Not even an "undefined" one.
        let f = decode_one_as(b"SEND\nx:a\\tb\\\n\n\0", Version::V1_0);
        assert_eq!(headers_of(&f), [("x", "a\\tb\\")]);
    }

    #[test]
    fn never_in_connect_stomp_connected() {
        for command in ["CONNECT", "STOMP", "CONNECTED"] {
            let input = format!("{command}\nlogin:a\\cb\\t\\\npasscode:x\\ny\n\n\0");
            for version in [Version::V1_0, Version::V1_1, Version::V1_2] {
                let f = decode_one_as(input.as_bytes(), version);
                assert_eq!(
                    headers_of(&f),
                    [("login", "a\\cb\\t\\"), ("passcode", "x\\ny")]
                );
            }
        }
    }

    #[test]
    fn encode_escapes_per_version() {
        use bytes::BytesMut;
        use stompede_protocol::encode;
        let f = frame(Command::Message, &[("k:\\", "a:b\nc\\d\re")], b"");
        let enc = |v| {
            let mut out = BytesMut::new();
            encode(&f, v, &mut out);
            out
        };
        assert_eq!(
            &enc(Version::V1_2)[..],
            b"MESSAGE\nk\\c\\\\:a\\cb\\nc\\\\d\\re\n\n\0"
        );
        assert_eq!(
            &enc(Version::V1_1)[..],
            b"MESSAGE\nk\\c\\\\:a\\cb\\nc\\\\d\re\n\n\0"
        );
        assert_eq!(&enc(Version::V1_0)[..], b"MESSAGE\nk:\\:a:b\nc\\d\re\n\n\0");
    }

    #[test]
    fn encode_never_escapes_connect_stomp_connected() {
        use bytes::BytesMut;
        use stompede_protocol::encode;
        for command in [Command::Connect, Command::Stomp, Command::Connected] {
            let f = frame(command, &[("passcode", "a:b\\c")], b"");
            for version in [Version::V1_0, Version::V1_1, Version::V1_2] {
                let mut out = BytesMut::new();
                encode(&f, version, &mut out);
                assert_eq!(out, format!("{command}\npasscode:a:b\\c\n\n\0").as_bytes());
            }
        }
    }
}

mod encoding {
    use super::*;
    use bytes::BytesMut;
    use stompede_protocol::{encode, encode_heartbeat, encoded_len, PreparedMessage};

    fn encoded(f: &Frame) -> BytesMut {
        let mut out = BytesMut::new();
        encode(f, Version::V1_2, &mut out);
        assert_eq!(out.len(), encoded_len(f, Version::V1_2));
        out
    }

    #[test]
    fn writes_spec_frames_byte_for_byte() {
        let f = frame(Command::Connected, &[("version", "1.2")], b"");
        assert_eq!(&encoded(&f)[..], b"CONNECTED\nversion:1.2\n\n\0");
        let f = frame(Command::Receipt, &[("receipt-id", "77")], b"");
        assert_eq!(&encoded(&f)[..], b"RECEIPT\nreceipt-id:77\n\n\0");
        let f = frame(
            Command::Message,
            &[
                ("subscription", "0"),
                ("message-id", "007"),
                ("destination", "/queue/a"),
            ],
            b"hello queue a",
        );
        assert_eq!(
            &encoded(&f)[..],
            b"MESSAGE\nsubscription:0\nmessage-id:007\ndestination:/queue/a\ncontent-length:13\n\nhello queue a\0"
        );
    }

    #[test]
    fn content_length_is_rewritten_not_trusted() {
        let f = frame(
            Command::Send,
            &[("content-length", "999"), ("destination", "/a")],
            b"a\0b",
        );
        assert_eq!(
            &encoded(&f)[..],
            b"SEND\ndestination:/a\ncontent-length:3\n\na\0b\0"
        );
        let f = frame(Command::Send, &[("content-length", "999")], b"");
        assert_eq!(&encoded(&f)[..], b"SEND\n\n\0");
    }

    #[test]
    fn error_frame_round_trips() {
        let f = frame(
            Command::Error,
            &[("message", "malformed frame received")],
            ERROR_BODY.as_bytes(),
        );
        let back = decode_one(&encoded(&f));
        assert_eq!(
            back.headers.get("message"),
            Some("malformed frame received")
        );
        assert_eq!(
            back.headers.get("content-length"),
            Some(&*ERROR_BODY.len().to_string())
        );
        assert_eq!(back.body, f.body);
    }

    #[test]
    fn heartbeat_is_one_lf() {
        let mut out = BytesMut::new();
        encode_heartbeat(&mut out);
        assert_eq!(&out[..], b"\n");
    }

    #[test]
    fn prepared_message_stamps_subscription_and_ack() {
        let headers = [
            ("destination", "/topic/comments.42"),
            ("message-id", "m-1"),
            ("subscription", "spoof"),
            ("content-length", "1"),
        ]
        .into_iter()
        .collect();
        let msg = PreparedMessage::new(headers, bytes::Bytes::from_static(b"{\"text\":\"hi\"}"));
        assert!(msg.body_is_utf8());
        let mut out = BytesMut::new();
        msg.write_for(Version::V1_2, "sub:1", Some("ack-7"), &mut out);
        assert_eq!(
            out.len(),
            msg.len_for(Version::V1_2, "sub:1", Some("ack-7"))
        );
        assert_eq!(
            &out[..],
            &b"MESSAGE\nsubscription:sub\\c1\nack:ack-7\ndestination:/topic/comments.42\nmessage-id:m-1\nsubscription:spoof\ncontent-length:13\n\n{\"text\":\"hi\"}\0"[..]
        );
        let f = decode_one(&out);
        assert_eq!(
            f.headers.get("subscription"),
            Some("sub:1"),
            "the stamped subscription wins"
        );
        // Two subscribers in one buffer, one without ack, one on STOMP 1.0.
        let mut out = BytesMut::new();
        msg.write_for(Version::V1_2, "a", None, &mut out);
        msg.write_for(Version::V1_2, "b", None, &mut out);
        let outcome = decode_every_way(&out, Limits::default(), Version::V1_2);
        assert_eq!(outcome.items.len(), 2);
        let mut out = BytesMut::new();
        msg.write_for(Version::V1_0, "s:1", None, &mut out);
        assert!(out.starts_with(b"MESSAGE\nsubscription:s:1\ndestination:"));
    }

    #[test]
    fn prepared_message_stamps_extra_headers_of_one_subscriber() {
        let headers = [("destination", "/a"), ("x-gap", "false")]
            .into_iter()
            .collect();
        let msg = PreparedMessage::new(headers, bytes::Bytes::from_static(b"hi"));
        let extra = [("x-gap", "true")];
        for version in [Version::V1_0, Version::V1_1, Version::V1_2] {
            let mut out = BytesMut::new();
            msg.write_for_with(version, "s", None, &extra, &mut out);
            assert_eq!(out.len(), msg.len_for_with(version, "s", None, &extra));
            let f = decode_one(&out);
            assert_eq!(f.headers.get("x-gap"), Some("true"), "the stamp wins");
        }
        let mut out = BytesMut::new();
        msg.write_for_with(Version::V1_2, "s", Some("7"), &extra, &mut out);
        assert!(out.starts_with(b"MESSAGE\nsubscription:s\nack:7\nx-gap:true\ndestination:/a\n"));
    }

    #[test]
    fn prepared_message_with_empty_and_binary_body() {
        let msg = PreparedMessage::new(
            [("destination", "/a")].into_iter().collect(),
            bytes::Bytes::from_static(b"\xff\0"),
        );
        assert!(!msg.body_is_utf8());
        let mut out = BytesMut::new();
        msg.write_for(Version::V1_2, "0", None, &mut out);
        assert_eq!(&decode_one(&out).body[..], b"\xff\0");
        let msg = PreparedMessage::new(Default::default(), bytes::Bytes::new());
        let mut out = BytesMut::new();
        msg.write_for(Version::V1_2, "0", None, &mut out);
        assert_eq!(&out[..], b"MESSAGE\nsubscription:0\ncontent-length:0\n\n\0");
    }
}
