//! `reconciled default-config`: print the annotated example configuration.

pub(super) fn run() -> anyhow::Result<()> {
    print!("{}", crate::config::EXAMPLE);
    Ok(())
}
