//! Worldpay Corporate Gateway XML order notifications: safe parsing, identification and the
//! mapping of `lastEvent` values to canonical notifications.
//!
//! These notifications carry no signature: the HTTP layer checks the endpoint's trust options
//! (`basic_auth`, `allow_from`) before [`accept`] is called. What this module owns is reading
//! an untrusted XML document safely, straight from the raw bytes, with quick-xml (a streaming
//! parser that never loads a DTD or expands a custom entity):
//!
//! - A DOCTYPE line such as Worldpay's `<!DOCTYPE paymentService PUBLIC "…"
//!   "http://dtd.worldpay.com/paymentService_v1.dtd">` is accepted and never fetched; one with
//!   an internal subset (`[…]`, where `<!ENTITY>` declarations live: external entities,
//!   billion laughs) is refused, as is a second DOCTYPE or one after the root element.
//! - Only the five predefined entities and numeric character references are allowed, in text
//!   and in every attribute; any other `&name;` is refused.
//! - Nesting is capped at [`MAX_DEPTH`] and the element count at [`MAX_ELEMENTS`].
//!
//! The safe reader is [`reader`]; this file maps what it read.
//!
//! There is no event id: the dedup key is
//! `{merchantCode}/{orderCode}:{lastEvent}:{journalType}:{date}` (see
//! [`OrderNotification::dedup_key`]). `orderCode` is both the merchant reference and the
//! payment id. Amounts are `value` in units of 10^-`exponent`, never assumed to be cents.

mod reader;

use hyper::HeaderMap;

pub use self::reader::{read, OrderNotification, RawAmount, MAX_DEPTH, MAX_ELEMENTS};
use super::{keep_headers, Accepted, Kind, Notification, Rejection};
use crate::money::{Currency, Money};
use crate::settings::{ConfigError, Resolver};

/// Headers kept with the row. Never `authorization`: it holds the basic-auth password.
const KEPT_HEADERS: &[&str] = &["content-type", "user-agent"];
/// `provider = "worldpay-xml"` settings.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The merchant codes whose notifications this endpoint takes (empty: any).
    pub merchant_codes: Vec<String>,
}

/// The endpoint keys Worldpay XML reads.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Raw {
    merchant_codes: Option<Vec<String>>,
}

impl Settings {
    pub(crate) fn resolve(raw: Raw, r: &Resolver<'_>) -> Result<Settings, ConfigError> {
        if !r.has_trust() {
            return Err(r.invalid(
                "basic_auth",
                "worldpay-xml notifications carry no signature: configure basic_auth and/or allow_from",
            ));
        }
        let merchant_codes = raw.merchant_codes.unwrap_or_default();
        if merchant_codes.iter().any(|c| c.trim().is_empty()) {
            return Err(r.invalid("merchant_codes", "holds an empty code"));
        }
        Ok(Settings { merchant_codes })
    }

    pub(crate) fn describe(&self) -> Vec<String> {
        if self.merchant_codes.is_empty() {
            vec!["any merchant code".into()]
        } else {
            vec![format!("merchant codes {}", self.merchant_codes.join(" "))]
        }
    }
}

/// Identifies a request to a Worldpay XML endpoint. There is no signature: trust was checked
/// by the HTTP layer. Unsafe or malformed XML is [`Rejection::MalformedBody`].
pub fn accept(
    settings: &Settings,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Accepted, Rejection> {
    let order = read(body).map_err(Rejection::MalformedBody)?;
    if !settings.merchant_codes.is_empty()
        && !order.merchant_code.as_ref().is_some_and(|c| settings.merchant_codes.contains(c))
    {
        return Err(Rejection::WrongReceiver("merchantCode"));
    }
    Ok(Accepted {
        dedup_key: order.dedup_key(),
        event_type: Some(order.last_event),
        headers_json: keep_headers(headers, KEPT_HEADERS),
    })
}

/// What a `lastEvent` means, and whether it is one we know. Documented per row in
/// `fixtures/worldpay-xml/README.md`.
fn kind_of(last_event: &str) -> Option<Kind> {
    Some(match last_event {
        "SENT_FOR_AUTHORISATION" => Kind::Pending,
        "AUTHORISED" => Kind::Authorized,
        // Both count as the money arriving; for one orderCode the second is a no-op.
        "CAPTURED" | "SETTLED" | "SETTLED_BY_MERCHANT" => Kind::Succeeded,
        "SENT_FOR_REFUND" | "REFUNDED" | "REFUNDED_BY_MERCHANT" => Kind::Refunded,
        "REFUND_FAILED" => Kind::RefundFailed,
        "REFUSED" | "ERROR" => Kind::Failed,
        "CANCELLED" | "EXPIRED" => Kind::Canceled,
        "CHARGED_BACK" | "INFORMATION_REQUESTED" | "CHARGEBACK_REVERSAL_REQUESTED" => {
            Kind::Disputed
        }
        "CHARGEBACK_REVERSED" | "INFORMATION_SUPPLIED" => Kind::DisputeClosed,
        _ => return None,
    })
}

/// Reads a stored XML order notification into a canonical notification. The event id is the
/// dedup key; `occurred_at` is the journal's booking date (midnight UTC), or 0.
pub fn parse(body: &[u8]) -> Result<Notification, String> {
    let order = read(body)?;
    let event_id = order.dedup_key();
    let amount = match order.event_amount() {
        None => None,
        Some(raw) => Some(amount(raw)?),
    };
    let (kind, detail) = match kind_of(&order.last_event) {
        Some(kind) => (kind, None),
        None => (Kind::Ignored, Some(format!("{} needs no reconciliation", order.last_event))),
    };
    let detail = detail.or_else(|| {
        let journal = order.journal_type.as_deref().filter(|t| *t != order.last_event)?;
        Some(format!("journal {journal}"))
    });
    Ok(Notification {
        provider: super::ProviderKind::WorldpayXml,
        event_id,
        kind,
        raw_type: order.last_event,
        payment_id: Some(order.order_code.clone()),
        merchant_reference: Some(order.order_code),
        amount,
        occurred_at: order.journal_day.unwrap_or(0),
        customer_email: None,
        object_id: None,
        request_key: None,
        related_payment_id: None,
        detail,
    })
}

/// `value` × 10^-`exponent` in `currencyCode`, exact. The exponent is required: never assumed.
fn amount(raw: &RawAmount) -> Result<Money, String> {
    let value = raw.value.as_deref().ok_or("amount has no value")?;
    if value.is_empty() || value.len() > 18 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("amount value is not an unsigned integer".into());
    }
    let value: i64 = value.parse().map_err(|_| "amount value is out of range")?;
    let exponent = raw.exponent.as_deref().ok_or("amount has no exponent")?;
    if exponent.is_empty() || exponent.len() > 2 || !exponent.bytes().all(|b| b.is_ascii_digit()) {
        return Err("amount exponent is not a small integer".into());
    }
    let exponent: u32 = exponent.parse().map_err(|_| "amount exponent is out of range")?;
    let code = raw.currency_code.as_deref().ok_or("amount has no currencyCode")?;
    Currency::parse(code)
        .and_then(|c| Money::from_scaled(value, exponent, c))
        .map_err(|e| format!("amount: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCTYPE: &str = r#"<!DOCTYPE paymentService PUBLIC "-//WorldPay//DTD WorldPay PaymentService v1//EN" "http://dtd.worldpay.com/paymentService_v1.dtd">"#;

    fn doc(last_event: &str, amount: &str, journal: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
{DOCTYPE}
<paymentService version="1.4" merchantCode="SHOPEUR">
  <notify>
    <orderStatusEvent orderCode="2001">
      <payment>
        <paymentMethod>ECMC-SSL</paymentMethod>
        {amount}
        <lastEvent>{last_event}</lastEvent>
        <balance accountType="IN_PROCESS_AUTHORISED">
          <amount value="9999" currencyCode="EUR" exponent="2" debitCreditIndicator="credit"/>
        </balance>
      </payment>
      {journal}
    </orderStatusEvent>
  </notify>
</paymentService>"#
        )
    }

    const AMOUNT: &str =
        r#"<amount value="2500" currencyCode="EUR" exponent="2" debitCreditIndicator="credit"/>"#;
    const JOURNAL: &str = r#"<journal journalType="CAPTURED"><bookingDate><date dayOfMonth="14" month="5" year="2024"/></bookingDate><accountTx accountType="IN_PROCESS_CAPTURED" batchId="30"><amount value="2500" currencyCode="EUR" exponent="2" debitCreditIndicator="credit"/></accountTx></journal>"#;

    #[test]
    fn reads_a_notification() {
        let n = read(doc("CAPTURED", AMOUNT, JOURNAL).as_bytes()).unwrap();
        assert_eq!(n.merchant_code.as_deref(), Some("SHOPEUR"));
        assert_eq!(n.order_code, "2001");
        assert_eq!(n.last_event, "CAPTURED");
        assert_eq!(n.journal_type.as_deref(), Some("CAPTURED"));
        assert_eq!(n.journal_date.as_deref(), Some("2024-05-14"));
        assert_eq!(n.journal_day, Some(1_715_644_800));
        assert_eq!(n.dedup_key(), "SHOPEUR/2001:CAPTURED:CAPTURED:2024-05-14");
        let a = n.amount.unwrap();
        assert_eq!(
            (a.value.as_deref(), a.currency_code.as_deref(), a.exponent.as_deref()),
            (Some("2500"), Some("EUR"), Some("2"))
        );
        assert_eq!(a.debit_credit.as_deref(), Some("credit"));
        // Without a journal, and without a declaration or DOCTYPE.
        let bare = r#"<paymentService merchantCode="M"><notify><orderStatusEvent orderCode="7:a&amp;b&#x41;"><payment><lastEvent><![CDATA[REFUSED]]></lastEvent></payment></orderStatusEvent></notify></paymentService>"#;
        let n = read(bare.as_bytes()).unwrap();
        assert_eq!(n.dedup_key(), "M/7:a&bA:REFUSED::");
        assert_eq!(n.amount, None);
    }

    #[test]
    fn refuses_unsafe_and_malformed_documents() {
        let deep = format!(
            "<paymentService>{}{}</paymentService>",
            "<a>".repeat(MAX_DEPTH),
            "</a>".repeat(MAX_DEPTH)
        );
        let many = format!("<paymentService>{}</paymentService>", "<a/>".repeat(MAX_ELEMENTS));
        let good = doc("AUTHORISED", AMOUNT, "");
        let cases: Vec<(String, &str)> = vec![
            (
                r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><paymentService><notify><orderStatusEvent orderCode="1"><payment><lastEvent>&e;</lastEvent></payment></orderStatusEvent></notify></paymentService>"#.into(),
                "internal subset",
            ),
            (
                r#"<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><paymentService>&lol2;</paymentService>"#.into(),
                "internal subset",
            ),
            (good.replace("<lastEvent>AUTHORISED", "<lastEvent>&e;AUTHORISED"), "refused text"),
            (good.replace("orderCode=\"2001\"", "orderCode=\"&e;\""), "refused attribute"),
            (good.replace("merchantCode=\"SHOPEUR\"", "merchantCode=\"&lt;&bogus;\""), "refused attribute"),
            (good.replace("version=\"1.4\"", "version=\"1.4\" version=\"1.4\""), "bad attribute"),
            (format!("{DOCTYPE}{good}"), "DOCTYPE"),
            (good.replace("</paymentService>", &format!("</paymentService>{DOCTYPE}")), "DOCTYPE"),
            (deep, "nested deeper"),
            (many, "elements"),
            (good.replace("</notify>", ""), "not well-formed"),
            (good.replace("</paymentService>", ""), "ends inside"),
            (format!("{good}<paymentService/>"), "second root"),
            (format!("{good}trailing"), "outside the root"),
            ("<order/>".into(), "not <paymentService>"),
            (String::new(), "no root"),
            ("not xml at all".into(), "outside the root"),
            (good.replace(" orderCode=\"2001\"", ""), "no orderCode"),
            (good.replace("orderCode=\"2001\"", "orderCode=\"\""), "orderCode is empty"),
            (good.replace("<lastEvent>AUTHORISED</lastEvent>", ""), "no orderStatusEvent/payment/lastEvent"),
            (good.replace("<lastEvent>AUTHORISED</lastEvent>", "<lastEvent/>"), "no orderStatusEvent/payment/lastEvent"),
            (good.replace("<lastEvent>AUTHORISED</lastEvent>", "<lastEvent> </lastEvent>"), "lastEvent is empty"),
            (good.replace("AUTHORISED", "AUTH:ORISED"), "lastEvent is not a word"),
            (
                good.replace("<lastEvent>AUTHORISED</lastEvent>", "<lastEvent>AUTHORISED</lastEvent><lastEvent>CAPTURED</lastEvent>"),
                "more than one lastEvent",
            ),
            (good.replace(AMOUNT, &format!("{AMOUNT}{AMOUNT}")), "more than one payment/amount"),
            (
                good.replace("</orderStatusEvent>", "</orderStatusEvent><orderStatusEvent orderCode=\"9\"/>"),
                "more than one orderStatusEvent",
            ),
            (
                doc("CAPTURED", AMOUNT, &JOURNAL.replace("dayOfMonth=\"14\"", "dayOfMonth=\"31\" ").replace("month=\"5\"", "month=\"6\"")),
                "not a calendar date",
            ),
            (doc("CAPTURED", AMOUNT, &JOURNAL.replace("year=\"2024\"", "year=\"-1\"")), "not numeric"),
            (doc("CAPTURED", AMOUNT, &JOURNAL.replace("journalType=\"CAPTURED\"", "journalType=\"a b\"")), "journalType"),
        ];
        for (xml, reason) in cases {
            let err = read(xml.as_bytes()).unwrap_err();
            assert!(err.contains(reason), "{reason:?} not in {err:?} for {xml}");
            let e = accept_body(xml.as_bytes()).unwrap_err();
            assert_eq!(e.code(), "malformed_body");
        }
        // Right at the limits is fine.
        let deep = format!(
            "<paymentService><notify><orderStatusEvent orderCode=\"1\"><payment><lastEvent>X</lastEvent>{}{}</payment></orderStatusEvent></notify></paymentService>",
            "<a>".repeat(MAX_DEPTH - 4),
            "</a>".repeat(MAX_DEPTH - 4)
        );
        read(deep.as_bytes()).unwrap();
        let many = format!(
            "<paymentService><notify><orderStatusEvent orderCode=\"1\"><payment><lastEvent>X</lastEvent>{}</payment></orderStatusEvent></notify></paymentService>",
            "<a/>".repeat(MAX_ELEMENTS - 5)
        );
        read(many.as_bytes()).unwrap();
    }

    fn accept_body(body: &[u8]) -> Result<Accepted, Rejection> {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Basic d3A6cHc=".parse().unwrap());
        headers.insert("content-type", "text/xml".parse().unwrap());
        accept(&Settings::default(), &headers, body)
    }

    #[test]
    fn accept_identifies_and_keeps_no_credentials() {
        let a = accept_body(doc("CAPTURED", AMOUNT, JOURNAL).as_bytes()).unwrap();
        assert_eq!(a.dedup_key, "SHOPEUR/2001:CAPTURED:CAPTURED:2024-05-14");
        assert_eq!(a.event_type.as_deref(), Some("CAPTURED"));
        assert_eq!(a.headers_json, r#"{"content-type":"text/xml"}"#);
        let a = accept_body(doc("AUTHORISED", AMOUNT, "").as_bytes()).unwrap();
        assert_eq!(a.dedup_key, "SHOPEUR/2001:AUTHORISED::");
    }

    #[test]
    fn every_listed_last_event_maps() {
        let kinds = [
            ("SENT_FOR_AUTHORISATION", Kind::Pending),
            ("AUTHORISED", Kind::Authorized),
            ("CAPTURED", Kind::Succeeded),
            ("SETTLED", Kind::Succeeded),
            ("SETTLED_BY_MERCHANT", Kind::Succeeded),
            ("SENT_FOR_REFUND", Kind::Refunded),
            ("REFUNDED", Kind::Refunded),
            ("REFUNDED_BY_MERCHANT", Kind::Refunded),
            ("REFUND_FAILED", Kind::RefundFailed),
            ("CANCELLED", Kind::Canceled),
            ("EXPIRED", Kind::Canceled),
            ("REFUSED", Kind::Failed),
            ("ERROR", Kind::Failed),
            ("CHARGED_BACK", Kind::Disputed),
            ("INFORMATION_REQUESTED", Kind::Disputed),
            ("CHARGEBACK_REVERSAL_REQUESTED", Kind::Disputed),
            ("CHARGEBACK_REVERSED", Kind::DisputeClosed),
            ("INFORMATION_SUPPLIED", Kind::DisputeClosed),
            ("SHOPPER_REDIRECTED", Kind::Ignored),
        ];
        for (event, kind) in kinds {
            let n = parse(doc(event, AMOUNT, "").as_bytes()).unwrap();
            assert_eq!(n.kind, kind, "{event}");
            assert_eq!(n.provider, super::super::ProviderKind::WorldpayXml);
            assert_eq!(n.raw_type, event);
            assert_eq!(n.event_id, format!("SHOPEUR/2001:{event}::"));
            assert_eq!(n.payment_id.as_deref(), Some("2001"));
            assert_eq!(n.merchant_reference.as_deref(), Some("2001"));
            assert_eq!(
                n.amount.map(|m| (m.minor, m.currency.code().to_owned())),
                Some((2500, "EUR".to_owned())),
                "{event}"
            );
            assert_eq!(n.occurred_at, 0);
            assert_eq!(n.detail.is_some(), kind == Kind::Ignored, "{event}");
        }
    }

    #[test]
    fn amounts_use_the_documents_exponent() {
        let amount = |value: &str, code: &str, exp: &str| {
            format!(
                r#"<amount value="{value}" currencyCode="{code}" exponent="{exp}" debitCreditIndicator="credit"/>"#
            )
        };
        let cases = [
            (amount("2500", "EUR", "2"), 2500, "EUR"),
            (amount("5000", "JPY", "0"), 5000, "JPY"),
            (amount("12345", "KWD", "3"), 12345, "KWD"),
            (amount("250", "EUR", "1"), 2500, "EUR"),
            (amount("25000", "EUR", "3"), 2500, "EUR"),
            (amount("500000", "JPY", "2"), 5000, "JPY"),
        ];
        for (xml, minor, code) in cases {
            let m = parse(doc("CAPTURED", &xml, "").as_bytes()).unwrap().amount.unwrap();
            assert_eq!((m.minor, m.currency.code()), (minor, code), "{xml}");
        }
        for bad in [
            amount("25001", "EUR", "3"),
            amount("-5", "EUR", "2"),
            amount("2.50", "EUR", "2"),
            amount("", "EUR", "2"),
            amount("99999999999999999999", "EUR", "2"),
            amount("2500", "XYZ", "2"),
            amount("2500", "EUR", "x"),
            r#"<amount value="2500" currencyCode="EUR"/>"#.into(),
            r#"<amount currencyCode="EUR" exponent="2"/>"#.into(),
            r#"<amount value="2500" exponent="2"/>"#.into(),
        ] {
            assert!(parse(doc("CAPTURED", &bad, "").as_bytes()).is_err(), "{bad}");
            // Identification does not need the amount: the row is stored, then shown dead.
            accept_body(doc("CAPTURED", &bad, "").as_bytes()).unwrap();
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/fixtures/worldpay-xml/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn fixtures() {
        type Expected<'a> = (&'a str, Kind, &'a str, (i64, &'a str), &'a str);
        let cases: &[Expected<'_>] = &[
            (
                "AUTHORISED.xml",
                Kind::Authorized,
                "2001",
                (2500, "EUR"),
                "SHOPEUR/2001:AUTHORISED:AUTHORISED:2024-05-14",
            ),
            (
                "CAPTURED.xml",
                Kind::Succeeded,
                "2001",
                (2500, "EUR"),
                "SHOPEUR/2001:CAPTURED:CAPTURED:2024-05-14",
            ),
            (
                "REFUSED.xml",
                Kind::Failed,
                "2002",
                (4550, "EUR"),
                "SHOPEUR/2002:REFUSED:REFUSED:2024-05-14",
            ),
            (
                "REFUNDED.xml",
                Kind::Refunded,
                "2001",
                (2500, "EUR"),
                "SHOPEUR/2001:REFUNDED:REFUNDED:2024-05-20:30/2500",
            ),
            (
                "CHARGED_BACK.xml",
                Kind::Disputed,
                "2001",
                (2500, "EUR"),
                "SHOPEUR/2001:CHARGED_BACK:CHARGED_BACK:2024-06-03",
            ),
            (
                "SENT_FOR_AUTHORISATION.xml",
                Kind::Pending,
                "2003",
                (1999, "GBP"),
                "SHOPGBP/2003:SENT_FOR_AUTHORISATION::",
            ),
            (
                "CAPTURED.jpy.xml",
                Kind::Succeeded,
                "2005",
                (5000, "JPY"),
                "SHOPJPY/2005:CAPTURED:CAPTURED:2024-05-14",
            ),
        ];
        for (file, kind, order, (minor, code), key) in cases {
            let body = fixture(file);
            assert!(String::from_utf8_lossy(&body).contains("<!DOCTYPE paymentService"), "{file}");
            let n = parse(&body).unwrap();
            assert_eq!(n.kind, *kind, "{file}");
            assert_eq!(n.payment_id.as_deref(), Some(*order), "{file}");
            let m = n.amount.unwrap();
            assert_eq!((m.minor, m.currency.code()), (*minor, *code), "{file}");
            assert_eq!(n.event_id, *key, "{file}");
            assert_eq!(accept_body(&body).unwrap().dedup_key, *key, "{file}");
        }
        // Two partial refunds of one order on one day: two rows, each with its own amount
        // (the journal's, not the order's).
        let full = String::from_utf8(fixture("REFUNDED.xml")).unwrap();
        let part = |batch: &str, value: &str| {
            full.replace(
                "batchId=\"30\">\n          <amount value=\"2500\"",
                &format!("batchId=\"{batch}\">\n          <amount value=\"{value}\""),
            )
        };
        let (first, second) = (part("31", "1000"), part("32", "500"));
        assert_ne!(first, full, "the fixture's accountTx was replaced");
        let (a, b) = (parse(first.as_bytes()).unwrap(), parse(second.as_bytes()).unwrap());
        assert_ne!(a.event_id, b.event_id);
        assert_eq!((a.amount.unwrap().minor, b.amount.unwrap().minor), (1000, 500));
        // A capture's amount stays the order's.
        assert_eq!(parse(&fixture("CAPTURED.xml")).unwrap().amount.unwrap().minor, 2500);
        for (file, reason) in [
            ("xxe-external-entity.xml", "internal subset"),
            ("billion-laughs.xml", "internal subset"),
            ("deeply-nested.xml", "nested deeper"),
            ("undeclared-entity.xml", "refused text"),
        ] {
            let err = read(&fixture(file)).unwrap_err();
            assert!(err.contains(reason), "{file}: {err}");
        }
    }
}
