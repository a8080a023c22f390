//! Socket options for accepted connections: TCP keepalive (`tcp-keepalive`)
//! and `TCP_USER_TIMEOUT` (`write-timeout`), set with `socket2`; and the
//! handshake threads' lower CPU priority (`handshake-nice`).

use socket2::{SockRef, TcpKeepalive};
use std::time::Duration;
use tokio::net::TcpStream;

/// Seconds between keepalive probes once they have started.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered keepalive probes after which the kernel closes the connection.
pub const KEEPALIVE_RETRIES: u32 = 6;

/// Configures an accepted socket: no Nagle delay, keepalive after
/// `keepalive` of idleness (none when zero), and `user_timeout` as the
/// longest time sent data may stay unacknowledged (keepalive does not probe
/// while data is queued, so a peer that vanishes mid-write needs this).
pub fn configure_accepted(
    stream: &TcpStream,
    keepalive: Duration,
    user_timeout: Duration,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let socket = SockRef::from(stream);
    if !keepalive.is_zero() {
        socket.set_tcp_keepalive(
            &TcpKeepalive::new()
                .with_time(keepalive)
                .with_interval(KEEPALIVE_INTERVAL)
                .with_retries(KEEPALIVE_RETRIES),
        )?;
    }
    #[cfg(target_os = "linux")]
    socket.set_tcp_user_timeout(Some(user_timeout))?;
    #[cfg(not(target_os = "linux"))]
    let _ = user_timeout;
    Ok(())
}

/// Lowers the calling thread's CPU priority by `nice` steps (Linux: a
/// thread's nice value is its own; raising it needs no privilege). Does
/// nothing for 0, or on other systems.
pub fn lower_thread_priority(nice: u8) -> std::io::Result<()> {
    if nice == 0 {
        return Ok(());
    }
    #[cfg(target_os = "linux")]
    {
        // The two libc calls, declared here rather than adding a crate for them.
        extern "C" {
            fn gettid() -> i32;
            fn getpriority(which: i32, who: u32) -> i32;
            fn setpriority(which: i32, who: u32, prio: i32) -> i32;
        }
        const PRIO_PROCESS: i32 = 0;
        // SAFETY: plain syscalls on this thread's own id, no memory passed.
        unsafe {
            let thread = gettid() as u32;
            // getpriority may return -1 as a value; the current nice is
            // what it is, the increment is what matters.
            let current = getpriority(PRIO_PROCESS, thread);
            let target = (current + i32::from(nice)).min(19);
            if setpriority(PRIO_PROCESS, thread, target) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_options_are_set_on_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        configure_accepted(&accepted, Duration::from_secs(60), Duration::from_secs(30)).unwrap();
        let socket = SockRef::from(&accepted);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
        #[cfg(target_os = "linux")]
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(30))
        );
        assert!(accepted.nodelay().unwrap());
        drop(client);
    }

    #[test]
    fn a_thread_lowers_its_own_priority_only() {
        let nice_of_this_thread = || {
            std::fs::read_to_string("/proc/thread-self/stat")
                .ok()
                .and_then(|stat| {
                    let fields: Vec<String> = stat
                        .rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect();
                    fields.get(16)?.parse::<i32>().ok()
                })
        };
        let before = nice_of_this_thread();
        let lowered = std::thread::spawn(move || {
            lower_thread_priority(3).unwrap();
            nice_of_this_thread()
        })
        .join()
        .unwrap();
        if let (Some(before), Some(lowered)) = (before, lowered) {
            assert_eq!(lowered, (before + 3).min(19));
            assert_eq!(
                nice_of_this_thread(),
                Some(before),
                "only the calling thread"
            );
        }
        lower_thread_priority(0).unwrap();
    }
}
