//! Replays the session fuzz target's corpus (`fuzz/corpus/session`: the
//! hand-written seeds and what the fuzzer kept) with the target's own checks
//! (`fuzz/fuzz_targets/session_check.rs`), so an input that once passed keeps
//! passing without cargo-fuzz. The decoder's saved inputs are replayed by
//! `protocol/tests/fuzz_regressions.rs`.

#[path = "../fuzz/fuzz_targets/session_check.rs"]
mod session_check;

#[test]
fn every_input_in_the_session_corpus_passes_the_targets_checks() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/session");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("fuzz/corpus/session exists")
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    for path in &paths {
        let data = std::fs::read(path).unwrap();
        eprintln!("replaying {}", path.display());
        session_check::check(&data);
    }
    // The seeds alone are 26; an emptied or moved corpus must not pass.
    assert!(
        paths.len() >= 26,
        "only {} inputs in {}",
        paths.len(),
        dir.display()
    );
}
