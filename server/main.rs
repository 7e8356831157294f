//! The `bootplane` binary: parse the command line, set up logging, bind, run.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use bootplane::cli::{Cli, Command};
use bootplane::config::{Config, LogFormat};
use bootplane::support::clock;
use bootplane::{app, db::Db};

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("BOOTPLANE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

async fn serve(args: bootplane::cli::ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.options, args.config.as_deref())?;
    init_tracing(config.log_format);
    app::raise_open_files_limit();
    let db = Db::open(&config.data_dir)
        .await
        .with_context(|| format!("opening the database in {}", config.data_dir.display()))?;
    let listeners = app::bind(&config).await?;
    app::run(config, db, clock::system(), listeners, shutdown_signal()).await
}

fn main() -> ExitCode {
    // Before any thread exists, so every thread gets its heap under the tuned limits.
    app::tune_allocator();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bootplane: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run_command())
}

async fn run_command() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Machines(cmd) => {
            let clock = clock::SystemClock;
            bootplane::cli::machines(cmd, &clock, &mut std::io::stdout().lock())
                .await
                .map_err(anyhow::Error::from)
        }
        Command::Images(cmd) => bootplane::cli::images(cmd, &mut std::io::stdout().lock())
            .await
            .map_err(anyhow::Error::from),
        Command::Cluster(cmd) => {
            let clock = clock::SystemClock;
            bootplane::cli::cluster(cmd, &clock, &mut std::io::stdout().lock())
                .await
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bootplane: {e:#}");
            ExitCode::FAILURE
        }
    }
}
