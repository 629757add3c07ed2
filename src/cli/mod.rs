//! The command line: one file per subcommand.

mod backfill;
mod check;
mod check_config;
mod default_config;
mod demo;
mod failures;
mod inbox;
mod outbox;
mod serve;
mod sign;
mod simulate;
mod store;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

/// Verifies, stores and reconciles payment-provider notifications for a web shop.
#[derive(Debug, Parser)]
#[command(name = "reconciled", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(serve::ServeArgs),
    /// Validate a configuration file, check the shop query, and print a summary with secrets
    /// redacted; with --order, show how one real order is read.
    CheckConfig(check_config::CheckConfigArgs),
    /// Report what needs a person, from the store, as a Nagios plugin does: one line per
    /// problem; exit 0 all well, 1 warning, 2 critical, 3 could not check.
    Check(check::CheckArgs),
    /// Print an annotated example configuration.
    DefaultConfig,
    /// Look at stored notifications.
    #[command(subcommand)]
    Inbox(inbox::InboxCommand),
    /// Read the actions the reconciliation emitted.
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
    /// List recent requests that failed verification (a wrong or rotated secret shows here).
    Failures(failures::FailuresArgs),
    /// Produce a correctly signed test request for a provider.
    #[command(subcommand)]
    Sign(sign::SignCommand),
    /// Build the notification an endpoint's provider would send for one of your orders, signed
    /// with the endpoint's configuration; print it, or post it to the daemon and show the
    /// actions that followed. Refuses a configuration that looks live unless --i-know.
    Simulate(Box<simulate::SimulateArgs>),
    /// Ask Stripe for the events an endpoint's webhook may have missed, and store them (an
    /// event already stored adds nothing). Needs the endpoint's [endpoint.api] key.
    Backfill(backfill::BackfillArgs),
    /// Move a store: copy a SQLite store into a new PostgreSQL one.
    #[command(subcommand)]
    Store(store::StoreCommand),
}

/// A command line that asks for something impossible (an unknown endpoint, a bad amount, a
/// refused configuration): exit code 2, like a bad configuration.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A command that has printed what it found and ends with this exit status (`check`).
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub struct ExitStatus(pub u8);

/// `--config FILE`.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The configuration file.
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
}

/// The configuration a command that changes the store runs under: a file, or the demo's.
#[derive(Debug, Args)]
pub struct ConfigOrDemo {
    /// The configuration file (the store, the shop database, the policy, the sinks).
    #[arg(long, short, value_name = "FILE", required_unless_present = "demo")]
    pub config: Option<PathBuf>,
    /// Use the demo's configuration.
    #[arg(long, conflicts_with = "config")]
    pub demo: bool,
}

impl ConfigOrDemo {
    /// Loads the configuration named.
    fn load(&self) -> anyhow::Result<Config> {
        Ok(match &self.config {
            Some(path) => Config::load(path)?,
            None => demo::config()?,
        })
    }
}

/// Where a read command finds the store.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Read the store named in this configuration file.
    #[arg(long, short, value_name = "FILE", conflicts_with_all = ["db", "demo"])]
    pub config: Option<PathBuf>,
    /// Read this database file directly.
    #[arg(long, value_name = "PATH", conflicts_with = "demo")]
    pub db: Option<PathBuf>,
    /// Read the demo daemon's store (`serve --demo`).
    #[arg(long)]
    pub demo: bool,
}

impl StoreArgs {
    /// Opens the store to read it.
    async fn open(&self) -> anyhow::Result<crate::store::Store> {
        let path = match (&self.config, &self.db, self.demo) {
            (Some(c), _, _) => {
                let config = Config::load(c)?;
                return Ok(crate::store::Store::open_configured_reader(&config.store).await?);
            }
            (_, Some(db), _) => db.clone(),
            (_, _, true) => PathBuf::from(demo::STORE_PATH),
            _ => anyhow::bail!("say which store to read: --config FILE, --db PATH or --demo"),
        };
        Ok(crate::store::Store::open_reader(&path)?)
    }

    /// The configuration named by `--config` or `--demo`; `None` with `--db`.
    fn settings(&self) -> anyhow::Result<Option<Config>> {
        Ok(match (&self.config, self.demo) {
            (Some(c), _) => Some(Config::load(c)?),
            (None, true) => Some(demo::config()?),
            (None, false) => None,
        })
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::CheckConfig(args) => check_config::run(&args),
        Command::Check(args) => check::run(&args),
        Command::DefaultConfig => default_config::run(),
        Command::Inbox(cmd) => inbox::run(cmd),
        Command::Outbox(cmd) => outbox::run(cmd),
        Command::Failures(args) => failures::run(&args),
        Command::Sign(cmd) => sign::run(cmd),
        Command::Simulate(args) => simulate::run(*args),
        Command::Store(cmd) => store::run(cmd),
        Command::Backfill(args) => backfill::run(&args),
    }
}

/// Runs a command's work on a small runtime of its own (the store's API is async).
fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(work)
}
