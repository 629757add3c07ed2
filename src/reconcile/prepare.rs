//! The no-transaction phase of a batch: each claimed row is confirmed with its provider when
//! the row needs that (the IPN postback, PayPal's API for a webhook stored unverified), parsed
//! by its endpoint's provider, and its order looked up in the shop's database, with no store
//! transaction open (the shop and the provider may be slow).

use std::collections::HashMap;

use super::worker::Worker;
use crate::provider::{self, Confirmation, Kind, Notification};
use crate::shop::{cut_reference, Lookup, Order, OrderSource, ShopError};
use crate::store::Claimed;

/// Confirmations (IPN postbacks, PayPal API checks) of one batch in flight at once.
const CONFIRMATIONS_AT_ONCE: usize = 8;
/// Confirmations per pass; further unconfirmed rows wait for the next pass.
const CONFIRMATIONS_PER_PASS: usize = 16;

/// A claimed row after the no-transaction phase.
#[derive(Debug)]
pub enum Prepared {
    /// The body could not be read: it will not get better by retrying.
    Unreadable(String),
    /// The provider refused to confirm it (PayPal answered INVALID to the IPN postback, FAILURE
    /// to the webhook signature check): not a genuine notification.
    Refused(String),
    /// The confirmation failed (network, timeout, an unexpected answer): try again later. The
    /// payment it names (read, not acted on) makes later rows of that payment wait behind it.
    /// `counts`: whether the failure uses up an attempt (not when the provider is down).
    Unconfirmed { error: String, payment_key: Option<String>, counts: bool },
    /// Parsed, and the order looked up (or the lookup failed). `verified` is set when the
    /// row was confirmed by its provider in this pass (recorded with the row).
    Ready { n: Box<Notification>, order: Result<Option<Order>, ShopError>, verified: bool },
}

impl Worker {
    /// Parses each row and looks its order up; no transaction is open meanwhile. Lookups are
    /// deduplicated and run concurrently, up to the shop's pool size.
    ///
    /// Rows that must be confirmed (IPN, PayPal webhooks stored unverified: see
    /// [`crate::provider::ProviderKind::confirmed_by`]) are confirmed first (when `confirm`;
    /// a dry run does not) and nothing is decided on an unconfirmed one. At most
    /// [`CONFIRMATIONS_PER_PASS`] are confirmed per pass, so a slow provider holds up the rest
    /// of the batch for a bounded time.
    pub(super) async fn prepare(
        &self,
        source: &OrderSource,
        rows: &[Claimed],
        confirm: bool,
    ) -> Vec<Prepared> {
        use futures_util::stream::{self, StreamExt};
        let not_now =
            |message: &str| Confirmation::Failed { message: message.into(), transient: true };
        let mut answers: HashMap<i64, Confirmation> = HashMap::new();
        let mut pending = Vec::new();
        for row in rows.iter().filter(|r| needs_confirmation(r) && r.unreadable.is_none()) {
            if !confirm {
                answers.insert(row.id, not_now("dry run: not confirmed with the provider"));
            } else if pending.len() == CONFIRMATIONS_PER_PASS {
                answers.insert(row.id, not_now("waiting for its turn to be confirmed"));
            } else {
                pending.push(row.clone());
            }
        }
        let answered: Vec<(i64, Confirmation)> = stream::iter(pending)
            .map(|row| async move { (row.id, self.confirm(&row).await) })
            .buffer_unordered(CONFIRMATIONS_AT_ONCE)
            .collect()
            .await;
        answers.extend(answered);
        let mut parsed = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(e) = &row.unreadable {
                parsed.push(Err(Prepared::Unreadable(e.clone())));
                continue;
            }
            match answers.get(&row.id) {
                None | Some(Confirmation::Confirmed) => {}
                Some(Confirmation::Refused(why)) => {
                    parsed.push(Err(Prepared::Refused(why.clone())));
                    continue;
                }
                Some(Confirmation::Failed { message, transient }) => {
                    let payment_key =
                        self.parse(row).ok().map(|n| n.payment_id.unwrap_or(n.event_id));
                    parsed.push(Err(Prepared::Unconfirmed {
                        error: message.clone(),
                        payment_key,
                        counts: !transient,
                    }));
                    continue;
                }
            }
            match self.parse(row) {
                Err(e) => parsed.push(Err(Prepared::Unreadable(e))),
                Ok(n) if n.kind == Kind::Ignored => parsed.push(Ok((n, None))),
                Ok(n) => {
                    let mut reference = n
                        .merchant_reference
                        .as_deref()
                        .map(|r| cut_reference(self.shop.reference_pattern.as_ref(), r));
                    if reference.is_none() {
                        reference = self.known_order(&n).await;
                    }
                    let lookup = Lookup { reference, psp_reference: n.payment_id.clone() };
                    parsed.push(Ok((n, Some(lookup))));
                }
            }
        }
        let mut unique: Vec<Lookup> =
            parsed.iter().filter_map(|p| p.as_ref().ok()?.1.clone()).collect();
        unique.sort_by(|a, b| {
            (&a.reference, &a.psp_reference).cmp(&(&b.reference, &b.psp_reference))
        });
        unique.dedup();
        let orders = source.find_many(&unique, &self.shop.status, self.shop.pool_size).await;
        for _ in orders.iter().filter(|o| o.is_err()) {
            self.metrics.shop_lookup_error();
        }
        let found: HashMap<Lookup, Result<Option<Order>, ShopError>> =
            unique.into_iter().zip(orders).collect();
        parsed
            .into_iter()
            .zip(rows)
            .map(|(p, row)| {
                let verified = answers.contains_key(&row.id);
                match p {
                    Err(prepared) => prepared,
                    Ok((n, None)) => Prepared::Ready { n: Box::new(n), order: Ok(None), verified },
                    Ok((n, Some(lookup))) => {
                        let order = found.get(&lookup).cloned().unwrap_or(Ok(None));
                        Prepared::Ready { n: Box::new(n), order, verified }
                    }
                }
            })
            .collect()
    }

    /// Reads a row's body with its endpoint's provider, or with the provider's defaults when
    /// the endpoint is no longer configured.
    fn parse(&self, row: &Claimed) -> Result<Notification, String> {
        let kind = row.provider.ok_or("no adapter for this row's provider")?;
        match self.endpoints.get(&row.endpoint) {
            Some(e) if e.provider.kind() == kind => e.provider.parse(&row.body),
            _ => provider::parse_unconfigured(kind, &row.body),
        }
    }

    /// Confirms a row with its endpoint's provider.
    async fn confirm(&self, row: &Claimed) -> Confirmation {
        let (id, endpoint) = (row.id, &row.endpoint);
        let Some(registered) = self.endpoints.get(endpoint) else {
            return Confirmation::Failed {
                message: format!(
                    "endpoint \"{endpoint}\" is no longer configured; cannot confirm the notification"
                ),
                transient: false,
            };
        };
        if row.provider != Some(registered.provider.kind()) {
            return Confirmation::Failed {
                message: format!(
                    "endpoint \"{endpoint}\" is now a {} endpoint; cannot confirm the notification",
                    registered.provider.kind()
                ),
                transient: false,
            };
        }
        let answer = registered.provider.confirm(&row.headers, &row.body).await;
        match &answer {
            Confirmation::Failed { message, .. } => {
                tracing::warn!(inbox_id = id, error = %message, "confirmation failed; will retry")
            }
            Confirmation::Confirmed => tracing::debug!(inbox_id = id, "confirmed by the provider"),
            Confirmation::Refused(why) => {
                tracing::debug!(inbox_id = id, reason = %why, "refused by the provider")
            }
        }
        answer
    }

    /// The order our records matched this payment to before (refunds and disputes often
    /// carry no merchant reference).
    async fn known_order(&self, n: &Notification) -> Option<String> {
        let payment = n.payment_id.as_deref()?;
        self.store.order_of_payment(n.provider, payment).await.ok().flatten()
    }
}

/// Whether the row must be confirmed with its provider before anything is decided on it: its
/// provider and its kept headers say so, and it has not been confirmed yet.
fn needs_confirmation(row: &Claimed) -> bool {
    row.verified_at.is_none()
        && row.provider.is_some_and(|p| p.confirmed_by(&row.headers).is_some())
}
