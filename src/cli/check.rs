//! `reconciled check`: the alerts of the shipped Prometheus rules, for hosts without
//! Prometheus. It reads the store and prints one line per problem, in the manner of a Nagios
//! plugin: exit 0 when all is well, 1 for a warning (someone should look today), 2 for a
//! critical problem (notifications or actions are not moving), 3 when it could not check.

use std::io::Write;
use std::time::Duration;

use clap::Args;

use crate::config::Config;
use crate::store::{Store, StoreGauges};

/// Arguments of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The daemon's configuration file (its store, endpoints and sinks).
    #[arg(long, short, value_name = "FILE")]
    config: std::path::PathBuf,
    /// A notification due this long without being decided is critical.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration)]
    backlog_after: Duration,
    /// An action owed to a sink this long is critical.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = duration)]
    undelivered_after: Duration,
    /// More verification failures than this on one endpoint in the last 10 minutes is a
    /// warning (a rotated or mistyped secret fails every delivery).
    #[arg(long, value_name = "N", default_value_t = 10)]
    failures: u64,
}

fn duration(text: &str) -> Result<Duration, String> {
    crate::time::parse_duration(text)
        .ok_or_else(|| format!("\"{text}\" is not a duration such as 5m or 2h"))
}

/// How bad a problem is, as Nagios counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Look at it today.
    Warning = 1,
    /// Notifications or actions are not moving.
    Critical = 2,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// How bad.
    pub severity: Severity,
    /// One line for people: what, and the first thing to do.
    pub text: String,
}

/// The thresholds [`problems`] applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest a due row may wait to be decided.
    pub backlog_after: Duration,
    /// Longest an action may be owed to a sink.
    pub undelivered_after: Duration,
    /// Most verification failures per endpoint in the last 10 minutes.
    pub failures: u64,
}

/// The window the verification failures are counted over.
const FAILURE_WINDOW_MS: i64 = 10 * 60 * 1000;

/// The problems in what the store holds at `now_ms`, worst first. `failures` are
/// `(endpoint, at_ms)` of the recent verification failures.
pub fn problems(
    config: &Config,
    gauges: &StoreGauges,
    failures: &[(String, i64)],
    limits: Limits,
    now_ms: i64,
) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut add = |severity, text: String| out.push(Problem { severity, text });
    let age = |ms: i64| crate::time::format_age(now_ms, ms);
    let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if let Some(due) = gauges.oldest_due_ms {
        if now_ms - due > millis(limits.backlog_after) {
            let waiting: i64 = gauges
                .inbox
                .iter()
                .filter(|(s, _)| matches!(*s, "pending" | "parked"))
                .map(|(_, n)| n)
                .sum();
            add(
                Severity::Critical,
                format!(
                    "notifications are not being decided: {waiting} waiting, the oldest due for {} \
                     (is the daemon running? its log says why; reconciled inbox list --status pending)",
                    age(due)
                ),
            );
        }
    }
    for s in &gauges.sinks {
        if let Some(oldest) = s.oldest_owed_ms {
            if now_ms - oldest > millis(limits.undelivered_after) {
                add(
                    Severity::Critical,
                    format!(
                        "sink \"{}\" has {} actions undelivered, the oldest written {} ago \
                         (reconciled outbox show ID tells the last error; outbox list --undelivered --sink {})",
                        s.sink,
                        s.owed,
                        age(oldest),
                        s.sink
                    ),
                );
            }
        }
    }
    if let Some((_, dead)) = gauges.inbox.iter().find(|(s, _)| *s == "dead") {
        if *dead > 0 {
            add(
                Severity::Warning,
                format!(
                    "{dead} notifications are dead: they could not be decided (reconciled inbox list \
                     --status dead; after a fix, inbox replay ID)"
                ),
            );
        }
    }
    for s in gauges.sinks.iter().filter(|s| s.dead > 0) {
        add(
            Severity::Warning,
            format!(
                "sink \"{}\" gave up on {} deliveries (reconciled outbox list --undelivered --sink {}; \
                 after a fix, outbox retry --dead --sink {})",
                s.sink, s.dead, s.sink, s.sink
            ),
        );
    }
    for endpoint in &config.endpoints {
        let Some(after) = endpoint.silent_after else { continue };
        let last = gauges.last_stored.iter().find(|(e, _)| *e == endpoint.name);
        if let Some((_, at)) = last {
            if now_ms - at > millis(after) {
                add(
                    Severity::Warning,
                    format!(
                        "endpoint \"{}\" has stored nothing for {} (silent_after {}): is the webhook \
                         still set up at the provider, with the same secret? (reconciled failures)",
                        endpoint.name,
                        age(*at),
                        crate::time::format_duration(after)
                    ),
                );
            }
        }
    }
    let mut per_endpoint: Vec<(&str, u64)> = Vec::new();
    for (endpoint, at) in failures {
        if now_ms - at > FAILURE_WINDOW_MS {
            continue;
        }
        match per_endpoint.iter_mut().find(|(e, _)| e == endpoint) {
            Some((_, n)) => *n += 1,
            None => per_endpoint.push((endpoint, 1)),
        }
    }
    for (endpoint, n) in per_endpoint.into_iter().filter(|(_, n)| *n > limits.failures) {
        add(
            Severity::Warning,
            format!(
                "endpoint \"{endpoint}\" refused {n} requests in the last 10 minutes: a rotated or \
                 mistyped secret? (reconciled failures)"
            ),
        );
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.severity));
    out
}

/// The most recent verification failures read to count the last 10 minutes' (a flood beyond
/// this is reported as this many).
const FAILURES_READ: u64 = 1000;

pub(super) fn run(args: &CheckArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            writeln!(out, "UNKNOWN: cannot read the configuration: {e}")?;
            return Err(super::ExitStatus(3).into());
        }
    };
    let read = super::block_on(async {
        let store = Store::open_configured_reader(&config.store).await?;
        let gauges = store.gauges().await?;
        let failures = store.failures(FAILURES_READ).await?;
        Ok((gauges, failures))
    });
    let (gauges, failures) = match read {
        Ok(r) => r,
        Err(e) => {
            let message = crate::error::error_chain(e.as_ref());
            writeln!(out, "CRITICAL: cannot read the store: {message}")?;
            return Err(super::ExitStatus(2).into());
        }
    };
    let failures: Vec<(String, i64)> = failures.into_iter().map(|f| (f.endpoint, f.at)).collect();
    let limits = Limits {
        backlog_after: args.backlog_after,
        undelivered_after: args.undelivered_after,
        failures: args.failures,
    };
    let found = problems(&config, &gauges, &failures, limits, crate::time::now_ms());
    for p in &found {
        let word = match p.severity {
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        };
        writeln!(out, "{word}: {}", p.text)?;
    }
    match found.first() {
        None => {
            let waiting: i64 =
                gauges.inbox.iter().filter(|(s, _)| *s != "dead").map(|(_, n)| n).sum();
            let owed: i64 = gauges.sinks.iter().map(|s| s.owed).sum();
            writeln!(
                out,
                "OK: {waiting} notifications waiting, {owed} deliveries owed, nothing dead"
            )?;
            Ok(())
        }
        Some(worst) => Err(super::ExitStatus(worst.severity as u8).into()),
    }
}
