//! `reconciled outbox list|tail`: the actions for the shop's back office and its admins.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::StoreArgs;
use crate::domain::ActionKind;
use crate::store::{OutboxFilter, OutboxRow};

/// How often `tail --follow` looks for new rows.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);
/// Rows `tail` shows before following.
const TAIL_ROWS: i64 = 10;

/// `outbox` subcommands. Both read live actions, the ones to carry out; `--shadow` reads the
/// actions decided in shadow mode instead.
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List actions in order.
    List(ListArgs),
    /// Show the latest actions; with --follow, keep printing new ones as they appear.
    Tail(TailArgs),
}

/// Arguments of `outbox list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// One JSON object per line (the consumer's format).
    #[arg(long)]
    json: bool,
    /// Only actions with an id greater than this.
    #[arg(long, value_name = "ID")]
    after: Option<i64>,
    /// Only actions of this kind.
    #[arg(long, value_name = "K")]
    kind: Option<ActionKind>,
    /// At most this many.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// The actions decided in shadow mode (never carried out) instead of the live ones.
    #[arg(long)]
    shadow: bool,
}

/// Arguments of `outbox tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Keep running and print actions as they are written (like `tail -f`).
    #[arg(long, short)]
    follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// The actions decided in shadow mode (never carried out) instead of the live ones.
    #[arg(long)]
    shadow: bool,
}

pub(super) fn run(cmd: OutboxCommand) -> anyhow::Result<()> {
    match cmd {
        OutboxCommand::List(args) => {
            let store = args.store.open()?;
            let rows = super::block_on(async {
                let filter = OutboxFilter {
                    after: args.after,
                    kind: args.kind,
                    limit: args.limit,
                    shadow: args.shadow,
                };
                Ok(store.outbox(filter).await?)
            })?;
            let mut out = std::io::stdout().lock();
            if !args.json {
                writeln!(out, "{}", header())?;
            }
            for row in &rows {
                print_row(&mut out, row, args.json)?;
            }
            if rows.is_empty() && !args.json {
                writeln!(out, "(no {}actions)", if args.shadow { "shadow " } else { "" })?;
            }
            Ok(())
        }
        OutboxCommand::Tail(args) => {
            let store = args.store.open()?;
            super::block_on(async {
                let mut last = (store.outbox_last_id().await? - TAIL_ROWS).max(0);
                let mut out = std::io::stdout().lock();
                if !args.json {
                    writeln!(out, "{}", header())?;
                }
                loop {
                    let filter = OutboxFilter {
                        after: Some(last),
                        limit: Some(1000),
                        shadow: args.shadow,
                        ..OutboxFilter::default()
                    };
                    for row in store.outbox(filter).await? {
                        print_row(&mut out, &row, args.json)?;
                        last = row.id;
                    }
                    out.flush()?;
                    if !args.follow {
                        return Ok(());
                    }
                    tokio::time::sleep(FOLLOW_INTERVAL).await;
                }
            })
        }
    }
}

fn header() -> String {
    format!(
        "{:>6}  {:<20}  {:<15}  {:<10}  {:>12} {:<3}  {:<26}  REASON",
        "ID", "CREATED", "KIND", "ORDER", "AMOUNT", "", "TEMPLATE"
    )
}

fn print_row(out: &mut impl Write, r: &OutboxRow, json: bool) -> std::io::Result<()> {
    if json {
        return writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default());
    }
    writeln!(
        out,
        "{:>6}  {:<20}  {:<15}  {:<10}  {:>12} {:<3}  {:<26}  {}",
        r.id,
        r.created_at,
        r.kind,
        r.order_id.as_deref().unwrap_or("-"),
        r.amount.as_deref().unwrap_or("-"),
        r.currency.as_deref().unwrap_or(""),
        r.template.as_deref().unwrap_or("-"),
        r.reason
    )
}
