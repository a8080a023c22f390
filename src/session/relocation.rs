//! A session set up on the handshake runtime, then moved to the sessions'.
//!
//! In a stampede (a push notification sends tens of thousands of readers to
//! one node at once) every new session's CONNECT and SUBSCRIBE cost the
//! broker about as much as its WebSocket handshake. Served on the sessions'
//! runtime, they compete with the deliveries to the readers already there;
//! served on the handshake runtime, whose threads run at a lower CPU
//! priority (`handshake-nice`), they wait instead. So a session starts
//! where its handshake was served and moves to the sessions' runtime once
//! set up (see `connection::serve` for when): the session's boxed future
//! is handed over, its socket and timer are registered anew there, and the
//! task it was set up in ends (with everything the upgrade needed).
//! Nothing may keep a waker of that task: a waker keeps the task's memory.

use crate::broker::Broker;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tracing::Instrument;

/// A session's socket, as its stream holds it: taken out while it moves
/// from one runtime's I/O driver to another's.
pub trait MovableSocket {
    /// The TCP socket, if this stream is one (`None`: nothing to move).
    fn take_socket(&mut self) -> Option<Arc<TcpStream>>;
    /// Puts back the socket, now registered with this runtime.
    fn put_socket(&mut self, socket: Arc<TcpStream>);
}

/// Held by a session that runs under [`SetUpHere`]: [`Relocation::hop`]
/// moves it to the sessions' runtime.
pub struct Relocation {
    requested: Arc<AtomicBool>,
}

impl Relocation {
    /// Resumes the calling session on the sessions' runtime: the task it
    /// runs in ends here, and a task there polls it from this point on.
    pub async fn hop(self) {
        Hop {
            requested: self.requested,
            asked: false,
        }
        .await
    }
}

/// Pending once (having asked [`SetUpHere`] to move the future), then ready.
struct Hop {
    requested: Arc<AtomicBool>,
    asked: bool,
}

impl Future for Hop {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if self.asked {
            return Poll::Ready(());
        }
        self.asked = true;
        // No wake-up: `SetUpHere` sees the request as this poll returns,
        // and the task it spawns polls again.
        self.requested.store(true, Ordering::Relaxed);
        Poll::Pending
    }
}

type Session = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs a session on the current runtime until it calls
/// [`Relocation::hop`], then spawns the rest of it on `sessions` (as one of
/// the broker's tasks) and completes.
pub struct SetUpHere {
    session: Option<Session>,
    requested: Arc<AtomicBool>,
    sessions: Handle,
    broker: Arc<Broker>,
}

impl SetUpHere {
    pub fn new<F>(
        broker: Arc<Broker>,
        sessions: Handle,
        session: impl FnOnce(Relocation) -> F,
    ) -> SetUpHere
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let requested = Arc::new(AtomicBool::new(false));
        let relocation = Relocation {
            requested: requested.clone(),
        };
        SetUpHere {
            session: Some(Box::pin(session(relocation))),
            requested,
            sessions,
            broker,
        }
    }
}

impl Future for SetUpHere {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let Some(session) = this.session.as_mut() else {
            return Poll::Ready(());
        };
        if session.as_mut().poll(cx).is_ready() {
            this.session = None;
            return Poll::Ready(());
        }
        if this.requested.swap(false, Ordering::Relaxed) {
            let rest = this.session.take().expect("checked above");
            let _on_sessions = this.sessions.enter();
            // The session's span goes with it (it is polled inside it here).
            this.broker.spawn(rest.instrument(tracing::Span::current()));
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Moves a session's socket to the runtime this resumes on: takes it from
/// the publishers (`outbox`) and from the stream (`io`), deregisters it
/// here, hops, and registers it there. An error ends the session (the
/// socket could not be registered again).
pub async fn move_session<S: MovableSocket>(
    relocation: Relocation,
    outbox: &crate::outbox::Outbox,
    io: &mut S,
) -> std::io::Result<()> {
    // Nothing may use the socket while it moves: publishers let go of it
    // under the outbox's lock, and this task's stream is not polled.
    let publishers = outbox.take_socket();
    let Some(socket) = io.take_socket() else {
        relocation.hop().await;
        return Ok(());
    };
    drop(publishers);
    let socket = match Arc::try_unwrap(socket) {
        Ok(socket) => socket,
        Err(shared) => {
            // Cannot happen (the outbox and the stream are its only
            // holders): the socket stays with the handshake runtime's
            // driver, which still serves it.
            tracing::warn!("a session's socket is shared elsewhere; not moving it");
            outbox.put_socket(shared.clone());
            io.put_socket(shared);
            relocation.hop().await;
            return Ok(());
        }
    };
    let detached = socket.into_std()?;
    relocation.hop().await;
    let socket = Arc::new(TcpStream::from_std(detached)?);
    outbox.put_socket(socket.clone());
    io.put_socket(socket);
    Ok(())
}
