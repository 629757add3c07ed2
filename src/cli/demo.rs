//! The embedded demo: `reconciled serve --demo` with no configuration file.
//!
//! Each run starts afresh in the current directory: the store, the demo shop and the demo's
//! events left by an earlier run there are deleted, the shop is built again from
//! `fixtures/demo/shop.sql`, and one Stripe event per demo order is written beside it, so the
//! commands the banner prints work wherever the binary runs.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::secret::DEMO_SECRET as SECRET;
use crate::settings::ConfigError;

/// The demo store, in the current directory.
pub(super) const STORE_PATH: &str = "reconciled-demo.db";
/// The demo shop's database, built from `fixtures/demo/shop.sql` at start.
pub(super) const SHOP_PATH: &str = "reconciled-demo-shop.db";
/// Where the demo writes its events, one file per demo order, at start.
pub(super) const EVENTS_DIR: &str = "reconciled-demo-events";
const SHOP_SQL: &str = include_str!("../../fixtures/demo/shop.sql");

/// A demo event: its file name, what it makes the daemon decide, and its body.
struct Event {
    file: &'static str,
    what: &'static str,
    body: &'static [u8],
}

macro_rules! event {
    ($file:literal, $what:literal) => {
        Event {
            file: $file,
            what: $what,
            body: include_bytes!(concat!("../../fixtures/stripe/", $file)),
        }
    };
}

/// One event for every order in the demo shop, and a dispute: the first is the banner's example.
const EVENTS: &[Event] = &[
    event!("payment_intent.succeeded.json", "order 1001 paid: a fulfil and an order confirmation"),
    event!(
        "payment_intent.payment_failed.json",
        "order 1002 declined: a payment-failed notice to the customer"
    ),
    event!(
        "payment_intent.succeeded.jpy.json",
        "order 1003 paid in JPY: a fulfil and a confirmation"
    ),
    event!("payment_intent.processing.json", "order 1004 processing: a payment-pending notice"),
    event!(
        "payment_intent.succeeded.after_cancel.json",
        "order 1005 paid after it was cancelled: a refund and a notice"
    ),
    event!("charge.dispute.created.json", "a dispute of the payment for order 1001: a review"),
];

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
[policy]
# A real shop waits (10 minutes by default) in case the customer pays another way; the demo
# shows the notice at once.
failure_notice_delay = "0s"
"#
    )
}

/// Starts the demo afresh in the current directory: deletes the store (with its WAL), the
/// shop and the events an earlier run left, builds the shop and writes the events. Returns
/// whether there was anything to delete.
pub(super) fn start_afresh() -> anyhow::Result<bool> {
    let mut deleted = false;
    for base in [STORE_PATH, SHOP_PATH] {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            deleted |= remove(&format!("{base}{suffix}"), |p| std::fs::remove_file(p))?;
        }
    }
    deleted |= remove(EVENTS_DIR, |p| std::fs::remove_dir_all(p))?;
    let conn = rusqlite::Connection::open(SHOP_PATH)?;
    conn.execute_batch(SHOP_SQL)?;
    drop(conn);
    std::fs::create_dir(EVENTS_DIR)?;
    for e in EVENTS {
        std::fs::write(Path::new(EVENTS_DIR).join(e.file), e.body)?;
    }
    Ok(deleted)
}

/// Deletes `path`; whether it was there.
fn remove(path: &str, delete: impl Fn(&str) -> io::Result<()>) -> anyhow::Result<bool> {
    match delete(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot delete the old demo {path}"))),
    }
}

pub(super) fn config() -> Result<Config, ConfigError> {
    Config::demo(&text())
}

/// How to run this binary from a shell: `reconciled` if that name on PATH is this binary,
/// else its path (relative to the current directory when it lies below it).
fn command_name(cwd: &Path) -> String {
    let Some(exe) = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok()) else {
        return "reconciled".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .filter_map(|dir| dir.join("reconciled").canonicalize().ok())
            .next()
            .is_some_and(|found| found == exe)
    });
    if on_path {
        return "reconciled".into();
    }
    let shown = match exe.strip_prefix(cwd) {
        Ok(below) => PathBuf::from(".").join(below),
        Err(_) => exe,
    };
    quote(&shown.display().to_string())
}

/// `text` as one shell word, quoted only when it needs to be.
fn quote(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:,@%=".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_owned()
    } else {
        super::sign::shell_quote(text)
    }
}

/// The banner: where everything is and the commands to try, for the directory the demo runs
/// in and the binary that runs it.
pub(super) fn instructions(addr: SocketAddr, deleted: bool) -> String {
    let cwd = std::env::current_dir().ok().and_then(|d| d.canonicalize().ok()).unwrap_or_default();
    let dir = cwd.display();
    let exe = command_name(&cwd);
    let fresh = if deleted {
        "started afresh: the store, shop and events of the earlier demo run here were deleted"
    } else {
        "started afresh"
    };
    let first = &EVENTS[0];
    let mut out = format!(
        "\nreconciled demo: listening on http://{addr} (loopback only)\n\
         \x20 {fresh}\n\
         \x20 store:    {dir}/{STORE_PATH}\n\
         \x20 shop:     {dir}/{SHOP_PATH} (orders 1001-1005)\n\
         \x20 events:   {dir}/{EVENTS_DIR}/ (one per order)\n\
         \x20 endpoint: POST http://{addr}/webhooks/stripe\n\
         \x20 secret:   {SECRET}  (a PUBLIC TEST secret, for this demo only)\n\n\
         From another terminal, in this directory:\n\
         \x20 cd {}\n\n\
         Send it a signed event ({}):\n\
         \x20 {exe} sign stripe --secret {SECRET} \\\n\
         \x20     --curl http://{addr}/webhooks/stripe < {EVENTS_DIR}/{} | sh\n\n\
         Watch the actions appear:\n\
         \x20 {exe} outbox tail --follow --demo\n\n\
         Send the others the same way:\n",
        quote(&dir.to_string()),
        first.what,
        first.file,
    );
    for e in &EVENTS[1..] {
        out.push_str(&format!("  {EVENTS_DIR}/{:<44} {}\n", e.file, e.what));
    }
    out.push_str(&format!(
        "\nAnd look at what was stored:\n\
         \x20 {exe} inbox list --demo\n\
         \x20 {exe} inbox show 1 --demo\n\n\
         Stop with Ctrl-C.\n"
    ));
    out
}
