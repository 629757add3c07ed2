//! `reconciled outbox list|tail|show|retry`: the actions for the shop's back office and its
//! admins, and their deliveries to the sinks.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::StoreArgs;
use crate::domain::ActionKind;
use crate::store::{DeliveryFilter, DeliveryRow, OutboxFilter, OutboxRow, Store};

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
    /// Show one action, its deliveries to the sinks and every attempt.
    Show(ShowArgs),
    /// Make failed deliveries due again: one action's, or every dead one.
    Retry(RetryArgs),
    /// Each sink's deliveries by state; exits 1 if any is dead (for monitoring).
    Status(StatusArgs),
}

/// Arguments of `outbox status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// One JSON object per sink.
    #[arg(long)]
    json: bool,
}

/// Arguments of `outbox show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The action's id.
    id: i64,
    #[command(flatten)]
    store: StoreArgs,
    /// One JSON object: the action, its deliveries and attempts.
    #[arg(long)]
    json: bool,
}

/// Arguments of `outbox retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The action whose failed deliveries to retry.
    #[arg(required_unless_present = "dead", conflicts_with = "dead")]
    id: Option<i64>,
    /// Every dead delivery (of --sink, if given).
    #[arg(long)]
    dead: bool,
    /// Only this sink's deliveries.
    #[arg(long, value_name = "S")]
    sink: Option<String>,
    #[command(flatten)]
    config: super::ConfigOrDemo,
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
    /// Only actions some sink has not been delivered yet (pending, retrying or dead).
    #[arg(long)]
    undelivered: bool,
    /// With --undelivered: only what this sink is owed.
    #[arg(long, value_name = "S", requires = "undelivered")]
    sink: Option<String>,
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
            let rows = super::block_on(async {
                let store = args.store.open().await?;
                let rows = if args.undelivered {
                    owed_actions(&store, &args).await?
                } else {
                    let filter = OutboxFilter {
                        after: args.after,
                        kind: args.kind,
                        limit: args.limit,
                        shadow: args.shadow,
                        last: None,
                    };
                    store.outbox(filter).await?
                };
                let mut with = Vec::with_capacity(rows.len());
                for row in rows {
                    let deliveries = if args.json {
                        Vec::new()
                    } else {
                        let filter =
                            DeliveryFilter { action_id: Some(row.id), ..Default::default() };
                        store.deliveries(filter).await?
                    };
                    with.push((row, deliveries));
                }
                Ok(with)
            })?;
            let mut out = std::io::stdout().lock();
            if !args.json {
                writeln!(out, "{}", header())?;
            }
            for (row, deliveries) in &rows {
                print_row(&mut out, row, args.json)?;
                if !deliveries.is_empty() {
                    writeln!(out, "{:>6}  delivery: {}", "", summary(deliveries))?;
                }
            }
            if rows.is_empty() && !args.json {
                writeln!(out, "(no {}actions)", if args.shadow { "shadow " } else { "" })?;
            }
            Ok(())
        }
        OutboxCommand::Show(args) => show(&args),
        OutboxCommand::Status(args) => status(&args),
        OutboxCommand::Retry(args) => retry(&args),
        OutboxCommand::Tail(args) => super::block_on(async {
            let store = args.store.open().await?;
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
        }),
    }
}

/// The actions some sink is still owed (or has given up on), oldest first.
async fn owed_actions(store: &Store, args: &ListArgs) -> anyhow::Result<Vec<OutboxRow>> {
    let filter =
        DeliveryFilter { sink: args.sink.clone(), undelivered: true, ..Default::default() };
    let mut ids: Vec<i64> =
        store.deliveries(filter).await?.into_iter().map(|d| d.action_id).collect();
    ids.dedup();
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids.into_iter().filter(|id| args.after.is_none_or(|after| *id > after)) {
        if let Some(row) = store.action(id).await? {
            if args.kind.is_none_or(|k| k == row.kind) {
                rows.push(row);
            }
        }
        if args.limit.is_some_and(|l| rows.len() as u64 >= l) {
            break;
        }
    }
    Ok(rows)
}

/// `shop delivered, mailer retrying (2 attempts)`.
fn summary(deliveries: &[DeliveryRow]) -> String {
    deliveries
        .iter()
        .map(|d| match (d.state.as_str(), d.attempts) {
            ("delivered", _) | (_, 0) => format!("{} {}", d.sink, d.state),
            (state, n) => {
                format!("{} {state} ({n} attempt{})", d.sink, if n == 1 { "" } else { "s" })
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn show(args: &ShowArgs) -> anyhow::Result<()> {
    let (action, deliveries, attempts) = super::block_on(async {
        let store = args.store.open().await?;
        let action = store.action(args.id).await?;
        let filter = DeliveryFilter { action_id: Some(args.id), ..Default::default() };
        Ok((action, store.deliveries(filter).await?, store.attempts(args.id).await?))
    })?;
    let action = action.ok_or_else(|| anyhow::anyhow!("no action with id {}", args.id))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let all =
            serde_json::json!({"action": action, "deliveries": deliveries, "attempts": attempts});
        writeln!(out, "{all}")?;
        return Ok(());
    }
    writeln!(out, "{}", header())?;
    print_row(&mut out, &action, false)?;
    writeln!(out, "webhook-id: {}", crate::deliver::webhook_id(&action.idempotency_key))?;
    if deliveries.is_empty() {
        writeln!(out, "deliveries: none (no sink takes {} actions)", action.kind)?;
    }
    for d in &deliveries {
        write!(out, "delivery to {}: {}, {} attempt(s)", d.sink, d.state, d.attempts)?;
        if let Some(at) = &d.delivered_at {
            write!(out, ", delivered {at}")?;
        }
        if let Some(next) = &d.next_attempt_at {
            write!(out, ", next attempt {next}")?;
        }
        writeln!(out)?;
        if let Some(e) = &d.last_error {
            writeln!(out, "  last error: {e}")?;
        }
    }
    for a in &attempts {
        writeln!(
            out,
            "  attempt {} to {} at {} ({} ms): {}",
            a.attempt,
            a.sink,
            a.at,
            a.duration_ms,
            if a.delivered { "delivered".to_owned() } else { a.detail.clone().unwrap_or_default() }
        )?;
    }
    Ok(())
}

fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let mut counts = super::block_on(async {
        let store = args.store.open().await?;
        Ok(store.sink_counts().await?)
    })?;
    // Configured sinks with nothing delivered yet are listed too.
    if let Some(path) = &args.store.config {
        for sink in crate::config::Config::load(path)?.sinks {
            if !counts.iter().any(|c| *c.sink == *sink.name) {
                counts.push(crate::store::SinkCounts {
                    sink: sink.name.to_string(),
                    ..Default::default()
                });
            }
        }
        counts.sort_by(|a, b| a.sink.cmp(&b.sink));
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        for c in &counts {
            writeln!(out, "{}", serde_json::to_string(c)?)?;
        }
    } else {
        writeln!(
            out,
            "{:<16} {:>9} {:>9} {:>6} {:>10}  OLDEST UNDELIVERED",
            "SINK", "PENDING", "RETRYING", "DEAD", "DELIVERED"
        )?;
        for c in &counts {
            writeln!(
                out,
                "{:<16} {:>9} {:>9} {:>6} {:>10}  {}",
                c.sink,
                c.pending,
                c.retrying,
                c.dead,
                c.delivered,
                c.oldest_undelivered.as_deref().unwrap_or("-")
            )?;
        }
        if counts.is_empty() {
            writeln!(out, "(no sinks)")?;
        }
    }
    let dead: i64 = counts.iter().map(|c| c.dead).sum();
    if dead > 0 {
        drop(out);
        anyhow::bail!(
            "{dead} dead deliveries: see outbox list --undelivered, then outbox retry --dead"
        );
    }
    Ok(())
}

fn retry(args: &RetryArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    if let Some(sink) = &args.sink {
        if !config.sinks.iter().any(|s| &*s.name == sink) {
            let names: Vec<&str> = config.sinks.iter().map(|s| &*s.name).collect();
            anyhow::bail!("no sink named \"{sink}\" (configured: {})", names.join(", "));
        }
    }
    super::block_on(async {
        let store = Store::open_tool(&config.store).await?;
        let n = store.retry_deliveries(args.id, args.dead, args.sink.as_deref()).await?;
        store.close().await;
        println!(
            "{n} deliver{} due again; the running daemon sends {} within 5 s",
            if n == 1 { "y is" } else { "ies are" },
            if n == 1 { "it" } else { "them" }
        );
        Ok(())
    })
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
