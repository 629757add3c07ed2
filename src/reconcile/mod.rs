//! Reconciliation: the pure decision table ([`decide`]), its policy, and the worker that
//! applies it.

pub mod decide;
pub mod policy;
pub mod worker;
