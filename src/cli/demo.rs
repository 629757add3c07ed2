//! The embedded demo: `reconciled serve --demo` with no configuration file.

use std::net::SocketAddr;

use crate::config::{Config, ConfigError, DEMO_SECRET as SECRET};

/// The demo store, in the current directory.
pub(super) const STORE_PATH: &str = "reconciled-demo.db";

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
"#
    )
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
         Then look at what was stored:\n\
         \x20 cargo run --release -- inbox list --demo\n\
         \x20 cargo run --release -- inbox show 1 --demo\n\n\
         Stop with Ctrl-C.\n"
    );
}
