//! `reconciled backfill`: list the Stripe events an endpoint's webhook may have missed and
//! store them (see [`crate::ask::backfill`]). Safe beside a running daemon: the events go
//! through the same deduplicating inbox, and the daemon decides them.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::UsageError;
use crate::ask::backfill::{Backfill, Start, Summary, STRIPE_KEEPS};
use crate::ask::stripe::StripeApi;
use crate::config::Config;
use crate::provider::ProviderKind;
use crate::store::Store;

/// `backfill`.
#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The configuration file: the endpoint's `[endpoint.api]` and the store.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// The Stripe endpoint whose events to list.
    #[arg(long, value_name = "NAME")]
    endpoint: String,
    /// List the events created in this last stretch of time (`72h`, `7d`; Stripe keeps 30
    /// days). Without --since or --after: from where the last pass stopped, or the last 72h.
    #[arg(long, value_name = "DURATION", conflicts_with = "after")]
    since: Option<String>,
    /// List the events created after this one (`evt_…`).
    #[arg(long, value_name = "EVENT_ID")]
    after: Option<String>,
    /// List and count only: store nothing, move no cursor.
    #[arg(long)]
    dry_run: bool,
}

pub(super) fn run(args: &BackfillArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let endpoint = config.endpoints.iter().find(|e| e.name == args.endpoint).ok_or_else(|| {
        let names: Vec<&str> = config.endpoints.iter().map(|e| e.name.as_str()).collect();
        UsageError(format!(
            "no endpoint \"{}\" in {} (endpoints: {})",
            args.endpoint,
            args.config.display(),
            names.join(", ")
        ))
    })?;
    if endpoint.kind() != ProviderKind::Stripe {
        return Err(UsageError(format!(
            "endpoint \"{}\" is {}: backfill lists Stripe events only",
            endpoint.name,
            endpoint.kind()
        ))
        .into());
    }
    let api = endpoint.api.as_ref().ok_or_else(|| {
        UsageError(format!(
            "endpoint \"{}\" has no [endpoint.api] table: give it a key_file with a restricted \
             Stripe key (read access to Events)",
            endpoint.name
        ))
    })?;
    let start = match (&args.since, &args.after) {
        (Some(since), _) => {
            let d = crate::time::parse_duration(since).ok_or_else(|| {
                UsageError(format!("--since \"{since}\" is not a duration such as 72h or 7d"))
            })?;
            if d > STRIPE_KEEPS {
                eprintln!(
                    "note: Stripe lists the events of the last 30 days only; older ones cannot be backfilled"
                );
            }
            Start::Since(crate::time::now_ms() / 1000 - d.as_secs() as i64)
        }
        (None, Some(after)) => {
            if !after.starts_with("evt_") {
                return Err(
                    UsageError(format!("--after \"{after}\" is not an event id (evt_…)")).into()
                );
            }
            Start::After(after.clone())
        }
        (None, None) => Start::Resume,
    };
    let api = Arc::new(StripeApi::new(api).map_err(anyhow::Error::msg)?);
    let base = api.host().to_owned();
    let name: Arc<str> = Arc::from(endpoint.name.as_str());
    let (summary, error) = super::block_on(async {
        let store = if args.dry_run {
            Store::open_configured_reader(&config.store).await?
        } else {
            Store::open_feeder(&config.store).await?
        };
        let backfill = Backfill {
            api,
            store: store.clone(),
            endpoint: name,
            dry_run: args.dry_run,
            metrics: None,
        };
        let result = backfill.pass(start, &CancellationToken::new()).await;
        store.close().await;
        Ok(match result {
            Ok(s) => (s, None),
            Err((e, s)) => (s, Some(e)),
        })
    })?;
    println!("{}", report(&args.endpoint, &base, &summary, args.dry_run));
    match error {
        None => Ok(()),
        Some(e) => Err(anyhow::anyhow!(
            "backfill stopped early: {}; what was stored is kept, run it again to resume",
            crate::error::error_chain(&e)
        )),
    }
}

fn report(endpoint: &str, host: &str, s: &Summary, dry_run: bool) -> String {
    let stored = if dry_run { "would store" } else { "stored" };
    let mut line = format!(
        "backfill {endpoint} from {host}: {} event(s) listed in {} page(s); {stored} {}, \
         already had {}, {} of types no decision uses",
        s.seen, s.pages, s.stored, s.had, s.not_used
    );
    if let Some(cursor) = &s.cursor {
        line.push_str(&format!("; newest {cursor}"));
    }
    line
}
