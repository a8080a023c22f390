//! Socket options for accepted connections: TCP keepalive (`tcp-keepalive`)
//! and `TCP_USER_TIMEOUT` (`write-timeout`), set with `socket2`.

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
}
