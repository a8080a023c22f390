//! This box's floor: what one small, unbatched `send()` over a loopback TCP
//! connection costs here. Boxes of the same kind differ by 2x in it (7 us on
//! one, 14 us on another), and every latency and throughput figure on
//! loopback is made of such calls, so each report states it and reads its
//! figures against it.
//!
//! Measured once at the start of a run: a loopback TCP pair (TCP_NODELAY)
//! and `CALLS` sends of `BYTES` bytes each, every call timed on its own;
//! the median is the floor. Each send waits for a one-byte answer from a
//! thread at the other end before the next, so that no call finds the
//! previous segment still queued (back to back, the kernel would cork them
//! into one segment: "autocorking", and a call would cost ~0.3 us). On
//! loopback the receiving side's TCP processing runs inside the sender's
//! call, so it is counted too, as it is in the broker's writes. Only the
//! `send()` is timed, not the answer. About 0.1-0.3 s.

use crate::sys::now_ns;
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

/// Timed calls (after `WARMUP` untimed ones).
const CALLS: usize = 3000;
const WARMUP: usize = 100;
/// Bytes per call: about one small STOMP MESSAGE's WebSocket frame.
const BYTES: usize = 64;
/// The measurement gives up past this (a box so loaded that the floor
/// would mean nothing anyway).
const BUDGET_NS: u64 = 2_000_000_000;

/// The floor as reported (`floor` in the JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// Median microseconds per `send()`: the floor.
    pub send_us: f64,
    pub send_us_p10: f64,
    pub send_us_p90: f64,
    pub calls: usize,
    pub bytes_per_call: usize,
    /// How long measuring took, ms.
    pub measured_in_ms: f64,
}

impl Floor {
    /// Measures it; an error (no loopback, a stuck box) is reported, not fatal.
    pub fn measure() -> Result<Floor, String> {
        let started = now_ns();
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("floor: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("floor: {e}"))?;
        let mut sender = TcpStream::connect(addr).map_err(|e| format!("floor: {e}"))?;
        let (mut receiver, _) = listener.accept().map_err(|e| format!("floor: {e}"))?;
        for socket in [&sender, &receiver] {
            socket
                .set_nodelay(true)
                .map_err(|e| format!("floor: {e}"))?;
        }
        // Answers each whole payload with one byte.
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; BYTES];
            while receiver.read_exact(&mut buf).is_ok() {
                if receiver.write_all(b"!").is_err() {
                    break;
                }
            }
        });
        let payload = [b'x'; BYTES];
        let fd = sender.as_raw_fd();
        let mut samples = Vec::with_capacity(CALLS);
        let mut failure = None;
        for call in 0..WARMUP + CALLS {
            let before = now_ns();
            // SAFETY: `fd` is the open socket `sender` owns; the buffer is ours.
            let sent = unsafe {
                libc::send(
                    fd,
                    payload.as_ptr().cast(),
                    payload.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            let after = now_ns();
            if sent != BYTES as isize {
                failure = Some(format!(
                    "floor: send() returned {sent}: {}",
                    std::io::Error::last_os_error()
                ));
                break;
            }
            if call >= WARMUP {
                samples.push(after - before);
            }
            let mut answer = [0u8; 1];
            if let Err(e) = sender.read_exact(&mut answer) {
                failure = Some(format!("floor: reading the answer: {e}"));
                break;
            }
            if after - started > BUDGET_NS {
                failure = Some("floor: measuring took over 2 s; the box is too busy".into());
                break;
            }
        }
        drop(sender);
        let _ = echo.join();
        if let Some(failure) = failure {
            return Err(failure);
        }
        Ok(Floor::from_samples(samples, now_ns() - started))
    }

    fn from_samples(mut samples_ns: Vec<u64>, took_ns: u64) -> Floor {
        samples_ns.sort_unstable();
        let at = |q: f64| {
            let i = ((samples_ns.len() as f64 - 1.0) * q).round() as usize;
            samples_ns.get(i).copied().unwrap_or(0) as f64 / 1000.0
        };
        Floor {
            send_us: at(0.5),
            send_us_p10: at(0.1),
            send_us_p90: at(0.9),
            calls: samples_ns.len(),
            bytes_per_call: BYTES,
            measured_in_ms: took_ns as f64 / 1e6,
        }
    }

    /// The table's line for it.
    pub fn describe(&self) -> String {
        format!(
            "one {}-byte loopback send() = {:.1} us (median of {}; p10 {:.1}, p90 {:.1})",
            self.bytes_per_call, self.send_us, self.calls, self.send_us_p10, self.send_us_p90
        )
    }

    /// A latency in floors: how many unbatched sends it is worth.
    pub fn latency_in_floors(&self, millis: f64) -> f64 {
        millis * 1000.0 / self.send_us.max(1e-3)
    }

    /// A rate (things per second) in floors: the cores that many unbatched
    /// sends a second would keep busy (above 1 means the broker batches, or
    /// has more than one core).
    pub fn rate_in_floors(&self, per_sec: f64) -> f64 {
        per_sec * self.send_us * 1e-6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_measured_quickly_and_reads_against_figures() {
        let floor = Floor::measure().unwrap();
        assert_eq!(floor.calls, CALLS);
        assert!(floor.send_us > 0.0 && floor.send_us_p10 <= floor.send_us);
        assert!(floor.send_us <= floor.send_us_p90);
        assert!(floor.measured_in_ms < 2000.0, "{floor:?}");
        let floor = Floor::from_samples(vec![10_000, 14_000, 20_000], 1);
        assert_eq!(floor.send_us, 14.0);
        assert_eq!(floor.latency_in_floors(14.0), 1000.0);
        assert!((floor.rate_in_floors(1_000_000.0) - 14.0).abs() < 1e-9);
        assert!(floor.describe().contains("14.0 us"));
    }
}
