//! `reconciled check-config --config FILE`: validate, connect to the shop database and run the
//! order query once, then print a redacted summary.

use std::fmt::Write;

use super::ConfigArg;
use crate::config::Config;
use crate::settings::ConfigError;
use crate::shop::{Lookup, OrderSource, ShopError};

pub(super) fn run(args: &ConfigArg) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    print!("{}", summary(&config));
    let Some(shop) = &config.shop else {
        println!("shop: none configured (notifications are stored, not reconciled)");
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: args.config.clone(),
        key: key.into(),
        message,
    };
    // A query error names the query, anything else the database location.
    let key =
        |e: &ShopError| if matches!(e, ShopError::Query(_)) { "shop.query" } else { "shop.url" };
    runtime.block_on(async {
        let source =
            OrderSource::connect(shop).await.map_err(|e| invalid(key(&e), e.to_string()))?;
        let probe = Lookup { reference: Some("0".into()), psp_reference: Some("0".into()) };
        let rows = source.fetch(&probe).await.map_err(|e| invalid(key(&e), e.to_string()))?;
        println!(
            "shop: {} {} reachable; the order query ran ({} row(s) for reference \"0\")",
            shop.driver.as_str(),
            shop.url,
            rows.len()
        );
        source.close().await;
        Ok::<_, anyhow::Error>(())
    })
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
    let _ = writeln!(
        out,
        "store: {} (batch {}, busy timeout {} ms, {} failures kept, finished rows kept {} days, \
         WAL restarted past {} MiB)",
        st.path.display(),
        st.max_batch,
        st.busy_timeout.as_millis(),
        st.failures_kept,
        st.retention_days,
        st.wal_max_mb
    );
    if let Some(shop) = &config.shop {
        let _ = writeln!(out, "shop: {} {}", shop.driver.as_str(), shop.url);
    }
    let p = &config.policy;
    let _ = writeln!(
        out,
        "policy: underpaid {:?}, overpaid {:?}, currency mismatch {:?}, paid after cancel {:?}, fulfil on {:?}, unmatched retried for {}s",
        p.on_underpaid,
        p.on_overpaid,
        p.on_currency_mismatch,
        p.on_paid_after_cancel,
        p.fulfil_on,
        p.unmatched_retry_for.as_secs()
    );
    for e in &config.endpoints {
        let mut hints = e.settings.describe();
        if let Some(b) = &e.trust.basic_auth {
            hints.push(format!("basic auth user {}", b.user));
        }
        if !e.trust.allow_from.is_empty() {
            let nets: Vec<String> = e.trust.allow_from.iter().map(ToString::to_string).collect();
            hints.push(format!("allowed from {}", nets.join(" ")));
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
