//! Fuzzes the STOMP session state machine; the checks are in
//! `session_check.rs` (shared with the corpus replay in the root crate's
//! `tests/session_fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod session_check;

fuzz_target!(|data: &[u8]| session_check::check(data));
