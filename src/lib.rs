//! `reconciled` takes payment providers' asynchronous notifications, verifies each over its
//! raw bytes, stores it exactly once in a durable inbox before answering the provider, then
//! matches it against the shop's own orders and writes the actions the shop must take
//! (`fulfil`, `refund`, `notify_customer`, `review`) to an outbox.
//!
//! # Layout
//! - [`daemon`]: wires the parts together and takes them down in order; [`reload`]: a new
//!   configuration checked and applied while running (SIGHUP).
//! - [`config`]: the TOML file → a validated [`config::Config`]; [`settings`] holds what every
//!   module's settings reader shares.
//! - [`endpoint`]: the `[[endpoint]]` tables and the registry of endpoints built at start.
//! - [`http`]: the hyper accept loop, routes and the webhook handler.
//! - [`provider`]: one file per provider; verification, identification, parsing.
//! - [`store`]: the inbox, payments and outbox: schema, migrations, the group-commit writer.
//! - [`reconcile`]: the worker and the pure decision table.
//! - [`deliver`]: the `[[sink]]`s and the dispatchers that deliver actions to them.
//! - [`ask`]: asking a provider's API (`[endpoint.api]`): Stripe backfill and inquiries about
//!   payments left open.
//! - [`admin`]: the admin listener (the payment status for the confirmation page, the pull
//!   API, `/metrics`, the admin page).
//! - [`metrics`]: the Prometheus metrics, counted as things happen and read from the store at
//!   each scrape.
//! - [`shop`]: read-only order lookups in the shop's database.
//! - [`db_tls`]: TLS to databases: the shared PostgreSQL store, a PostgreSQL or MySQL shop.
//! - [`domain`]: the nouns the decision table and the store share (statuses, actions).
//! - [`money`]: exact amounts in minor units with ISO 4217 currencies.
//! - [`secret`], [`time`], [`error`], [`failpoint`], [`systemd`]: shared helpers.
//! - [`cli`]: one file per subcommand; `main.rs` only maps errors to exit codes.

pub mod admin;
pub mod ask;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod db_tls;
pub mod deliver;
pub mod domain;
pub mod endpoint;
pub mod error;
pub mod failpoint;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod metrics;
pub mod money;
pub mod provider;
pub mod reconcile;
pub mod reload;
pub mod secret;
pub mod settings;
pub mod shop;
pub mod store;
pub mod systemd;
pub mod time;
