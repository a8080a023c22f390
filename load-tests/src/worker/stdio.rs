//! `stompede-load worker`: a worker in a child process, its commands read
//! from stdin and its events written to stdout, one JSON line each
//! (`wire.rs`).

use crate::wire::{from_line, to_line, Command, WorkerSpec};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// A worker's spec: the first line on stdin, as JSON.
pub fn read_spec<T: serde::de::DeserializeOwned>(worker: &str) -> Result<T, String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("reading the {worker} spec: {e}"))?;
    from_line(&line).map_err(|e| format!("bad {worker} spec: {e}"))
}

/// Reads the spec (the first line) and then commands from stdin, runs the
/// worker, and writes its events to stdout until the last one.
pub fn process_main() -> Result<(), String> {
    let spec: WorkerSpec = read_spec("worker")?;
    // Before the runtime's threads exist, so that they inherit it.
    crate::sys::lower_priority(spec.nice)?;
    let runtime = crate::runtime()?;
    runtime.block_on(async move {
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let (event_tx, mut event_rx) = mpsc::unbounded_channel();
        tokio::spawn(forward_commands::<Command>(command_tx, "worker"));
        tokio::spawn(super::run(spec, command_rx, event_tx));
        let mut stdout = tokio::io::stdout();
        while let Some(event) = event_rx.recv().await {
            let last = event.is_last();
            let line = to_line(&event).unwrap_or_else(|e| format!("{{\"Fatal\":\"{e}\"}}\n"));
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.flush().await.is_err()
                || last
            {
                break;
            }
        }
    });
    Ok(())
}

/// Reads one command per stdin line into `commands` until stdin closes (the
/// coordinator is gone: dropping `commands` stops the worker) or the worker
/// stops listening. `who` names the worker in complaints about a bad line.
pub async fn forward_commands<C: serde::de::DeserializeOwned>(
    commands: mpsc::UnboundedSender<C>,
    who: &'static str,
) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match from_line::<C>(&line) {
            Ok(command) => {
                if commands.send(command).is_err() {
                    break;
                }
            }
            Err(e) => eprintln!("{who}: bad command {line:?}: {e}"),
        }
    }
}
