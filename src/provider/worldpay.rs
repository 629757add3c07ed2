//! (Being written.)

use hyper::HeaderMap;

use super::{Accepted, Notification, Rejection};
use crate::config::Endpoint;

/// Verifies and identifies a request.
pub fn accept(
    _endpoint: &Endpoint,
    _headers: &HeaderMap,
    _body: &[u8],
    _now: i64,
) -> Result<Accepted, Rejection> {
    Err(Rejection::MalformedBody("not implemented yet".into()))
}

/// Reads a stored notification.
pub fn parse(_body: &[u8]) -> Result<Notification, String> {
    Err("not implemented yet".into())
}
