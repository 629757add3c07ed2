//! `reconciled check-config --config FILE [--order ID]`: validate, connect to the shop
//! database and check what the order query returns, then print a redacted summary. With
//! `--order`, run the query for one real order exactly as the worker does and show how it
//! reads it.

use std::fmt::Write;
use std::path::Path;

use clap::Args;

use super::ConfigArg;
use crate::config::Config;
use crate::money::Currency;
use crate::settings::ConfigError;
use crate::shop::{Cell, Lookup, OrderSource, RawOrder, ShopConfig, ShopError};

/// `check-config` arguments.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Also run the order query for this order id (the merchant reference a provider sends)
    /// and show how reconciled reads that order.
    #[arg(long, value_name = "ID")]
    order: Option<String>,
    /// With --order: also pass this provider payment id as `:psp_reference`.
    #[arg(long, value_name = "ID", requires = "order")]
    psp_reference: Option<String>,
}

pub(super) fn run(args: &CheckConfigArgs) -> anyhow::Result<()> {
    let path = &args.config.config;
    let config = Config::load(path)?;
    print!("{}", summary(&config));
    check_sinks(&config)?;
    let Some(shop) = &config.shop else {
        if args.order.is_some() {
            anyhow::bail!("--order needs a [shop] section: this configuration reads no orders");
        }
        println!("shop: none configured (notifications are stored, not reconciled)");
        return Ok(());
    };
    for (status, first, second) in shop.status.overlaps() {
        println!(
            "warning: status \"{status}\" is listed under both shop.status.{first} and \
             shop.status.{second}; it is read as {first}"
        );
    }
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key: key.into(),
        message,
    };
    // A query error names the query, anything else the database location.
    let key =
        |e: &ShopError| if matches!(e, ShopError::Query(_)) { "shop.query" } else { "shop.url" };
    super::block_on(async {
        let source =
            OrderSource::connect(shop).await.map_err(|e| invalid(key(&e), e.to_string()))?;
        let checked = async {
            let columns = source.columns().await.map_err(|e| invalid(key(&e), e.to_string()))?;
            crate::shop::check_columns(&columns).map_err(|m| invalid("shop.query", m))?;
            println!(
                "shop: {} {} reachable; the order query returns {}",
                shop.driver.as_str(),
                shop.url,
                columns.join(", ")
            );
            match &args.order {
                Some(order) => {
                    show_order(&source, shop, order, args.psp_reference.as_deref(), path)
                        .await
                        .map_err(|e| invalid(key(&e), e.to_string()))
                }
                None => Ok(()),
            }
        }
        .await;
        source.close().await;
        Ok(checked?)
    })
}

/// Checks that each exec sink's program can be run (refused otherwise, as a bad key is), and
/// tries a TCP connection to each HTTP sink (a warning if it fails: the shop may be down now).
fn check_sinks(config: &Config) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    for sink in &config.sinks {
        match &sink.target {
            crate::deliver::Target::Exec { command } => {
                let program = Path::new(&command[0]);
                let candidates: Vec<std::path::PathBuf> = if command[0].contains('/') {
                    vec![program.to_path_buf()]
                } else {
                    std::env::var_os("PATH")
                        .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).collect())
                        .unwrap_or_default()
                };
                let runnable = candidates.iter().any(|c| {
                    std::fs::metadata(c)
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                });
                if !runnable {
                    return Err(ConfigError::Invalid {
                        path: config.source.clone(),
                        key: format!("sink \"{}\".command", sink.name),
                        message: format!("{} is not an executable file", command[0]),
                    });
                }
            }
            crate::deliver::Target::Http { url, .. } => {
                let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_owned();
                let port = url.port_or_known_default().unwrap_or(443);
                let reached = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
                    .map_err(|e| e.to_string())
                    .and_then(|mut addrs| addrs.next().ok_or_else(|| "no address".to_owned()))
                    .and_then(|addr| {
                        std::net::TcpStream::connect_timeout(
                            &addr,
                            std::time::Duration::from_secs(5),
                        )
                        .map_err(|e| e.to_string())
                    });
                match reached {
                    Ok(_) => println!("sink {}: {host}:{port} accepts connections", sink.name),
                    Err(e) => println!(
                        "warning: sink {}: cannot connect to {host}:{port} now ({e}); its deliveries wait and are retried",
                        sink.name
                    ),
                }
            }
            crate::deliver::Target::Pull { .. } => {}
        }
    }
    Ok(())
}

/// Runs the order query for one order as the worker does and prints how it reads the order.
async fn show_order(
    source: &OrderSource,
    shop: &ShopConfig,
    order: &str,
    psp_reference: Option<&str>,
    config: &Path,
) -> Result<(), ShopError> {
    let reference = crate::shop::cut_reference(shop.reference_pattern.as_ref(), order);
    let lookup =
        Lookup { reference: Some(reference.clone()), psp_reference: psp_reference.map(Into::into) };
    let rows = source.fetch(&lookup).await?;
    let mut out = String::new();
    if reference != order {
        let _ = writeln!(
            out,
            "reference \"{order}\" is cut to \"{reference}\" by shop.reference_pattern"
        );
    }
    let Some(row) = crate::shop::pick_row(&rows, &lookup) else {
        print!("{out}");
        println!(
            "order {reference}: the query returned no row (a notification for it would wait, \
             then go to review as unmatched)"
        );
        return Ok(());
    };
    let raw = |c: &Option<Cell>| match c {
        None => "absent".to_owned(),
        Some(Cell::Null) => "NULL".to_owned(),
        Some(Cell::Int(i)) => format!("{i} (integer)"),
        Some(Cell::Real(f)) => format!("{f} (floating point)"),
        Some(Cell::Text(t)) => format!("{t:?}"),
    };
    let _ = writeln!(out, "order {reference}: the query returned {} row(s); read as:", rows.len());
    let read = crate::shop::to_order(row, &shop.status);
    match &read {
        Ok(o) => {
            let _ = writeln!(out, "  order id        {}", o.order_id);
            let _ = writeln!(out, "  status          {:?} -> {}", o.raw_status, o.status);
            let _ = writeln!(
                out,
                "  amount          {} {}   (amount = {}, amount_minor = {}, currency = {})",
                o.amount.to_decimal_string(),
                o.amount.currency,
                raw(&row.amount),
                raw(&row.amount_minor),
                raw(&row.currency)
            );
            let _ = writeln!(
                out,
                "  customer email  {}",
                o.customer_email.as_deref().unwrap_or("none")
            );
            let _ =
                writeln!(out, "  psp reference   {}", o.psp_reference.as_deref().unwrap_or("none"));
        }
        Err(_) => {
            for (name, cell) in [
                ("order_id", &row.order_id),
                ("status", &row.status),
                ("amount", &row.amount),
                ("amount_minor", &row.amount_minor),
                ("currency", &row.currency),
            ] {
                let _ = writeln!(out, "  {name:<15} {}", raw(cell));
            }
        }
    }
    print!("{out}");
    let o = read?;
    if let Some(warning) = cents_warning(row, o.amount.currency) {
        println!("warning: {warning}");
    }
    println!(
        "check that amount, currency and status are what the shop shows for this order; \
         a wrong amount column refunds correct payments ({})",
        config.display()
    );
    Ok(())
}

/// A whole-number `amount` in a currency with decimals is most often a cents column under
/// the wrong name: 2599 read as 2599.00 EUR makes every 25.99 EUR payment an underpayment.
fn cents_warning(row: &RawOrder, currency: Currency) -> Option<String> {
    if row.amount_minor.is_some() || currency.exponent() == 0 {
        return None;
    }
    let whole = match &row.amount {
        Some(Cell::Int(i)) => Some(i.to_string()),
        Some(Cell::Text(t))
            if !t.trim().is_empty() && t.trim().bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some(t.trim().to_owned())
        }
        _ => None,
    }?;
    Some(format!(
        "amount is the whole number {whole} in {currency}, which has {} decimals: if the column \
         holds minor units (cents), name it amount_minor in the query (`... AS amount_minor`)",
        currency.exponent()
    ))
}

/// A human summary of a valid configuration, with every secret replaced by a hint.
fn summary(config: &Config) -> String {
    let s = &config.server;
    let mut out = String::new();
    let _ = writeln!(out, "config: {} (valid)", config.source.display());
    let _ = writeln!(out, "listen: {}", s.listen);
    let _ = writeln!(
        out,
        "limits: body {} bytes, headers {}s, request {}s, write stall {}s, {} connections, drain {}s",
        s.max_body_bytes,
        s.header_read_timeout.as_secs(),
        s.request_timeout.as_secs(),
        s.write_timeout.as_secs(),
        s.max_connections,
        s.shutdown_grace.as_secs()
    );
    let st = &config.store;
    match &st.url {
        // The URL's password is redacted by its Display.
        Some(url) => {
            let _ = writeln!(
                out,
                "store: PostgreSQL {url}, shared by any number of daemons (batch {}, {} failures \
                 kept, finished rows kept {} days)",
                st.max_batch, st.failures_kept, st.retention_days
            );
        }
        None => {
            let _ = writeln!(
                out,
                "store: {} (batch {}, busy timeout {} ms, {} failures kept, finished rows kept {} \
                 days, WAL restarted past {} MiB)",
                st.path.display(),
                st.max_batch,
                st.busy_timeout.as_millis(),
                st.failures_kept,
                st.retention_days,
                st.wal_max_mb
            );
        }
    }
    if let Some(shop) = &config.shop {
        let _ = writeln!(out, "shop: {} {}", shop.driver.as_str(), shop.url);
    }
    let p = &config.policy;
    let _ = writeln!(
        out,
        "policy: mode {}, underpaid {}, overpaid {}, currency mismatch {}, paid after cancel {}, fulfil on {}, unmatched retried for {}s, failure notices held {}s, open payments asked about after {}s",
        p.mode,
        p.on_underpaid,
        p.on_overpaid,
        p.on_currency_mismatch,
        p.on_paid_after_cancel,
        p.fulfil_on,
        p.unmatched_retry_for.as_secs(),
        p.failure_notice_delay.as_secs(),
        p.inquire_after.as_secs()
    );
    for sink in &config.sinks {
        let _ = writeln!(out, "{}", sink.describe());
    }
    for e in &config.endpoints {
        let mut hints = e.settings.describe();
        if let Some(b) = &e.trust.basic_auth {
            hints.push(format!("basic auth user {}", b.user));
        }
        if !e.trust.allow_from.is_empty() {
            let nets: Vec<String> = e.trust.allow_from.iter().map(ToString::to_string).collect();
            hints.push(format!("allowed from {}", nets.join(" ")));
        }
        if let Some(api) = &e.api {
            hints.push(api.describe());
        }
        let _ = writeln!(
            out,
            "endpoint {}: POST /webhooks/{}, provider {}; {}",
            e.name,
            e.name,
            e.kind(),
            hints.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn debug_and_summary_never_show_secrets() {
        let text = "[[endpoint]]\nname = \"stripe\"\nprovider = \"stripe\"\n\
                    secrets = [\"whsec_abcdef123456\", \"whsec_rolled\"]\n";
        let c = crate::config::Config::from_toml(text, Path::new("test.toml")).unwrap();
        let dbg = format!("{c:?}");
        let summary = super::summary(&c);
        for text in [&dbg, &summary] {
            assert!(!text.contains("abcdef123456"), "{text}");
            assert!(!text.contains("whsec_rolled"), "{text}");
        }
        assert!(summary.contains("2 secret(s)"), "{summary}");
    }
}
