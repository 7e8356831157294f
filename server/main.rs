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

async fn serve(config: Config) -> anyhow::Result<()> {
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
    let result = match Cli::parse().command {
        Command::Serve(args) => Config::load(args.options, args.config.as_deref())
            .map_err(anyhow::Error::from)
            .and_then(|config| {
                init_tracing(config.log_format);
                on_runtime(Some(config.worker_threads), serve(config))
            }),
        Command::Machines(cmd) => on_runtime(None, async move {
            let clock = clock::SystemClock;
            bootplane::cli::machines(cmd, &clock, &mut std::io::stdout().lock()).await
        }),
        Command::Images(cmd) => on_runtime(None, async move {
            bootplane::cli::images(cmd, &mut std::io::stdout().lock()).await
        }),
        Command::Cluster(cmd) => on_runtime(None, async move {
            let clock = clock::SystemClock;
            bootplane::cli::cluster(cmd, &clock, &mut std::io::stdout().lock()).await
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bootplane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `task` to its end on a multi-threaded runtime of `workers` threads (tokio's default,
/// one per CPU, when `None`): `serve` sizes its runtime from its settings.
fn on_runtime<E>(
    workers: Option<usize>,
    task: impl std::future::Future<Output = Result<(), E>>,
) -> anyhow::Result<()>
where
    anyhow::Error: From<E>,
{
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(task)?)
}
