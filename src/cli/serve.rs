//! `reconciled serve`: run the daemon until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use super::demo;
use crate::config::Config;
use crate::settings::ConfigError;

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration file.
    #[arg(long, short, value_name = "FILE", required_unless_present = "demo")]
    config: Option<PathBuf>,
    /// Run the built-in demo: a Stripe endpoint with a public test secret, on loopback only,
    /// with a store, a shop and sample events in the current directory, made afresh on each run.
    #[arg(long, conflicts_with = "config")]
    demo: bool,
    /// Listen here instead of the configured address.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

pub(super) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => demo::config()?,
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if args.demo && !config.server.listen.ip().is_loopback() {
        return Err(ConfigError::Invalid {
            path: PathBuf::from("--demo"),
            key: "--listen".into(),
            message: format!(
                "{} is not a loopback address; the demo uses a public test secret and listens on 127.0.0.1 or ::1 only",
                config.server.listen
            ),
        }
        .into());
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        // Only once the address is ours: a demo already running here keeps its files.
        let fresh = if args.demo {
            Some(demo::start_afresh().context("cannot prepare the demo's files")?)
        } else {
            None
        };
        let shutdown = CancellationToken::new();
        // Installed before serving, so an early SIGTERM is never the default (kill) action.
        let term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
        let int = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
        tokio::spawn(stop_on_signal(term, int, shutdown.clone()));
        crate::daemon::run(&config, listener, shutdown, |addr| {
            if let Some(deleted) = fresh {
                print!("{}", demo::instructions(addr, deleted));
                let _ = std::io::Write::flush(&mut std::io::stdout());
            }
        })
        .await?;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn stop_on_signal(mut term: Signal, mut int: Signal, shutdown: CancellationToken) {
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!("{name} received: no longer accepting, draining in-flight requests");
    shutdown.cancel();
    // A second signal means "now": nothing unacknowledged is lost by exiting, since nothing
    // is acknowledged before its commit.
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting without waiting for the drain");
    std::process::exit(1);
}
