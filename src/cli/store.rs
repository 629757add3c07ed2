//! `reconciled store copy`: moves a SQLite store into a PostgreSQL one (see
//! [`crate::store::copy`]).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::secret::DbUrl;

/// `reconciled store …`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a SQLite store, everything in it, into a new PostgreSQL store, and compare the
    /// counts. Stop the daemon first. The target must be empty.
    Copy(CopyArgs),
}

/// `store copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The SQLite store (the file `[store] path` names).
    #[arg(long, value_name = "PATH")]
    from: PathBuf,
    /// The PostgreSQL store: a `postgres://` URL, or a configuration file whose `[store] url`
    /// names it (which keeps the password off the command line).
    #[arg(long, value_name = "URL|FILE")]
    to: String,
    /// Extra trusted roots (PEM) for the PostgreSQL server's certificate, with a URL that says
    /// `sslmode=require` (a configuration file gives its `[store] tls_ca_file` instead).
    #[arg(long, value_name = "FILE")]
    tls_ca_file: Option<PathBuf>,
}

pub(super) fn run(cmd: StoreCommand) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Copy(args) => copy(&args),
    }
}

fn copy(args: &CopyArgs) -> anyhow::Result<()> {
    let (to, tls_ca) = if args.to.starts_with("postgres://") || args.to.starts_with("postgresql://")
    {
        let tls_ca = match &args.tls_ca_file {
            Some(file) => {
                let pem = std::fs::read(file).map_err(|e| {
                    super::UsageError(format!("--tls-ca-file {}: {e}", file.display()))
                })?;
                Some(
                    crate::db_tls::CaPem::checked(&args.to, pem)
                        .map_err(|e| super::UsageError(format!("--tls-ca-file: {e}")))?,
                )
            }
            None => None,
        };
        (DbUrl::new(args.to.clone()), tls_ca)
    } else {
        if args.tls_ca_file.is_some() {
            return Err(super::UsageError(
                "--tls-ca-file goes with a URL; a configuration file gives [store] tls_ca_file"
                    .into(),
            )
            .into());
        }
        let config = crate::config::Config::load(std::path::Path::new(&args.to))?;
        let url = config.store.url.ok_or_else(|| {
            super::UsageError(format!(
                "{} has no [store] url: give the PostgreSQL store to copy into",
                args.to
            ))
        })?;
        (url, config.store.tls_ca)
    };
    if !args.from.exists() {
        return Err(super::UsageError(format!("no such store: {}", args.from.display())).into());
    }
    let copied = super::block_on(async {
        let progress = |table: &str, rows: i64| eprintln!("copied {table}: {rows} rows");
        Ok(crate::store::copy::sqlite_to_postgres(&args.from, &to, tls_ca, &progress).await?)
    })?;
    let total: i64 = copied.tables.iter().map(|(_, n)| n).sum();
    println!(
        "copied {total} rows from {} to {} ({}); counts match in every table",
        args.from.display(),
        to.redacted(),
        copied.tables.iter().map(|(t, n)| format!("{t} {n}")).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}
