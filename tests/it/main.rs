//! The integration tests: one binary, real sockets, real SQLite files.

mod adflex;
mod admin;
mod cli;
mod deliver;
mod failpoints;
mod faults;
mod harness;
mod hostile;
mod ingest;
mod limits;
mod metrics;
mod no_leaks;
mod operator;
mod page;
mod paypal;
mod process;
mod reconcile;
mod reload;
mod scripts;
mod sdk;
mod secrets;
mod shared_store;
mod shops;
mod simulate;
mod tls;
mod worldpay;
