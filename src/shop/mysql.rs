//! A Mysql shop database (being written).

use super::{Lookup, RawOrder, ShopError};
use crate::config::ShopConfig;

/// A pooled connection to the shop database.
#[derive(Debug)]
pub struct MysqlShop {}

impl MysqlShop {
    /// Connects.
    pub async fn connect(_config: &ShopConfig) -> Result<MysqlShop, ShopError> {
        Err(ShopError::Query("the mysql driver is not built yet".into()))
    }

    /// Runs the order query.
    pub async fn fetch(&self, _lookup: &Lookup) -> Result<Vec<RawOrder>, ShopError> {
        Err(ShopError::Query("the mysql driver is not built yet".into()))
    }

    /// Closes the pool.
    pub async fn close(self) {}
}
