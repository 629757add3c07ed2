//! The embedded demo: `reconciled serve --demo` with no configuration file.

use std::net::SocketAddr;

use crate::config::Config;
use crate::secret::DEMO_SECRET as SECRET;
use crate::settings::ConfigError;

/// The demo store, in the current directory.
pub(super) const STORE_PATH: &str = "reconciled-demo.db";
/// The demo shop's database, built from `fixtures/demo/shop.sql` when missing.
pub(super) const SHOP_PATH: &str = "reconciled-demo-shop.db";
const SHOP_SQL: &str = include_str!("../../fixtures/demo/shop.sql");

fn text() -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:8080"
[store]
path = "{STORE_PATH}"
[[endpoint]]
name = "stripe"
provider = "stripe"
secrets = ["{SECRET}"]
[shop]
driver = "sqlite"
url = "{SHOP_PATH}"
query = "SELECT id AS order_id, status, total AS amount, currency, email AS customer_email, transaction_id AS psp_reference FROM orders WHERE id = :reference OR transaction_id = :psp_reference"
reference_pattern = "^(\\d+)"
[shop.status]
awaiting_payment = ["pending", "on-hold"]
paid = ["processing", "completed"]
cancelled = ["cancelled", "failed"]
"#
    )
}

/// Creates the demo shop database if it is not there yet.
pub(super) fn ensure_shop() -> anyhow::Result<()> {
    if std::path::Path::new(SHOP_PATH).exists() {
        return Ok(());
    }
    let conn = rusqlite::Connection::open(SHOP_PATH)?;
    conn.execute_batch(SHOP_SQL)?;
    Ok(())
}

pub(super) fn config() -> Result<Config, ConfigError> {
    Config::demo(&text())
}

pub(super) fn print_instructions(addr: SocketAddr) {
    println!(
        "\nreconciled demo: listening on http://{addr} (loopback only)\n\
         \x20 store:    ./{STORE_PATH}\n\
         \x20 endpoint: POST http://{addr}/webhooks/stripe\n\
         \x20 secret:   {SECRET}  (a PUBLIC TEST secret, for this demo only)\n\n\
         Send it a signed sample from another terminal in this directory:\n\
         \x20 cargo run --release -- sign stripe --secret {SECRET} \\\n\
         \x20     --curl http://{addr}/webhooks/stripe < fixtures/stripe/payment_intent.succeeded.json | sh\n\n\
         Watch the actions appear (a fulfil and a confirmation for order 1001):\n\
         \x20 cargo run --release -- outbox tail --follow --demo\n\n\
         And look at what was stored:\n\
         \x20 cargo run --release -- inbox list --demo\n\
         \x20 cargo run --release -- inbox show 1 --demo\n\n\
         The demo shop ({SHOP_PATH}) has orders 1001-1005; fixtures/stripe/ has events for them.\n\n\
         Stop with Ctrl-C.\n"
    );
}
