//! `reconciled inbox list|tail|show|replay|prune`: look at stored notifications.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::StoreArgs;
use crate::domain::InboxStatus;
use crate::provider::ProviderKind;
use crate::reconcile::policy::{Policy, WorkerConfig};
use crate::store::{InboxSummary, ListFilter, Store};
use crate::time::format_utc;

/// How often `tail --follow` looks for new rows.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);
/// Rows `tail` shows before following.
const TAIL_ROWS: u64 = 10;

/// `inbox` subcommands.
#[derive(Debug, Subcommand)]
pub enum InboxCommand {
    /// List stored notifications in arrival order (with --last N, the newest N, oldest first).
    List(ListArgs),
    /// Show the latest notifications; with --follow, keep printing new ones as they arrive.
    Tail(TailArgs),
    /// Show one notification: its fields, kept headers and raw body.
    Show(ShowArgs),
    /// Run one notification through the decision again (current code, current shop data).
    /// Actions already in the outbox are never emitted twice.
    Replay(ReplayArgs),
    /// Delete finished notifications (done, ignored, rejected) and their actions once
    /// `store.retention_days` have passed since their last delivery. The daemon does this
    /// hourly by itself.
    Prune(PruneArgs),
}

/// Arguments of `inbox prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The configuration (the store and its `retention_days`).
    #[arg(long, short, value_name = "FILE")]
    config: std::path::PathBuf,
    /// Only count what would be deleted.
    #[arg(long)]
    dry_run: bool,
}

/// Arguments of `inbox replay`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("selection").multiple(true).required(true)
    .args(["ids", "status", "provider", "endpoint", "order", "since", "until"])))]
pub struct ReplayArgs {
    /// Inbox row ids.
    ids: Vec<i64>,
    /// Rows with this status (dead, parked, done, …).
    #[arg(long, value_name = "S")]
    status: Option<InboxStatus>,
    /// Rows from this provider.
    #[arg(long, value_name = "P")]
    provider: Option<String>,
    /// Rows that arrived on this endpoint.
    #[arg(long, value_name = "E")]
    endpoint: Option<String>,
    /// Rows about a payment matched to this order.
    #[arg(long, value_name = "O")]
    order: Option<String>,
    /// Rows first delivered at or after this time (RFC 3339, or a duration ago: 7d).
    #[arg(long, value_name = "T", value_parser = instant)]
    since: Option<i64>,
    /// Rows first delivered before this time (RFC 3339, or a duration ago).
    #[arg(long, value_name = "T", value_parser = instant)]
    until: Option<i64>,
    #[command(flatten)]
    config: super::ConfigOrDemo,
    /// Print what would change; write nothing, and ask no provider to confirm anything.
    #[arg(long)]
    dry_run: bool,
}

/// A time on the command line: RFC 3339 (`2026-12-01T00:00:00Z`) or a duration ago (`7d`),
/// as unix ms.
fn instant(text: &str) -> Result<i64, String> {
    if let Some(ms) = crate::time::parse_rfc3339(text) {
        return Ok(ms);
    }
    crate::time::parse_duration(text)
        .map(|ago| crate::time::now_ms() - i64::try_from(ago.as_millis()).unwrap_or(i64::MAX))
        .ok_or_else(|| format!("\"{text}\" is neither an RFC 3339 time nor a duration such as 7d"))
}

/// Arguments of `inbox list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Only rows with this status.
    #[arg(long, value_name = "S")]
    status: Option<InboxStatus>,
    /// Only rows from this provider.
    #[arg(long, value_name = "P")]
    provider: Option<String>,
    /// Only rows that came this way: webhook, backfill (listed from the provider's API) or
    /// inquiry (the provider's answer about a payment left open).
    #[arg(long, value_name = "S")]
    source: Option<crate::domain::Source>,
    /// Only rows with an id greater than this.
    #[arg(long, value_name = "ID")]
    after: Option<i64>,
    /// At most this many rows (the oldest first).
    #[arg(long, value_name = "N", conflicts_with = "last")]
    limit: Option<u64>,
    /// Only the newest N rows, still listed oldest first (the newest is the last line).
    #[arg(long, value_name = "N")]
    last: Option<u64>,
}

/// Arguments of `inbox tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Keep running and print notifications as they are stored (like `tail -f`).
    #[arg(long, short)]
    follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

/// Arguments of `inbox show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The inbox row id.
    id: i64,
    #[command(flatten)]
    store: StoreArgs,
    /// Print a JSON object (body as a string if it is UTF-8, else base16) instead of text.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(cmd: InboxCommand) -> anyhow::Result<()> {
    match cmd {
        InboxCommand::List(args) => list(&args),
        InboxCommand::Tail(args) => tail(&args),
        InboxCommand::Show(args) => show(&args),
        InboxCommand::Replay(args) => replay(&args),
        InboxCommand::Prune(args) => prune(&args),
    }
}

fn prune(args: &PruneArgs) -> anyhow::Result<()> {
    let config = crate::config::Config::load(&args.config)?;
    if config.store.url.is_none() && !config.store.path.exists() {
        anyhow::bail!("no such store: {}", config.store.path.display());
    }
    let (cutoff, n) = super::block_on(async {
        let store = Store::open_tool(&config.store).await?;
        store.prune(config.store.retention_days, args.dry_run).await.context("pruning")
    })?;
    let before = format_utc(cutoff);
    if args.dry_run {
        println!("would prune {n} finished notifications last delivered before {before}");
    } else {
        println!(
            "pruned {n} finished notifications, and their actions, last delivered before {before}"
        );
    }
    Ok(())
}

/// Rows taken from the store per query of a bulk replay.
const REPLAY_PAGE: usize = 500;

fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
    use std::collections::HashSet;
    use std::io::IsTerminal;

    use crate::reconcile::worker::Worker;
    use crate::shop::OrderSource;
    let config = args.config.load()?;
    let shop = config.shop.clone().context("replay needs a [shop] section to find the order")?;
    let selection = crate::store::ReplaySelection {
        ids: args.ids.clone(),
        status: args.status,
        provider: args.provider.clone(),
        endpoint: args.endpoint.clone(),
        order: args.order.clone(),
        since_ms: args.since,
        until_ms: args.until,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = Store::open_tool(&config.store).await?;
        let source = OrderSource::connect(&shop).await?;
        let endpoints = std::sync::Arc::new(crate::endpoint::Endpoints::new(&config.endpoints)?);
        // What a replay writes is delivered like any action: with a delivery for each sink.
        let worker = Worker::new(store.clone(), endpoints, shop, config.policy, config.worker)
            .delivering_to(
                crate::deliver::Routes::new(&config.sinks),
                tokio::sync::watch::channel(0).0,
            );
        let mut out = std::io::stdout().lock();
        let progress = std::io::stderr().is_terminal();
        let (mut rows, mut context, mut added, mut dropped, mut undecided) = (0, 0, 0, 0, 0);
        let mut shown = 0;
        let mut done: HashSet<i64> = HashSet::new();
        let mut after = 0;
        loop {
            let page = store.select(selection.clone(), after, REPLAY_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = *last;
            for id in page {
                if done.contains(&id) {
                    continue;
                }
                // The whole payment, in order: each row is decided on what the ones before it
                // tell, so a selected row is decided with the rows of its payment. If the
                // daemon decides a new row of the payment meanwhile, read them again.
                let mut tries = 0;
                let (group, results) = loop {
                    let (group, reset) = store.payment_group(id).await?;
                    match worker
                        .rerun(&source, &group, reset, args.dry_run)
                        .await
                        .context("replay failed")?
                    {
                        Some(results) => break (group, results),
                        None if tries < 5 => tries += 1,
                        None => anyhow::bail!(
                            "row {id}'s payment keeps getting new notifications; replay it later"
                        ),
                    }
                };
                let chosen: HashSet<i64> = store
                    .select(
                        crate::store::ReplaySelection { ids: group.clone(), ..selection.clone() },
                        0,
                        group.len(),
                    )
                    .await?
                    .into_iter()
                    .collect();
                for r in results {
                    done.insert(r.id);
                    rows += 1;
                    let also = if chosen.contains(&r.id) {
                        ""
                    } else {
                        context += 1;
                        " [same payment]"
                    };
                    let summary = store
                        .list(ListFilter { after: Some(r.id - 1), limit: Some(1), ..Default::default() })
                        .await?
                        .pop()
                        .filter(|s| s.id == r.id);
                    let what = summary
                        .map(|s| {
                            format!(
                                "{} {} ({})",
                                s.provider,
                                s.dedup_key,
                                s.event_type.as_deref().unwrap_or("-")
                            )
                        })
                        .unwrap_or_default();
                    match &r.verdict {
                        Some(v) => writeln!(out, "row {} {what}{also}: {}: {}", r.id, v.outcome, v.note)?,
                        None => {
                            undecided += 1;
                            writeln!(
                                out,
                                "row {} {what}{also}: not decided (see its status and last error: inbox show {})",
                                r.id, r.id
                            )?
                        }
                    }
                    for a in &r.added {
                        added += 1;
                        let amount = a.amount.map(|m| m.to_string()).unwrap_or_else(|| "-".into());
                        writeln!(
                            out,
                            "  + {} {amount} ({}) key {}",
                            a.kind.as_str(),
                            a.reason,
                            a.idempotency_key
                        )?;
                    }
                    for o in &r.dropped {
                        dropped += 1;
                        let amount = match (&o.amount, &o.currency) {
                            (Some(a), Some(c)) => format!("{a} {c}"),
                            _ => "-".into(),
                        };
                        writeln!(
                            out,
                            "  - {} {amount} ({}) key {}, action {}",
                            o.kind.as_str(),
                            o.reason,
                            o.idempotency_key,
                            o.id
                        )?;
                    }
                }
                if progress && rows - shown >= 200 {
                    shown = rows;
                    eprint!("\rreplayed {rows} rows…");
                }
            }
        }
        if progress && rows > 0 {
            eprintln!();
        }
        let context_note = if context > 0 {
            format!(" ({context} of them for their payment's sake: [same payment])")
        } else {
            String::new()
        };
        let (emit, drop_note) = if args.dry_run {
            ("would emit", "dry run: nothing was written")
        } else {
            ("emitted", "actions no longer emitted stay in the outbox, which is append-only")
        };
        writeln!(
            out,
            "replayed {rows} rows{context_note}: {added} actions {emit} (+), {dropped} no longer \
             emitted (-), {undecided} not decided; {drop_note}"
        )?;
        source.close().await;
        if rows == 0 {
            anyhow::bail!(super::UsageError("no inbox row matches the selection".into()));
        }
        Ok(())
    })
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let filter = ListFilter {
        status: args.status,
        provider: args.provider.clone(),
        source: args.source,
        after: args.after,
        limit: args.limit,
        last: args.last,
    };
    let rows = super::block_on(async {
        let store = args.store.open().await?;
        store.list(filter).await.context("cannot read the inbox")
    })?;
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(out, "{}", header())?;
    }
    for row in &rows {
        print_row(&mut out, row, args.json)?;
    }
    if rows.is_empty() && !args.json {
        writeln!(out, "(no notifications)")?;
    }
    Ok(())
}

fn tail(args: &TailArgs) -> anyhow::Result<()> {
    super::block_on(async {
        let store = args.store.open().await?;
        let read = |after: Option<i64>, last: Option<u64>| {
            let filter = ListFilter { after, last, limit: Some(1000), ..ListFilter::default() };
            let store = store.clone();
            async move { store.list(filter).await.context("cannot read the inbox") }
        };
        let mut out = std::io::stdout().lock();
        if !args.json {
            writeln!(out, "{}", header())?;
        }
        let mut rows = read(None, Some(TAIL_ROWS)).await?;
        let mut last = 0;
        loop {
            for row in &rows {
                print_row(&mut out, row, args.json)?;
                last = row.id;
            }
            out.flush()?;
            if !args.follow {
                return Ok(());
            }
            tokio::time::sleep(FOLLOW_INTERVAL).await;
            rows = read(Some(last), None).await?;
        }
    })
}

fn header() -> String {
    format!(
        "{:>6}  {:<20}  {:<10}  {:<8}  {:<8}  {:>5}  {:<34}  TYPE",
        "ID", "RECEIVED", "ENDPOINT", "STATUS", "SOURCE", "DELIV", "EVENT"
    )
}

fn print_row(out: &mut impl Write, r: &InboxSummary, json: bool) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(r)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:>6}  {:<20}  {:<10}  {:<8}  {:<8}  {:>5}  {:<34}  {}",
        r.id,
        format_utc(r.received_at),
        r.endpoint,
        r.status,
        r.source,
        r.delivery_count,
        r.dedup_key,
        r.event_type.as_deref().unwrap_or("-")
    )?;
    Ok(())
}

fn show(args: &ShowArgs) -> anyhow::Result<()> {
    let row = super::block_on(async {
        let store = args.store.open().await?;
        store.show(args.id).await.context("cannot read the inbox")
    })?
    .with_context(|| format!("no inbox row with id {}", args.id))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let headers: serde_json::Value =
            serde_json::from_str(&row.headers).unwrap_or(serde_json::Value::Null);
        let mut obj = serde_json::to_value(&row.summary)?;
        obj["headers"] = headers;
        match std::str::from_utf8(&row.body) {
            Ok(s) => obj["body"] = s.into(),
            Err(_) => obj["body_hex"] = hex::encode(&row.body).into(),
        }
        writeln!(out, "{obj}")?;
        return Ok(());
    }
    let s = &row.summary;
    writeln!(out, "id:             {}", s.id)?;
    writeln!(out, "endpoint:       {} ({})", s.endpoint, s.provider)?;
    writeln!(out, "event:          {} {}", s.dedup_key, s.event_type.as_deref().unwrap_or("-"))?;
    writeln!(out, "status:         {}", s.status)?;
    if let Some(outcome) = &s.outcome {
        writeln!(out, "outcome:        {outcome}")?;
    }
    if let Some(error) = &s.last_error {
        writeln!(out, "last error:     {error} (after {} attempt(s))", s.attempts)?;
    }
    let settings = args.store.settings()?;
    let settings = settings.as_ref().map(|c| (&c.policy, &c.worker));
    for line in waiting(s, settings, crate::time::now_ms()) {
        writeln!(out, "{line}")?;
    }
    let confirmed_by =
        ProviderKind::from_name(&s.provider).and_then(|kind| kind.confirmed_by(&row.headers));
    if let Some(by) = confirmed_by {
        match s.verified_at {
            Some(at) => writeln!(out, "verified:       by {} at {}", by.by, format_utc(at))?,
            None => writeln!(out, "verified:       not yet (the worker {})", by.asks)?,
        }
    }
    writeln!(
        out,
        "received:       {} from {} ({})",
        format_utc(s.received_at),
        s.remote_addr,
        s.source
    )?;
    writeln!(
        out,
        "deliveries:     {} (last {})",
        s.delivery_count,
        format_utc(s.last_received_at)
    )?;
    writeln!(out, "headers:")?;
    if let Ok(serde_json::Value::Object(map)) =
        serde_json::from_str::<serde_json::Value>(&row.headers)
    {
        for (k, v) in map {
            writeln!(out, "  {k}: {}", v.as_str().unwrap_or_default())?;
        }
    }
    writeln!(out, "body ({} bytes):", row.body.len())?;
    out.write_all(&row.body)?;
    if !row.body.ends_with(b"\n") {
        writeln!(out)?;
    }
    Ok(())
}

/// For a row that waits (parked for its order, or retried after failed attempts): when the
/// worker takes it next, and when it stops waiting (a review, or `dead`), from the row's times
/// and, when known, the policy and worker settings.
fn waiting(s: &InboxSummary, settings: Option<(&Policy, &WorkerConfig)>, now: i64) -> Vec<String> {
    let waits = matches!(s.status, InboxStatus::Pending | InboxStatus::Parked);
    let Some(next) = s.next_attempt_at.filter(|_| waits) else { return Vec::new() };
    let mut lines = vec![format!("next attempt:   {}", when(next, now))];
    let first = s.first_tried_at.unwrap_or(now);
    if s.status == InboxStatus::Parked
        && s.outcome.as_deref().is_some_and(crate::reconcile::decide::is_held)
    {
        lines.push(format!(
            "notice:         {}, the payment-failed notice to the customer, unless the order is \
             paid before (policy.failure_notice_delay)",
            when(next, now)
        ));
    } else if s.status == InboxStatus::Parked {
        lines.push(match settings {
            Some((policy, _)) => {
                let window = i64::try_from(policy.unmatched_retry_for.as_millis()).unwrap_or(i64::MAX);
                format!(
                    "review:         {}, if its order is still not found (policy.unmatched_retry_for \
                     {} after the first attempt at {})",
                    when(first.saturating_add(window), now),
                    humantime::format_duration(policy.unmatched_retry_for),
                    format_utc(first)
                )
            }
            None => format!(
                "review:         once policy.unmatched_retry_for (30m unless configured) has passed \
                 since the first attempt at {}, if its order is still not found; \
                 add --config FILE to see the time",
                format_utc(first)
            ),
        });
    } else if s.attempts > 0 {
        let attempts = u32::try_from(s.attempts).unwrap_or(u32::MAX);
        lines.push(match settings {
            Some((_, worker)) => {
                // Each later attempt fails too: the backoff of every one until the last.
                let dead_at = (attempts + 1..worker.max_attempts).fold(next, |at, n| {
                    at.saturating_add(crate::reconcile::apply::retry_delay(n, true, 0, worker))
                });
                format!(
                    "gives up:       {} if every attempt fails (attempt {} of \
                     worker.max_attempts {} is next); it is then marked dead for an operator",
                    when(dead_at, now),
                    attempts + 1,
                    worker.max_attempts
                )
            }
            None => format!(
                "gives up:       after worker.max_attempts failed attempts (20 unless configured; \
                 {attempts} so far), marked dead for an operator; add --config FILE to see when"
            ),
        });
    }
    lines
}

/// A time for people: UTC, and how far from now.
fn when(ms: i64, now: i64) -> String {
    let secs = |d: i64| humantime::format_duration(Duration::from_secs(d.unsigned_abs() / 1000));
    match ms - now {
        d if d >= 1000 => format!("{} (in {})", format_utc(ms), secs(d)),
        d if d <= -1000 => format!("{} (due, {} ago)", format_utc(ms), secs(d)),
        _ => format!("{} (now)", format_utc(ms)),
    }
}
