//! `reconciled check-config --config FILE`: validate, connect to the shop database and run the
//! order query once, then print a redacted summary.

use super::ConfigArg;
use crate::config::{Config, ConfigError};
use crate::shop::{Lookup, OrderSource, ShopError};

pub(super) fn run(args: &ConfigArg) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    print!("{}", config.summary());
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
            match shop.driver {
                crate::config::ShopDriver::Sqlite => "sqlite",
                crate::config::ShopDriver::Mysql => "mysql",
                crate::config::ShopDriver::Postgres => "postgres",
            },
            shop.url,
            rows.len()
        );
        source.close().await;
        Ok::<_, anyhow::Error>(())
    })
}
