//! The integration tests: one binary, real sockets, real SQLite files.

mod adflex;
mod cli;
mod harness;
mod ingest;
mod limits;
mod reconcile;
mod sdk;
mod shops;
mod worldpay;
