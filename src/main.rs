use std::io::IsTerminal;
use stompede::config::{ConfigError, LogFormat};
use stompede::Config;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match Config::load_from(std::env::args_os()) {
        Ok(config) => config,
        // --help, --version, or a bad flag: clap prints it and picks the exit code.
        Err(ConfigError::Args(error)) => error.exit(),
        Err(error) => {
            eprintln!("stompede: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr (stdout carries only the URLs banner), with colours
    // only on a terminal, so a log file or journal gets plain text.
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match config.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    let listener = match stompede::bind(config.listen) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("stompede: cannot listen on {}: {error}", config.listen);
            return std::process::ExitCode::from(1);
        }
    };
    // Installed before the banner: a SIGTERM sent as soon as the banner is
    // read must drain, not kill the process with the default action.
    let shutdown = match ShutdownSignals::install() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("stompede: cannot listen for SIGTERM/SIGINT: {error}");
            return std::process::ExitCode::from(1);
        }
    };
    let address = listener.local_addr().unwrap_or(config.listen);
    println!(
        "stompede listening: WebSocket ws://{address}{} , HTTP API http://{address}/api/v1/",
        config.ws_path
    );
    tracing::info!(%address, "listening");
    stompede::run(config, listener, shutdown.received()).await;
    std::process::ExitCode::SUCCESS
}

/// SIGINT and SIGTERM, listened for from the moment they are installed.
struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<ShutdownSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves on the first SIGINT or SIGTERM.
    async fn received(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
