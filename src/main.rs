//! `echolia`: the server (and, as they arrive, the operator commands).

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use echolia::app::{self, AppState};
use echolia::clock::SystemClock;
use echolia::config::Config;
use echolia::ops::telemetry;

#[derive(Debug, Parser)]
#[command(name = "echolia", version, about = "Echolia Sync: zero-knowledge sync backend")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the API server (the default).
    Serve,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("echolia: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("echolia: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(serve(config)),
    }
}

async fn serve(config: Config) -> ExitCode {
    let bind_addr = config.bind_addr;
    let state = match AppState::build(config, Arc::new(SystemClock)).await {
        Ok(state) => state,
        Err(err) => {
            tracing::error!(error = %err, "cannot open storage");
            eprintln!("echolia: cannot open storage: {err}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(bind_addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("echolia: cannot listen on {bind_addr} (BIND_ADDR): {err}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        addr = %bind_addr,
        environment = ?state.config.environment,
        data_dir = %state.config.data_dir.display(),
        "echolia listening"
    );
    match app::serve(listener, state, app::shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %err, "server error");
            ExitCode::FAILURE
        }
    }
}
