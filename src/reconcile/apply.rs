//! From a prepared row and what the store holds to what is written: the worker's side of a
//! decision batch ([`crate::store::batch`]). Pure: no I/O, the store reads the facts and
//! writes the plan inside its transaction.
//!
//! A prepared notification with its order goes through [`decide`]; everything else (an
//! unreadable body, a refused or failed confirmation, a shop that could not be asked) becomes
//! a status: tried again with backoff, or `dead` once its attempts run out.

use super::decide::{decide, Decision, Facts, Outcome};
use super::policy::{DecisionMode, Policy, WorkerConfig};
use super::prepare::Prepared;
use crate::deliver::Routes;
use crate::domain::{Action, ActionKind, InboxStatus, PaymentStatus};
use crate::provider::ProviderKind;
use crate::shop::ShopError;
use crate::store::batch::{FactsQuery, Plan, Source, StoredFacts, Write};
use crate::store::{Claimed, OpenPayment, Planner};

/// What the planner hands back for a decided row: the outcome and why. Its actions and the
/// payment's new state went into the plan (see [`crate::store::batch::Applied`] for which
/// actions were written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Decided, ignored, or parked until the order is there.
    pub outcome: Outcome,
    /// One line for people: why.
    pub note: String,
}

/// Plans rows with the policy and the worker's retry settings.
#[derive(Debug, Clone)]
pub struct Decider {
    /// What the decision table does in the cases with a choice.
    pub policy: Policy,
    /// Retries and backoff.
    pub config: WorkerConfig,
    /// Which sinks each kind of action is delivered to.
    pub sinks: Routes,
}

impl Planner<Prepared> for Decider {
    type Decision = Verdict;

    fn query<'a>(&self, _row: &'a Claimed, prepared: &'a Prepared) -> Option<FactsQuery<'a>> {
        let Prepared::Ready { n, order: Ok(order), .. } = prepared else { return None };
        Some(FactsQuery {
            provider: n.provider,
            payment_key: n.payment_id.as_deref().unwrap_or(&n.event_id),
            order_id: order.as_ref().map(|o| o.order_id.as_str()),
            request_key: n.request_key.as_deref(),
        })
    }

    fn plan<'a>(
        &self,
        row: &'a Claimed,
        prepared: &'a Prepared,
        facts: Option<StoredFacts>,
        now: i64,
    ) -> Plan<'a, Verdict> {
        let status = |write: Write<'a>| Plan { write, confirmed: false, decision: None };
        match prepared {
            Prepared::Unreadable(e) => {
                tracing::error!(inbox_id = row.id, error = %e, "notification cannot be read; marked dead");
                status(Write::Finish {
                    status: InboxStatus::Dead,
                    outcome: None,
                    error: Some(e.clone()),
                })
            }
            Prepared::Refused(why) => {
                tracing::warn!(inbox_id = row.id, "{why}; rejected with no action");
                status(Write::Finish {
                    status: InboxStatus::Rejected,
                    outcome: Some(why.clone()),
                    error: None,
                })
            }
            // The provider or the network down is not the row's fault: no attempt is used up.
            Prepared::Unconfirmed { error, payment_key, counts } => {
                status(self.failed(row, payment_key.clone(), error, now, *counts))
            }
            Prepared::Ready { n, order: Err(e), .. } => {
                // An unreachable database is not this row's fault: it does not use up attempts.
                let counts = !matches!(e, ShopError::Connect { .. });
                let key = n.payment_id.clone().unwrap_or_else(|| n.event_id.clone());
                status(self.failed(row, Some(key), &e.to_string(), now, counts))
            }
            Prepared::Ready { n, order: Ok(order), verified } => {
                let facts = facts.unwrap_or_default();
                let payment_key = n.payment_id.as_deref().unwrap_or(&n.event_id);
                if let Some((earlier, its_next)) = facts.blocker {
                    let next = its_next.max(now + self.config.retry_base.as_millis() as i64);
                    return Plan {
                        write: Write::Wait {
                            status: InboxStatus::Pending,
                            payment_key: payment_key.to_owned(),
                            note: format!(
                                "waiting for earlier notification {earlier} of the same payment"
                            ),
                            next_attempt_at: next,
                        },
                        confirmed: *verified,
                        decision: None,
                    };
                }
                // Another payment that paid this order: not this one, under any of its ids,
                // through any channel of its provider (a PayPal capture comes as a webhook and
                // as an IPN).
                let same_payment = |provider: &str, id: &str| {
                    ProviderKind::from_name(provider).map(ProviderKind::family)
                        == Some(n.provider.family())
                        && (id == payment_key || Some(id) == n.related_payment_id.as_deref())
                };
                let paid_by_other = facts
                    .payers
                    .iter()
                    .find(|(provider, id)| !same_payment(provider, id))
                    .map(|(provider, id)| format!("{provider}:{id}"));
                let window = self.policy.unmatched_retry_for.as_millis() as i64;
                let Decision { outcome, mut actions, payment, note } = decide(
                    Facts {
                        notification: n,
                        payment: facts.payment.as_ref(),
                        order: order.as_ref(),
                        paid_by_other: paid_by_other.as_deref(),
                        own_refund: facts.own_refund,
                        unmatched_expired: now - row.first_tried_at >= window,
                        failure_notice_due: now - row.received_at
                            >= self.policy.failure_notice_delay.as_millis() as i64,
                    },
                    &self.policy,
                );
                if self.policy.mode == DecisionMode::Shadow {
                    actions = actions.into_iter().map(Action::into_shadow).collect();
                }
                let write = match outcome {
                    Outcome::Park => Write::Wait {
                        status: InboxStatus::Parked,
                        payment_key: payment_key.to_owned(),
                        note: note.clone(),
                        next_attempt_at: park_until(row.first_tried_at, now, window, &self.config),
                    },
                    Outcome::Done | Outcome::Ignored | Outcome::Hold => {
                        tracing::debug!(inbox_id = row.id, event = %n.event_id, note = %note, actions = actions.len(), "decided");
                        let hold = self.policy.failure_notice_delay.as_millis() as i64;
                        Write::Decided {
                            status: match outcome {
                                Outcome::Ignored => InboxStatus::Ignored,
                                Outcome::Hold => InboxStatus::Parked,
                                _ => InboxStatus::Done,
                            },
                            until: (outcome == Outcome::Hold)
                                .then(|| (row.received_at + hold).max(now + 1)),
                            note: note.clone(),
                            payment_key,
                            source: Source {
                                provider: n.provider,
                                payment_id: n.payment_id.as_deref(),
                                event_id: &n.event_id,
                            },
                            actions,
                            payment,
                        }
                    }
                };
                Plan { write, confirmed: *verified, decision: Some(Verdict { outcome, note }) }
            }
        }
    }

    fn store_error(&self, row: &Claimed, error: &str, now: i64) -> Write<'static> {
        self.failed(row, None, error, now, true)
    }

    fn sinks(&self, kind: ActionKind) -> &[std::sync::Arc<str>] {
        self.sinks.of(kind)
    }
}

impl Decider {
    /// A failed attempt: retry with backoff, or `dead` when attempts run out. With `counts`
    /// false (the shop database or the provider is unreachable) the attempt is not counted:
    /// the row waits as long as the outage lasts, backing off up to `retry_max`.
    fn failed(
        &self,
        row: &Claimed,
        payment_key: Option<String>,
        error: &str,
        now: i64,
        counts: bool,
    ) -> Write<'static> {
        let attempts = row.attempts + u32::from(counts);
        if attempts >= self.config.max_attempts {
            tracing::error!(
                inbox_id = row.id,
                attempts,
                error,
                "giving up on notification; marked dead"
            );
            return Write::GiveUp { attempts, error: error.to_owned(), payment_key };
        }
        let delay = retry_delay(attempts, counts, now - row.first_tried_at, &self.config);
        tracing::warn!(
            inbox_id = row.id,
            attempts,
            retry_in_ms = delay,
            error,
            "notification will be retried"
        );
        Write::Retry {
            attempts,
            error: error.to_owned(),
            payment_key,
            next_attempt_at: now + delay,
        }
    }
}

/// The review of a payment left open: pending for longer than `policy.pending_review_after`,
/// or authorized and not captured for longer than `policy.authorization_review_after`, since
/// its last notification. `None` while it is within its time. One per payment and status.
pub fn open_payment_review(p: &OpenPayment, policy: &Policy, now: i64) -> Option<Action> {
    let (after, key, what) = match p.status {
        PaymentStatus::Pending => (
            policy.pending_review_after,
            "policy.pending_review_after",
            "is still pending, with no final notification: look it up in the provider's \
             dashboard (a bank transfer or voucher that was never paid, or a lost webhook)",
        ),
        PaymentStatus::Authorized => (
            policy.authorization_review_after,
            "policy.authorization_review_after",
            "was authorized and never captured: capture it before the authorization lapses, \
             or cancel the order",
        ),
        _ => return None,
    };
    let open_for = now.saturating_sub(p.since_ms);
    if open_for < i64::try_from(after.as_millis()).unwrap_or(i64::MAX) {
        return None;
    }
    let age = crate::time::format_age(now, p.since_ms);
    let action = Action {
        kind: ActionKind::Review,
        order_id: p.order_id.clone(),
        amount: None,
        reason: format!(
            "payment {}:{} {what} ({age} since its last notification; {key} {})",
            p.provider,
            p.payment_id,
            crate::time::format_duration(after)
        ),
        template: None,
        customer_email: None,
        idempotency_key: format!(
            "review:open:{}:{}:{}",
            p.status.as_str(),
            p.provider,
            p.payment_id
        ),
        earlier_key: None,
        shadow: false,
    };
    Some(if policy.mode == DecisionMode::Shadow { action.into_shadow() } else { action })
}

/// Milliseconds before a failed row is tried again. A counted failure backs off
/// exponentially from `retry_base` (its `attempts`th try); an outage (not counted) waits half
/// the time the row has been failing, so a long outage is not hammered. Both within
/// `retry_base..=retry_max`.
pub fn retry_delay(attempts: u32, counts: bool, failing_for: i64, config: &WorkerConfig) -> i64 {
    let (base, max) = (config.retry_base.as_millis() as i64, config.retry_max.as_millis() as i64);
    if counts {
        base.saturating_mul(1 << attempts.saturating_sub(1).min(20)).min(max)
    } else {
        (failing_for / 2).clamp(base, max)
    }
}

/// When a parked row (its order not found yet) is tried again: after half the time it has been
/// waiting (within `retry_base..=retry_max`), and no later than the end of its window, when
/// it is decided as unmatched.
pub fn park_until(first_tried_at: i64, now: i64, window: i64, config: &WorkerConfig) -> i64 {
    let (base, max) = (config.retry_base.as_millis() as i64, config.retry_max.as_millis() as i64);
    let delay = ((now - first_tried_at) / 2).clamp(base, max);
    (now + delay).min(first_tried_at + window)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config() -> WorkerConfig {
        WorkerConfig {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            ..WorkerConfig::default()
        }
    }

    #[test]
    fn counted_failures_back_off_exponentially_up_to_the_maximum() {
        let c = config();
        let delays: Vec<i64> = (1..=11).map(|n| retry_delay(n, true, 0, &c)).collect();
        assert_eq!(
            delays,
            [
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000,
                300_000
            ]
        );
        // No overflow however many attempts.
        assert_eq!(retry_delay(u32::MAX, true, 0, &c), 300_000);
    }

    #[test]
    fn an_outage_waits_half_the_time_it_has_lasted() {
        let c = config();
        assert_eq!(retry_delay(3, false, 0, &c), 1_000, "never below the base");
        assert_eq!(retry_delay(3, false, 60_000, &c), 30_000);
        assert_eq!(retry_delay(3, false, 3_600_000, &c), 300_000, "never above the maximum");
    }

    #[test]
    fn a_payment_left_open_is_reviewed_once_its_time_has_passed() {
        let p = |status| OpenPayment {
            provider: ProviderKind::Stripe,
            payment_id: "pi_1".into(),
            status,
            order_id: Some("1001".into()),
            since_ms: 0,
            inbox_id: 1,
            event_id: "evt_1".into(),
            endpoint: "stripe".into(),
        };
        let policy = Policy::default();
        let day = 24 * 3600 * 1000;
        assert_eq!(open_payment_review(&p(PaymentStatus::Pending), &policy, 7 * day - 1), None);
        let review = open_payment_review(&p(PaymentStatus::Pending), &policy, 7 * day).unwrap();
        assert_eq!(review.idempotency_key, "review:open:pending:stripe:pi_1");
        assert_eq!(review.order_id.as_deref(), Some("1001"));
        assert_eq!(open_payment_review(&p(PaymentStatus::Authorized), &policy, 6 * day - 1), None);
        let auth = open_payment_review(&p(PaymentStatus::Authorized), &policy, 6 * day).unwrap();
        assert_eq!(auth.idempotency_key, "review:open:authorized:stripe:pi_1");
        assert_eq!(open_payment_review(&p(PaymentStatus::Failed), &policy, 100 * day), None);
        let shadow = Policy { mode: DecisionMode::Shadow, ..policy };
        let review = open_payment_review(&p(PaymentStatus::Pending), &shadow, 7 * day).unwrap();
        assert!(review.shadow && review.idempotency_key.starts_with("shadow:review:open:"));
    }

    #[test]
    fn a_parked_row_is_tried_again_by_the_end_of_its_window() {
        let c = config();
        let window = 30 * 60_000;
        assert_eq!(park_until(0, 0, window, &c), 1_000);
        assert_eq!(park_until(0, 120_000, window, &c), 180_000);
        assert_eq!(park_until(0, 1_000_000, window, &c), 1_300_000);
        // Half an hour after the first try it is decided as unmatched, not later.
        assert_eq!(park_until(0, 1_700_000, window, &c), window);
    }
}
