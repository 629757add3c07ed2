//! `reconciled failures`: recent requests that failed verification.

use std::io::Write;

use clap::Args;

use super::StoreArgs;
use crate::time::format_utc;

/// Arguments of `failures`.
#[derive(Debug, Args)]
pub struct FailuresArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 50)]
    limit: u64,
}

pub(super) fn run(args: &FailuresArgs) -> anyhow::Result<()> {
    let rows = super::block_on(async {
        let store = args.store.open().await?;
        Ok(store.failures(args.limit).await?)
    })?;
    let mut out = std::io::stdout().lock();
    for f in &rows {
        if args.json {
            writeln!(out, "{}", serde_json::to_string(f)?)?;
        } else {
            writeln!(
                out,
                "{}  {}  {}  {}  {}",
                format_utc(f.at),
                f.endpoint,
                f.remote_addr,
                f.reason,
                f.detail
            )?;
        }
    }
    if rows.is_empty() && !args.json {
        writeln!(out, "(no verification failures)")?;
    }
    Ok(())
}
