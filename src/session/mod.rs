//! One STOMP session: [`state`] is the protocol state machine (frames in,
//! frames out, no sockets); [`connection`] is the I/O loop around it.

pub mod connection;
pub mod message_limit;
pub mod relocation;
pub mod state;
pub mod writer;

pub use state::{Flow, Session};
