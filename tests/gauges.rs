//! The `sessions`, `subscriptions` and `outbound_queued` gauges come back
//! down however a connection's task ends: here every task is dropped
//! mid-flight (the runtime goes away), as a panic would unwind it.

mod common;
mod raw;

use common::{config, start};
use raw::RawWs;
use std::time::Duration;

#[test]
fn gauges_come_back_when_connection_tasks_are_dropped() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (broker, reader) = runtime.block_on(async {
        let mut config = config();
        config.outbound_queue_bytes = 64 << 20;
        let broker = start(config).await;
        // A reader that stops reading, so deliveries stay queued.
        let mut reader = RawWs::open_small_window(broker.addr).await;
        reader
            .send_text("CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0")
            .await;
        reader.read_frame().await.expect("CONNECTED");
        reader
            .send_text("SUBSCRIBE\nid:0\ndestination:/topic/g\nreceipt:r\n\n\0")
            .await;
        reader.read_frame().await.expect("RECEIPT");
        let body = "x".repeat(60_000);
        for _ in 0..100 {
            broker.publish("/topic/g", &body).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let metrics = broker.broker.metrics();
        assert_eq!(metrics.sessions.with_label_values(&["1.2"]).get(), 1);
        assert_eq!(metrics.subscriptions.get(), 1);
        assert!(metrics.outbound_queued.get() > 0, "deliveries are queued");
        (broker.broker.clone(), reader)
    });
    drop(runtime);
    let metrics = broker.metrics();
    assert_eq!(metrics.sessions.with_label_values(&["1.2"]).get(), 0);
    assert_eq!(metrics.subscriptions.get(), 0);
    assert_eq!(metrics.outbound_queued.get(), 0);
    assert_eq!(metrics.connections.get(), 0);
    drop(reader);
}
