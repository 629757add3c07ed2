//! Reconciliation: the pure decision table ([`decide`]) and the worker that applies it.

pub mod decide;
pub mod worker;
