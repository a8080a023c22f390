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
//!
//! That one-pair figure moves by 10x on some boxes from run to run (the
//! sender sleeps between calls, so each call may find a cold CPU). The
//! fan-out floor beside it is the shape the broker's unbatched path has:
//! `FANOUT_SOCKETS` loopback connections whose reader blocks in `epoll` on
//! another thread (as a subscriber's client does), and rounds of one small
//! `send()` to each of them back to back, a pause between rounds (as
//! between publishes). Per send, it reports the wall time and the sending
//! thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), medians over the rounds.
//! The broker's CPU per unbatched delivery is read against the second one,
//! and the time N such sends take is what fanning one message out to N
//! readers cannot beat on one core. About 1 s.

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
    /// The fan-out floor (see the module's doc), if it could be measured.
    pub fanout: Option<FanoutFloor>,
    /// Why not, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout_error: Option<String>,
}

/// Connections of the fan-out floor (as many as the issue-15 scenario's
/// readers: with 1,000 the sends ran about a third cheaper here, the
/// sockets' state fitting the caches better), and its rounds (after `FANOUT_WARMUP`).
const FANOUT_SOCKETS: usize = 5000;
const FANOUT_ROUNDS: usize = 15;
const FANOUT_WARMUP: usize = 2;
/// Between rounds: long enough for the reader to go back to sleep in `epoll_wait`.
const FANOUT_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// One small `send()` to each of many connections in turn.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutFloor {
    /// Median over the rounds of wall microseconds per send.
    pub send_us: f64,
    /// Median over the rounds of the sender's CPU microseconds per send.
    pub cpu_us: f64,
    /// The rounds' spread of `cpu_us`.
    pub cpu_us_min: f64,
    pub cpu_us_max: f64,
    pub sockets: usize,
    pub rounds: usize,
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
        let mut floor = Floor::from_samples(samples, now_ns() - started);
        // A box that cannot open the sockets still gets the one-pair floor.
        match FanoutFloor::measure() {
            Ok(fanout) => floor.fanout = Some(fanout),
            Err(error) => floor.fanout_error = Some(error),
        }
        floor.measured_in_ms = (now_ns() - started) as f64 / 1e6;
        Ok(floor)
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
            fanout: None,
            fanout_error: None,
        }
    }

    /// The table's line for it.
    pub fn describe(&self) -> String {
        let fanout = match &self.fanout {
            Some(fanout) => format!("; {}", fanout.describe()),
            None => format!(
                "; fan-out floor not measured: {}",
                self.fanout_error.as_deref().unwrap_or("?")
            ),
        };
        format!(
            "one {}-byte loopback send() = {:.1} us (median of {}; p10 {:.1}, p90 {:.1}){fanout}",
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

impl FanoutFloor {
    pub fn measure() -> Result<FanoutFloor, String> {
        let fail = |e: std::io::Error| format!("fan-out floor: {e}");
        let listener = TcpListener::bind("127.0.0.1:0").map_err(fail)?;
        let addr = listener.local_addr().map_err(fail)?;
        let mut senders = Vec::with_capacity(FANOUT_SOCKETS);
        let mut receivers = Vec::with_capacity(FANOUT_SOCKETS);
        for _ in 0..FANOUT_SOCKETS {
            let sender = TcpStream::connect(addr).map_err(fail)?;
            let (receiver, _) = listener.accept().map_err(fail)?;
            sender.set_nodelay(true).map_err(fail)?;
            receiver.set_nonblocking(true).map_err(fail)?;
            senders.push(sender);
            receivers.push(receiver);
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let stop = stop.clone();
            std::thread::spawn(move || read_until_stopped(&receivers, &stop))
        };
        let payload = [b'x'; BYTES];
        let mut wall_us = Vec::with_capacity(FANOUT_ROUNDS);
        let mut cpu_us = Vec::with_capacity(FANOUT_ROUNDS);
        let mut failure = None;
        'rounds: for round in 0..FANOUT_WARMUP + FANOUT_ROUNDS {
            std::thread::sleep(FANOUT_PAUSE);
            let (wall_before, cpu_before) = (now_ns(), thread_cpu_ns());
            for sender in &senders {
                // SAFETY: the socket is open and owned by `senders`; the buffer is ours.
                let sent = unsafe {
                    libc::send(
                        sender.as_raw_fd(),
                        payload.as_ptr().cast(),
                        payload.len(),
                        libc::MSG_NOSIGNAL,
                    )
                };
                if sent != BYTES as isize {
                    failure = Some(format!(
                        "fan-out floor: send() returned {sent}: {}",
                        std::io::Error::last_os_error()
                    ));
                    break 'rounds;
                }
            }
            let (wall_after, cpu_after) = (now_ns(), thread_cpu_ns());
            if round >= FANOUT_WARMUP {
                let per_send = |ns: u64| ns as f64 / 1000.0 / FANOUT_SOCKETS as f64;
                wall_us.push(per_send(wall_after - wall_before));
                cpu_us.push(per_send(cpu_after - cpu_before));
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let read_failure = reader
            .join()
            .unwrap_or_else(|_| Some("reader panicked".into()));
        if let Some(failure) = failure.or(read_failure) {
            return Err(failure);
        }
        Ok(FanoutFloor::from_rounds(wall_us, cpu_us))
    }

    fn from_rounds(mut wall_us: Vec<f64>, mut cpu_us: Vec<f64>) -> FanoutFloor {
        let median = |values: &mut Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied().unwrap_or(0.0)
        };
        let rounds = cpu_us.len();
        let send_us = median(&mut wall_us);
        let cpu = median(&mut cpu_us);
        FanoutFloor {
            send_us,
            cpu_us: cpu,
            cpu_us_min: cpu_us.first().copied().unwrap_or(0.0),
            cpu_us_max: cpu_us.last().copied().unwrap_or(0.0),
            sockets: FANOUT_SOCKETS,
            rounds,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "fan-out floor, one {BYTES}-byte send() to each of {} readers in turn: \
             {:.1} us wall, {:.1} us CPU (range {:.1}-{:.1}) per send, medians of {} rounds",
            self.sockets, self.send_us, self.cpu_us, self.cpu_us_min, self.cpu_us_max, self.rounds
        )
    }
}

/// The sending thread's CPU time so far, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The readers' side of the fan-out floor: one thread blocked in
/// `epoll_wait` on every receiving socket, reading what arrives, as a
/// subscriber's client does. Returns an error, if any.
fn read_until_stopped(
    receivers: &[TcpStream],
    stop: &std::sync::atomic::AtomicBool,
) -> Option<String> {
    // SAFETY: plain syscalls on descriptors `receivers` owns for the whole call.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Some(format!(
            "epoll_create1: {}",
            std::io::Error::last_os_error()
        ));
    }
    for (index, receiver) in receivers.iter().enumerate() {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: index as u64,
        };
        if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, receiver.as_raw_fd(), &mut event) }
            != 0
        {
            unsafe { libc::close(epoll) };
            return Some(format!("epoll_ctl: {}", std::io::Error::last_os_error()));
        }
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = [0u8; 4096];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let ready =
            unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 50) };
        for event in events.iter().take(ready.max(0) as usize) {
            let mut receiver = &receivers[event.u64 as usize];
            while matches!(receiver.read(&mut buf), Ok(read) if read > 0) {}
        }
    }
    unsafe { libc::close(epoll) };
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fan-out floor holds 10,000 descriptors for a moment: two at once
    /// would pass the box's 20,000.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn the_floor_is_measured_quickly_and_reads_against_figures() {
        let _one = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
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

    #[test]
    fn the_fanout_floor_is_measured_with_its_spread() {
        let _one = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let fanout = &FanoutFloor::measure().unwrap();
        assert_eq!(
            (fanout.sockets, fanout.rounds),
            (FANOUT_SOCKETS, FANOUT_ROUNDS)
        );
        assert!(fanout.cpu_us > 0.0 && fanout.send_us > 0.0, "{fanout:?}");
        assert!(fanout.cpu_us_min <= fanout.cpu_us && fanout.cpu_us <= fanout.cpu_us_max);
        let fanout = FanoutFloor::from_rounds(vec![9.0, 7.0, 8.0], vec![6.0, 4.0, 5.0]);
        assert_eq!((fanout.send_us, fanout.cpu_us), (8.0, 5.0));
        assert_eq!((fanout.cpu_us_min, fanout.cpu_us_max), (4.0, 6.0));
        assert!(fanout.describe().contains("5.0 us CPU (range 4.0-6.0)"));
    }
}
