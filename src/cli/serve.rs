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
        let hup = signal(SignalKind::hangup()).context("cannot install a SIGHUP handler")?;
        let (reload, reloads) = tokio::sync::mpsc::channel(1);
        tokio::spawn(reload_on_signal(hup, args.config.clone(), args.listen, reload));
        crate::daemon::run(&config, listener, shutdown, reloads, |addr| {
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

/// Re-reads the configuration file on each SIGHUP and hands a valid one to the daemon; a file
/// that does not validate is refused with an ERROR naming the problem.
async fn reload_on_signal(
    mut hup: Signal,
    path: Option<PathBuf>,
    listen: Option<SocketAddr>,
    daemon: tokio::sync::mpsc::Sender<Config>,
) {
    while hup.recv().await.is_some() {
        let Some(path) = &path else {
            tracing::info!("SIGHUP received: the demo has no configuration file to reload");
            continue;
        };
        tracing::info!(config = %path.display(), "SIGHUP received: reloading the configuration");
        let file = path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&file)).await;
        match loaded {
            Ok(Ok(mut config)) => {
                // `--listen` on the command line goes on overriding the file.
                if let Some(listen) = listen {
                    config.server.listen = listen;
                }
                if daemon.send(config).await.is_err() {
                    return;
                }
            }
            Ok(Err(e)) => tracing::error!(
                "configuration reload refused, going on with the previous one: {}",
                crate::error::error_chain(&e)
            ),
            Err(e) => tracing::error!("configuration reload failed: {e}"),
        }
    }
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
