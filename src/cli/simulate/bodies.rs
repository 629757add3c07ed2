//! The notifications `simulate` builds: one body per provider and event, shaped like the
//! fixtures in `fixtures/<provider>/`, carrying the order where that provider's checkout puts
//! it (as the provider's module reads it), the amount exactly in the provider's units, and
//! fresh ids.

use serde_json::{json, Value};

use super::Event;
use crate::money::{stripe_exponent, Money};
use crate::provider::{adflex, paypal_ipn, worldpay_xml};
use crate::time::format_utc_as;

/// What is simulated.
#[derive(Debug)]
pub(super) struct Sim<'a> {
    /// The shop's order id, as the checkout passes it to the provider.
    pub order: &'a str,
    /// The amount: paid, or for `refunded` refunded.
    pub amount: Money,
    /// Which event.
    pub event: Event,
    /// The payment a refund names (given, or found in the store); `None`: a new payment.
    pub payment_id: Option<&'a str>,
    /// Unix milliseconds: the event's time.
    pub now_ms: i64,
}

/// A built notification body.
#[derive(Debug)]
pub(super) struct Body {
    /// The raw bytes, as the provider would post them.
    pub bytes: Vec<u8>,
    /// The request's `Content-Type`.
    pub content_type: &'static str,
    /// The provider's name of the event (`payment_intent.succeeded`, `CAPTURED`, …).
    pub event_type: String,
    /// The provider's payment id the body names.
    pub payment_id: String,
}

/// Fresh random ids, in the provider's alphabets.
#[derive(Debug)]
pub(super) struct Ids(ring::rand::SystemRandom);

const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const UPPER: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const HEX: &[u8] = b"0123456789abcdef";
const DIGITS: &[u8] = b"0123456789";

impl Ids {
    pub(super) fn new() -> Ids {
        Ids(ring::rand::SystemRandom::new())
    }

    /// `n` characters from `alphabet` (whose length divides 256 or nearly: ids, not keys).
    fn from(&self, alphabet: &[u8], n: usize) -> String {
        use ring::rand::SecureRandom;
        let mut bytes = vec![0u8; n];
        // The system's random source does not fail on a working system; the clock and the
        // process id still make a usable id if it ever did.
        if self.0.fill(&mut bytes).is_err() {
            let seed = crate::time::now_ms().unsigned_abs() ^ u64::from(std::process::id());
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = seed.rotate_left(u32::try_from(i * 7 % 64).unwrap_or(0)).to_le_bytes()[0];
            }
        }
        bytes.iter().map(|b| char::from(alphabet[usize::from(*b) % alphabet.len()])).collect()
    }

    fn alnum(&self, n: usize) -> String {
        self.from(ALNUM, n)
    }

    fn upper(&self, n: usize) -> String {
        self.from(UPPER, n)
    }

    fn hex(&self, n: usize) -> String {
        self.from(HEX, n)
    }

    fn digits(&self, n: usize) -> String {
        self.from(DIGITS, n)
    }

    /// A version-4-shaped UUID.
    fn uuid(&self) -> String {
        let h = self.hex(30);
        format!("{}-{}-4{}-a{}-{}", &h[..8], &h[8..12], &h[12..15], &h[15..18], &h[18..30])
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmm`, without a zone (append `Z` where the provider writes one).
fn millis_time(ms: i64) -> String {
    format!("{}.{:03}", format_utc_as(ms, "%Y-%m-%dT%H:%M:%S"), ms.rem_euclid(1000))
}

/// The amount in Stripe's integer units: Stripe's exponent differs from ISO 4217 for a few
/// currencies (ISK two-decimal, MGA zero-decimal). An amount Stripe cannot express is refused.
pub(super) fn stripe_minor(amount: Money) -> Result<i64, String> {
    let own = amount.currency.exponent();
    let stripe = stripe_exponent(amount.currency);
    let too_big = || format!("{amount} is too large");
    let minor = if stripe >= own {
        10i64
            .checked_pow(stripe - own)
            .and_then(|f| amount.minor.checked_mul(f))
            .ok_or_else(too_big)?
    } else {
        let divisor = 10i64.checked_pow(own - stripe).ok_or_else(too_big)?;
        if amount.minor % divisor != 0 {
            return Err(format!(
                "Stripe takes {} in whole units: {} cannot be charged",
                amount.currency,
                amount.to_decimal_string()
            ));
        }
        amount.minor / divisor
    };
    // Read back exactly as the Stripe module reads it.
    match Money::from_scaled(minor, stripe, amount.currency) {
        Ok(back) if back == amount => Ok(minor),
        _ => Err(format!("{amount} cannot be written in Stripe's units")),
    }
}

/// A Stripe snapshot event: `payment_intent.succeeded` / `.processing` / `.payment_failed`, or
/// `charge.refunded` for a refund of the PaymentIntent. The order is `metadata.order_id`.
pub(super) fn stripe(sim: &Sim<'_>, ids: &Ids) -> Result<Body, String> {
    let minor = stripe_minor(sim.amount)?;
    let currency = sim.amount.currency.code().to_ascii_lowercase();
    let created = sim.now_ms.div_euclid(1000);
    let pi = match sim.payment_id {
        Some(id) => id.to_owned(),
        None => format!("pi_3{}", ids.alnum(23)),
    };
    let charge = match pi.strip_prefix("pi_") {
        Some(suffix) => format!("ch_{suffix}"),
        None => format!("ch_3{}", ids.alnum(23)),
    };
    let metadata = json!({ "order_id": sim.order });
    let (event_type, object) = match sim.event {
        Event::Refunded => (
            "charge.refunded",
            json!({
                "id": charge,
                "object": "charge",
                "amount": minor,
                "amount_captured": minor,
                "amount_refunded": minor,
                "captured": true,
                "created": created,
                "currency": currency,
                "livemode": false,
                "metadata": metadata,
                "paid": true,
                "payment_intent": pi,
                "refunded": true,
                "status": "succeeded"
            }),
        ),
        event => {
            let (kind, status, received, method) = match event {
                Event::Succeeded => ("payment_intent.succeeded", "succeeded", minor, "card"),
                Event::Pending => ("payment_intent.processing", "processing", 0, "sepa_debit"),
                _ => ("payment_intent.payment_failed", "requires_payment_method", 0, "card"),
            };
            let error = (event == Event::Failed).then(|| {
                json!({
                    "code": "card_declined",
                    "decline_code": "generic_decline",
                    "message": "Your card was declined.",
                    "type": "card_error"
                })
            });
            (
                kind,
                json!({
                    "id": pi,
                    "object": "payment_intent",
                    "amount": minor,
                    "amount_capturable": 0,
                    "amount_received": received,
                    "capture_method": "automatic_async",
                    "created": created,
                    "currency": currency,
                    "last_payment_error": error,
                    "latest_charge": (event == Event::Succeeded).then_some(&charge),
                    "livemode": false,
                    "metadata": metadata,
                    "payment_method_types": [method],
                    "receipt_email": null,
                    "status": status
                }),
            )
        }
    };
    let event = json!({
        "id": format!("evt_3{}", ids.alnum(23)),
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "data": { "object": object },
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": event_type
    });
    Ok(Body {
        bytes: pretty(&event),
        content_type: "application/json",
        event_type: event_type.to_owned(),
        payment_id: pi,
    })
}

/// A PayPal webhook event: `PAYMENT.CAPTURE.COMPLETED` / `.PENDING` / `.DENIED`, or
/// `.REFUNDED` with the refund linking its capture (`rel: "up"`). The order is `custom_id`
/// (and `invoice_id`, for endpoints that read that one).
pub(super) fn paypal(sim: &Sim<'_>, ids: &Ids) -> Body {
    let value = json!({
        "currency_code": sim.amount.currency.code(),
        "value": sim.amount.to_decimal_string()
    });
    let capture = sim.payment_id.map_or_else(|| ids.upper(17), str::to_owned);
    let time = format!("{}Z", millis_time(sim.now_ms));
    let api = "https://api.paypal.com/v2/payments";
    let (event_type, resource_type, summary, resource) = match sim.event {
        Event::Refunded => {
            let refund = ids.upper(17);
            (
                "PAYMENT.CAPTURE.REFUNDED",
                "refund",
                "A capture payment was refunded",
                json!({
                    "id": refund,
                    "amount": value,
                    "invoice_id": sim.order,
                    "custom_id": sim.order,
                    "status": "COMPLETED",
                    "create_time": format_utc_as(sim.now_ms, "%Y-%m-%dT%H:%M:%SZ"),
                    "update_time": format_utc_as(sim.now_ms, "%Y-%m-%dT%H:%M:%SZ"),
                    "links": [
                        { "href": format!("{api}/refunds/{refund}"), "rel": "self", "method": "GET" },
                        { "href": format!("{api}/captures/{capture}"), "rel": "up", "method": "GET" }
                    ]
                }),
            )
        }
        event => {
            let (event_type, status, summary) = match event {
                Event::Succeeded => ("PAYMENT.CAPTURE.COMPLETED", "COMPLETED", "Payment completed"),
                Event::Pending => ("PAYMENT.CAPTURE.PENDING", "PENDING", "Payment pending"),
                _ => ("PAYMENT.CAPTURE.DENIED", "DECLINED", "A payment capture was denied"),
            };
            let mut resource = json!({
                "id": capture,
                "amount": value,
                "final_capture": true,
                "seller_protection": { "status": "ELIGIBLE" },
                "invoice_id": sim.order,
                "custom_id": sim.order,
                "status": status,
                "supplementary_data": { "related_ids": { "order_id": ids.upper(17) } },
                "create_time": format_utc_as(sim.now_ms, "%Y-%m-%dT%H:%M:%SZ"),
                "update_time": format_utc_as(sim.now_ms, "%Y-%m-%dT%H:%M:%SZ"),
                "links": [
                    { "href": format!("{api}/captures/{capture}"), "rel": "self", "method": "GET" }
                ]
            });
            if event == Event::Pending {
                resource["status_details"] = json!({ "reason": "PENDING_REVIEW" });
            }
            (event_type, "capture", summary, resource)
        }
    };
    let id = format!("WH-{}-{}", ids.upper(17), ids.upper(17));
    let event = json!({
        "id": id,
        "event_version": "1.0",
        "create_time": time,
        "resource_type": resource_type,
        "resource_version": "2.0",
        "event_type": event_type,
        "summary": summary,
        "resource": resource,
        "links": [{
            "href": format!("https://api.paypal.com/v1/notifications/webhooks-events/{id}"),
            "rel": "self",
            "method": "GET"
        }]
    });
    Body {
        bytes: pretty(&event),
        content_type: "application/json",
        event_type: event_type.to_owned(),
        payment_id: capture,
    }
}

/// A PayPal IPN message (UTF-8), naming the endpoint's account: `payment_status` Completed,
/// Pending (an eCheck), Denied, or Refunded (its own `txn_id`, the payment in `parent_txn_id`,
/// a negative `mc_gross`). The order is `invoice` (and `custom`).
pub(super) fn paypal_ipn(sim: &Sim<'_>, settings: &paypal_ipn::Settings, ids: &Ids) -> Body {
    let payment = sim.payment_id.map_or_else(|| ids.upper(17), str::to_owned);
    // A refund is a transaction of its own that names the payment as its parent.
    let txn = if sim.event == Event::Refunded { ids.upper(17) } else { payment.clone() };
    let amount = sim.amount.to_decimal_string();
    // PayPal writes IPN dates in its own Pacific time.
    let date = format_utc_as(sim.now_ms - 8 * 3_600_000, "%H:%M:%S %b %d, %Y PST");
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("payment_date", &date)
        .append_pair("charset", "UTF-8")
        .append_pair("notify_version", "3.9")
        .append_pair("payer_email", "buyer@example.com")
        .append_pair("payer_status", "verified")
        .append_pair("verify_sign", &ids.alnum(56));
    if let Some(email) = &settings.receiver_email {
        form.append_pair("receiver_email", email);
    }
    if let Some(id) = &settings.receiver_id {
        form.append_pair("receiver_id", id);
    }
    form.append_pair("ipn_track_id", &ids.hex(13))
        .append_pair("mc_currency", sim.amount.currency.code());
    let status = match sim.event {
        Event::Succeeded => {
            form.append_pair("mc_gross", &amount).append_pair("payment_type", "instant");
            "Completed"
        }
        Event::Pending => {
            form.append_pair("mc_gross", &amount)
                .append_pair("pending_reason", "echeck")
                .append_pair("payment_type", "echeck");
            "Pending"
        }
        Event::Failed => {
            form.append_pair("mc_gross", &amount).append_pair("payment_type", "instant");
            "Denied"
        }
        Event::Refunded => {
            form.append_pair("mc_gross", &format!("-{amount}"))
                .append_pair("reason_code", "refund")
                .append_pair("parent_txn_id", &payment);
            "Refunded"
        }
    };
    form.append_pair("payment_status", status)
        .append_pair("txn_id", &txn)
        .append_pair("txn_type", "web_accept")
        .append_pair("invoice", sim.order)
        .append_pair("custom", sim.order)
        .append_pair("item_name", &format!("Order {}", sim.order));
    Body {
        bytes: form.finish().into_bytes(),
        content_type: "application/x-www-form-urlencoded",
        event_type: status.to_owned(),
        payment_id: payment,
    }
}

/// An Access Worldpay payment event: `sentForSettlement` (the capture), `sentForAuthorization`,
/// `refused`, or `sentForRefund` with the refund's own reference. The order, and the payment,
/// is `transactionReference`; the amount is in ISO 4217 minor units.
pub(super) fn worldpay(sim: &Sim<'_>, ids: &Ids) -> Body {
    let event_type = match sim.event {
        Event::Succeeded => "sentForSettlement",
        Event::Pending => "sentForAuthorization",
        Event::Failed => "refused",
        Event::Refunded => "sentForRefund",
    };
    let mut details = json!({
        "classification": "payment",
        "downstreamReference": ids.digits(10),
        "transactionReference": sim.order,
        "type": event_type,
        "date": format_utc_as(sim.now_ms, "%Y-%m-%d"),
        "amount": { "value": sim.amount.minor, "currencyCode": sim.amount.currency.code() },
        "_links": { "payment": { "href": "" } }
    });
    if sim.event == Event::Refunded {
        details["reference"] = json!(format!("refund-{}-{}", sim.order, ids.digits(6)));
    }
    let event = json!({
        "eventId": ids.uuid(),
        "eventTimestamp": millis_time(sim.now_ms),
        "eventDetails": details
    });
    Body {
        bytes: pretty(&event),
        content_type: "application/vnd.worldpay.events-v1.hal+json",
        event_type: event_type.to_owned(),
        payment_id: sim.order.to_owned(),
    }
}

/// A Worldpay XML order notification: `CAPTURED`, `SENT_FOR_AUTHORISATION`, `REFUSED` or
/// `REFUNDED`. The order, and the payment, is `orderCode`; the merchant code is the
/// endpoint's first `merchant_codes`. It has no event id: the same event for the same order on
/// the same day is a repeat delivery.
pub(super) fn worldpay_xml(sim: &Sim<'_>, settings: &worldpay_xml::Settings, ids: &Ids) -> Body {
    let (event, account, direction) = match sim.event {
        Event::Succeeded => ("CAPTURED", "IN_PROCESS_CAPTURED", "credit"),
        Event::Pending => ("SENT_FOR_AUTHORISATION", "IN_PROCESS_AUTHORISED", "credit"),
        Event::Failed => ("REFUSED", "IN_PROCESS_AUTHORISED", "credit"),
        Event::Refunded => ("REFUNDED", "SETTLED_BIBIT_NET", "debit"),
    };
    let merchant = settings.merchant_codes.first().map_or("MERCHANT", String::as_str);
    let amount = format!(
        r#"<amount value="{}" currencyCode="{}" exponent="{}" debitCreditIndicator="{direction}"/>"#,
        sim.amount.minor,
        sim.amount.currency.code(),
        sim.amount.currency.exponent()
    );
    let day = |p| format_utc_as(sim.now_ms, p);
    let xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE paymentService PUBLIC "-//WorldPay//DTD WorldPay PaymentService v1//EN"
                                "http://dtd.worldpay.com/paymentService_v1.dtd">
<paymentService version="1.4" merchantCode="{merchant}">
  <notify>
    <orderStatusEvent orderCode="{order}">
      <payment>
        <paymentMethod>VISA-SSL</paymentMethod>
        {amount}
        <lastEvent>{event}</lastEvent>
        <balance accountType="{account}">
          {amount}
        </balance>
        <riskScore value="0"/>
      </payment>
      <journal journalType="{event}">
        <bookingDate>
          <date dayOfMonth="{d}" month="{m}" year="{y}"/>
        </bookingDate>
        <accountTx accountType="{account}" batchId="{batch}">
          {amount}
        </accountTx>
      </journal>
    </orderStatusEvent>
  </notify>
</paymentService>
"#,
        merchant = xml_escape(merchant),
        order = xml_escape(sim.order),
        d = day("%-d"),
        m = day("%-m"),
        y = day("%Y"),
        batch = ids.digits(3),
    );
    Body {
        bytes: xml.into_bytes(),
        content_type: "text/xml",
        event_type: event.to_owned(),
        payment_id: sim.order.to_owned(),
    }
}

/// An Adflex notification (assumed format) with the endpoint's field paths: `statusCode`
/// `Authorised`, `MerchantPending`, `Declined`, or `Refunded` on the payment's own GUID.
pub(super) fn adflex(sim: &Sim<'_>, fields: &adflex::Fields, ids: &Ids) -> Body {
    let guid = sim.payment_id.map_or_else(|| ids.uuid(), str::to_owned);
    let status = match sim.event {
        Event::Succeeded => "Authorised",
        Event::Pending => "MerchantPending",
        Event::Failed => "Declined",
        Event::Refunded => "Refunded",
    };
    let mut v = json!({});
    set_at(&mut v, &fields.transaction_id, json!(guid));
    set_at(&mut v, &fields.reference, json!(sim.order));
    set_at(&mut v, &fields.amount, json!(sim.amount.to_decimal_string()));
    set_at(&mut v, &fields.currency, json!(sim.amount.currency.code()));
    set_at(&mut v, &fields.status, json!(status));
    for (key, value) in [
        ("cardType", json!("VISA")),
        ("maskedCardNumber", json!("424242******4242")),
        ("authCode", json!(ids.upper(6))),
        ("transactionDateTime", json!(format_utc_as(sim.now_ms, "%Y-%m-%dT%H:%M:%SZ"))),
    ] {
        if let Some(map) = v.as_object_mut() {
            map.entry(key).or_insert(value);
        }
    }
    Body {
        bytes: pretty(&v),
        content_type: "application/json",
        event_type: status.to_owned(),
        payment_id: guid,
    }
}

/// Sets a value at a dotted path (`amount.value`), making objects on the way.
fn set_at(v: &mut Value, path: &str, value: Value) {
    let mut cur = v;
    let mut keys = path.split('.').peekable();
    while let Some(key) = keys.next() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let Some(map) = cur.as_object_mut() else { return };
        if keys.peek().is_none() {
            map.insert(key.to_owned(), value);
            return;
        }
        cur = map.entry(key).or_insert_with(|| json!({}));
    }
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

#[cfg(test)]
#[path = "bodies_tests.rs"]
mod tests;
