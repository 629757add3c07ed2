//! Reconciliation: the pure decision table ([`decide`]), its policy, and the worker that
//! applies it: [`prepare`] (confirm, parse, look the order up), [`apply`] (what to write, from
//! what the store holds), and [`worker`] (claiming, the pipeline, waking up).

pub mod apply;
pub mod decide;
pub mod policy;
pub mod prepare;
pub mod worker;
