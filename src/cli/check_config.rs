//! `reconciled check-config --config FILE`: validate and print a redacted summary.

use super::ConfigArg;
use crate::config::Config;

pub(super) fn run(args: &ConfigArg) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    print!("{}", config.summary());
    Ok(())
}
