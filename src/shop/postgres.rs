//! A Postgres shop database (being written).

use super::{Lookup, RawOrder, ShopError};
use crate::config::ShopConfig;

/// A pooled connection to the shop database.
#[derive(Debug)]
pub struct PostgresShop {}

impl PostgresShop {
    /// Connects.
    pub async fn connect(_config: &ShopConfig) -> Result<PostgresShop, ShopError> {
        Err(ShopError::Query("the postgres driver is not built yet".into()))
    }

    /// Runs the order query.
    pub async fn fetch(&self, _lookup: &Lookup) -> Result<Vec<RawOrder>, ShopError> {
        Err(ShopError::Query("the postgres driver is not built yet".into()))
    }

    /// Closes the pool.
    pub async fn close(self) {}
}
