//! A WebSocket client written byte by byte over TCP, for what a real client
//! library will not send (invalid UTF-8 in a text frame, a half handshake)
//! or does on its own (reading).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PATIENCE: Duration = Duration::from_secs(10);

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;

/// The upgrade request, as a browser would send it (without Origin).
pub fn upgrade_request(addr: SocketAddr, extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

pub struct RawWs {
    pub stream: TcpStream,
}

impl RawWs {
    /// Opens a WebSocket (no subprotocol) and reads the 101 response.
    pub async fn open(addr: SocketAddr) -> RawWs {
        RawWs::handshake(TcpStream::connect(addr).await.unwrap(), addr).await
    }

    /// Like [`open`](Self::open), with a 4 KiB receive buffer, so that a
    /// client that stops reading fills the server's socket quickly.
    pub async fn open_small_window(addr: SocketAddr) -> RawWs {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        RawWs::handshake(socket.connect(addr).await.unwrap(), addr).await
    }

    async fn handshake(mut stream: TcpStream, addr: SocketAddr) -> RawWs {
        stream
            .write_all(upgrade_request(addr, "").as_bytes())
            .await
            .unwrap();
        // Byte by byte up to the blank line, so no frame byte is swallowed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = tokio::time::timeout(PATIENCE, stream.read_u8())
                .await
                .expect("handshake answer")
                .unwrap();
            head.push(byte);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        RawWs { stream }
    }

    /// Sends one masked, final frame.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x12, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, byte)| byte ^ mask[i % 4]),
        );
        self.stream.write_all(&frame).await.unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(OP_TEXT, text.as_bytes()).await;
    }

    /// The next frame from the server: (opcode, payload); None at EOF.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let read = async {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).await.ok()?;
            let len = match head[1] & 0x7f {
                126 => u64::from(self.stream.read_u16().await.ok()?),
                127 => self.stream.read_u64().await.ok()?,
                n => u64::from(n),
            };
            let mut payload = vec![0; len as usize];
            self.stream.read_exact(&mut payload).await.ok()?;
            Some((head[0] & 0x0f, payload))
        };
        tokio::time::timeout(PATIENCE, read)
            .await
            .expect("a frame or EOF in time")
    }

    /// Reads frames up to the server's close frame; returns the data frames'
    /// payloads and the close code.
    pub async fn until_close(&mut self) -> (Vec<Vec<u8>>, Option<u16>) {
        let mut data = Vec::new();
        while let Some((opcode, payload)) = self.read_frame().await {
            if opcode == OP_CLOSE {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                return (data, code);
            }
            data.push(payload);
        }
        (data, None)
    }
}
