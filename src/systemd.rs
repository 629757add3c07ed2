//! systemd integration (`Type=notify`): readiness, a watchdog that proves the store still
//! commits, and the stopping notice. Every call is a no-op when the daemon is not run by
//! systemd (no `$NOTIFY_SOCKET`).

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Tells systemd the daemon is serving.
pub fn ready(addr: std::net::SocketAddr) {
    let status = format!("listening on http://{addr}");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Tells systemd the daemon is stopping (draining requests, closing the store).
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining and closing the store")]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// With `WatchdogSec=` set, pings systemd at half the interval, but only after the store has
/// committed a probe write in time: a daemon whose writer is stuck (a hung disk, say) stops
/// pinging, and systemd restarts it. Returns `None` when no watchdog is configured.
pub fn watchdog(store: Store, shutdown: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let every = Duration::from_micros(usec / 2);
    tracing::info!(interval_ms = every.as_millis() as u64, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => return,
            }
            match tokio::time::timeout(every, store.probe()).await {
                Ok(Ok(())) => send(&[NotifyState::Watchdog]),
                Ok(Err(e)) => {
                    tracing::error!(error = %crate::error::error_chain(&e), "store probe failed; not pinging the systemd watchdog");
                }
                Err(_) => tracing::error!(
                    "store probe did not finish in time; not pinging the systemd watchdog"
                ),
            }
        }
    }))
}
