//! The safe reader of Worldpay's XML order notifications: a streaming pass over the raw
//! bytes with quick-xml that refuses unsafe or malformed documents (see the parent module) and
//! collects the few fields the mapping needs.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::kind_of;
use crate::provider::Kind;

/// Deepest element nesting accepted; real notifications stay under 10.
pub const MAX_DEPTH: usize = 32;
/// Most elements accepted in one document; real notifications have a few dozen.
pub const MAX_ELEMENTS: usize = 10_000;
/// Longest `orderCode` accepted.
const MAX_ORDER_CODE_LEN: usize = 255;
/// Longest `lastEvent` or `journalType` accepted.
const MAX_WORD_LEN: usize = 64;

const ROOT: &[&str] = &["paymentService"];
const ORDER: &[&str] = &["paymentService", "notify", "orderStatusEvent"];
const AMOUNT: &[&str] = &["paymentService", "notify", "orderStatusEvent", "payment", "amount"];
const LAST_EVENT: &[&str] =
    &["paymentService", "notify", "orderStatusEvent", "payment", "lastEvent"];
const JOURNAL: &[&str] = &["paymentService", "notify", "orderStatusEvent", "journal"];
const ACCOUNT_TX: &[&str] =
    &["paymentService", "notify", "orderStatusEvent", "journal", "accountTx"];
const ACCOUNT_TX_AMOUNT: &[&str] =
    &["paymentService", "notify", "orderStatusEvent", "journal", "accountTx", "amount"];
/// More account transactions than this in one journal is not a Worldpay notification.
const MAX_ACCOUNT_TX: usize = 16;
const BOOKING_DATE: &[&str] =
    &["paymentService", "notify", "orderStatusEvent", "journal", "bookingDate", "date"];

/// `payment/amount` as sent, checked when the notification is parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawAmount {
    /// `@value`: an integer in units of 10^-exponent.
    pub value: Option<String>,
    /// `@currencyCode`.
    pub currency_code: Option<String>,
    /// `@exponent`.
    pub exponent: Option<String>,
    /// `@debitCreditIndicator` (`credit`, `debit`).
    pub debit_credit: Option<String>,
}

/// What an order notification says, read from a document that passed the safety checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderNotification {
    /// `paymentService/@merchantCode`.
    pub merchant_code: Option<String>,
    /// `orderStatusEvent/@orderCode`: the merchant's reference, and the payment id.
    pub order_code: String,
    /// `payment/lastEvent`: `AUTHORISED`, `CAPTURED`, …
    pub last_event: String,
    /// `payment/amount`, if present.
    pub amount: Option<RawAmount>,
    /// `journal/@journalType`, if present.
    pub journal_type: Option<String>,
    /// `journal/bookingDate/date` as `YYYY-MM-DD`, if present.
    pub journal_date: Option<String>,
    /// The journal date as unix seconds (midnight UTC), if present.
    pub journal_day: Option<i64>,
    /// `journal/accountTx`: `(batchId, amount)` of each account transaction, in order.
    pub account_tx: Vec<(Option<String>, Option<RawAmount>)>,
}

impl OrderNotification {
    /// The inbox dedup key: `{merchantCode}/{orderCode}:{lastEvent}:{journalType}:{date}`.
    /// The merchant code keeps two Worldpay merchant accounts of one shop apart. A refund's
    /// key also holds its journal's first account transaction (`:{batchId}/{value}`): an
    /// order may be refunded in parts, twice on one day, and each part must be its own row.
    pub fn dedup_key(&self) -> String {
        let mut key = format!(
            "{}/{}:{}:{}:{}",
            self.merchant_code.as_deref().unwrap_or(""),
            self.order_code,
            self.last_event,
            self.journal_type.as_deref().unwrap_or(""),
            self.journal_date.as_deref().unwrap_or("")
        );
        if kind_of(&self.last_event) == Some(Kind::Refunded) {
            if let Some((batch, amount)) = self.account_tx.first() {
                let value = amount.as_ref().and_then(|a| a.value.as_deref()).unwrap_or("");
                key.push_str(&format!(":{}/{value}", batch.as_deref().unwrap_or("")));
            }
        }
        key
    }

    /// The amount the notification is about: for a refund, its journal's account transaction
    /// (a partial refund is less than the order); otherwise `payment/amount`.
    pub fn event_amount(&self) -> Option<&RawAmount> {
        let journal =
            self.account_tx.iter().find_map(|(_, a)| a.as_ref()).filter(|a| a.value.is_some());
        match kind_of(&self.last_event) {
            Some(Kind::Refunded) => journal.or(self.amount.as_ref()),
            _ => self.amount.as_ref(),
        }
    }
}

/// The fields being collected while the document streams by.
#[derive(Default)]
struct Collected {
    merchant_code: Option<String>,
    order_code: Option<String>,
    last_event: Option<String>,
    amount: Option<RawAmount>,
    journal_type: Option<String>,
    date: Option<(String, String, String)>,
    account_tx: Vec<(Option<String>, Option<RawAmount>)>,
}

/// Reads an order notification from raw bytes, refusing unsafe or malformed XML with a short
/// reason.
pub fn read(body: &[u8]) -> Result<OrderNotification, String> {
    let mut reader = Reader::from_reader(body);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.expand_empty_elements = false;
    config.allow_unmatched_ends = false;
    let mut stack: Vec<Vec<u8>> = Vec::new();
    let mut elements = 0usize;
    let mut seen_root = false;
    let mut seen_doctype = false;
    let mut got = Collected::default();
    let mut last_event_text: Option<String> = None;
    loop {
        let event = reader.read_event().map_err(|e| format!("not well-formed XML: {e}"))?;
        match event {
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::DocType(doctype) => {
                if seen_doctype || seen_root {
                    return Err("a DOCTYPE may only appear once, before the root element".into());
                }
                seen_doctype = true;
                if doctype.contains(&b'[') {
                    return Err(
                        "DOCTYPE with an internal subset (entity declarations) refused".into()
                    );
                }
            }
            Event::Start(e) => open(&mut stack, &mut elements, &mut seen_root, &e, &mut got)?,
            Event::Empty(e) => {
                open(&mut stack, &mut elements, &mut seen_root, &e, &mut got)?;
                stack.pop();
            }
            Event::End(_) => {
                if at(&stack, LAST_EVENT) {
                    let text = last_event_text.take().unwrap_or_default();
                    if text.is_empty() {
                        return Err("lastEvent is empty".into());
                    }
                    got.last_event = Some(text);
                }
                stack.pop();
            }
            Event::Text(text) => {
                let text = text.unescape().map_err(|e| format!("refused text: {e}"))?;
                if stack.is_empty() {
                    if !text.trim().is_empty() {
                        return Err("text outside the root element".into());
                    }
                } else if at(&stack, LAST_EVENT) {
                    last_event_text.get_or_insert_with(String::new).push_str(text.trim());
                }
            }
            Event::CData(data) => {
                if stack.is_empty() {
                    return Err("CDATA outside the root element".into());
                }
                if at(&stack, LAST_EVENT) {
                    let text = std::str::from_utf8(&data).map_err(|_| "CDATA is not UTF-8")?;
                    last_event_text.get_or_insert_with(String::new).push_str(text.trim());
                }
            }
            Event::Eof => {
                if !stack.is_empty() {
                    return Err("the document ends inside an element".into());
                }
                if !seen_root {
                    return Err("no root element".into());
                }
                break;
            }
        }
    }
    finish(got)
}

/// An element opens: checks the limits and the root, then collects its attributes.
fn open(
    stack: &mut Vec<Vec<u8>>,
    elements: &mut usize,
    seen_root: &mut bool,
    e: &BytesStart<'_>,
    got: &mut Collected,
) -> Result<(), String> {
    if stack.is_empty() && *seen_root {
        return Err(format!("second root element <{}>", name_of(e)));
    }
    *elements += 1;
    if *elements > MAX_ELEMENTS {
        return Err(format!("more than {MAX_ELEMENTS} elements"));
    }
    if stack.len() >= MAX_DEPTH {
        return Err(format!("elements nested deeper than {MAX_DEPTH}"));
    }
    if stack.is_empty() && e.name().as_ref() != b"paymentService" {
        return Err(format!("root element is <{}>, not <paymentService>", name_of(e)));
    }
    *seen_root = true;
    stack.push(e.name().as_ref().to_vec());
    collect(stack, e, got)
}

/// Checks what was collected and builds the notification.
fn finish(got: Collected) -> Result<OrderNotification, String> {
    let order_code = got.order_code.ok_or("no notify/orderStatusEvent/@orderCode")?;
    if order_code.is_empty()
        || order_code.len() > MAX_ORDER_CODE_LEN
        || order_code.chars().any(char::is_control)
    {
        return Err("orderCode is empty, too long or has control characters".into());
    }
    let last_event = got.last_event.ok_or("no orderStatusEvent/payment/lastEvent")?;
    word(&last_event, "lastEvent")?;
    if let Some(t) = &got.journal_type {
        word(t, "journalType")?;
    }
    for batch in got.account_tx.iter().filter_map(|(b, _)| b.as_deref()) {
        word(batch, "accountTx batchId")?;
    }
    let (journal_date, journal_day) = match got.date {
        None => (None, None),
        Some((d, m, y)) => {
            let num = |s: &str| -> Option<i64> {
                (!s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| s.parse().ok())
                    .flatten()
            };
            let (Some(day), Some(month), Some(year)) = (num(&d), num(&m), num(&y)) else {
                return Err("journal bookingDate is not numeric dayOfMonth/month/year".into());
            };
            let Some(epoch) = crate::time::utc_midnight(year, month, day).filter(|_| year >= 1)
            else {
                return Err("journal bookingDate is not a calendar date".into());
            };
            (Some(format!("{year:04}-{month:02}-{day:02}")), Some(epoch))
        }
    };
    Ok(OrderNotification {
        merchant_code: got.merchant_code,
        order_code,
        last_event,
        amount: got.amount,
        journal_type: got.journal_type,
        journal_date,
        journal_day,
        account_tx: got.account_tx,
    })
}

/// `lastEvent` and `journalType` are words: ASCII letters, digits and `_`, so the dedup key
/// stays unambiguous.
fn word(s: &str, what: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > MAX_WORD_LEN
        || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!("{what} is not a word of letters, digits and _"));
    }
    Ok(())
}

/// Whether the open elements are exactly `path`.
fn at(stack: &[Vec<u8>], path: &[&str]) -> bool {
    stack.len() == path.len() && stack.iter().zip(path).all(|(a, b)| a.as_slice() == b.as_bytes())
}

/// Most attributes accepted on one element (Worldpay's have a handful).
const MAX_ATTRIBUTES: usize = 32;

/// An element name for a message, cut short.
fn name_of(e: &BytesStart<'_>) -> String {
    String::from_utf8_lossy(e.name().as_ref()).chars().take(40).collect()
}

/// Unescapes every attribute of the element just opened (refusing unknown entities anywhere)
/// and keeps the ones at the paths we read. A field seen twice is refused: the document would
/// be ambiguous.
fn collect(stack: &[Vec<u8>], e: &BytesStart<'_>, got: &mut Collected) -> Result<(), String> {
    let mut attrs = Vec::new();
    // Attributes are checked pairwise for duplicates by the parser: bound their number so a
    // hostile element cannot make that quadratic.
    if e.attributes().with_checks(false).take(MAX_ATTRIBUTES + 1).count() > MAX_ATTRIBUTES {
        return Err(format!("more than {MAX_ATTRIBUTES} attributes on <{}>", name_of(e)));
    }
    for attr in e.attributes() {
        let attr = attr.map_err(|err| format!("bad attribute: {err}"))?;
        let value = attr.unescape_value().map_err(|err| format!("refused attribute: {err}"))?;
        attrs.push((attr.key.as_ref().to_vec(), value.into_owned()));
    }
    let get = |name: &str| {
        attrs.iter().find(|(k, _)| k.as_slice() == name.as_bytes()).map(|(_, v)| v.clone())
    };
    let twice = |what: &str| Err(format!("more than one {what}"));
    if at(stack, ROOT) {
        got.merchant_code = get("merchantCode");
    } else if at(stack, ORDER) {
        if got.order_code.is_some() {
            return twice("orderStatusEvent");
        }
        got.order_code = Some(get("orderCode").ok_or("orderStatusEvent has no orderCode")?);
    } else if at(stack, AMOUNT) {
        if got.amount.is_some() {
            return twice("payment/amount");
        }
        got.amount = Some(RawAmount {
            value: get("value"),
            currency_code: get("currencyCode"),
            exponent: get("exponent"),
            debit_credit: get("debitCreditIndicator"),
        });
    } else if at(stack, LAST_EVENT) {
        if got.last_event.is_some() {
            return twice("lastEvent");
        }
    } else if at(stack, JOURNAL) {
        if got.journal_type.is_some() {
            return twice("journal");
        }
        got.journal_type = get("journalType");
    } else if at(stack, ACCOUNT_TX) {
        if got.account_tx.len() == MAX_ACCOUNT_TX {
            return Err(format!("more than {MAX_ACCOUNT_TX} journal/accountTx"));
        }
        got.account_tx.push((get("batchId"), None));
    } else if at(stack, ACCOUNT_TX_AMOUNT) {
        match got.account_tx.last_mut() {
            Some((_, slot @ None)) => {
                *slot = Some(RawAmount {
                    value: get("value"),
                    currency_code: get("currencyCode"),
                    exponent: get("exponent"),
                    debit_credit: get("debitCreditIndicator"),
                })
            }
            _ => return twice("accountTx/amount"),
        }
    } else if at(stack, BOOKING_DATE) {
        if got.date.is_some() {
            return twice("journal bookingDate");
        }
        got.date = Some((
            get("dayOfMonth").unwrap_or_default(),
            get("month").unwrap_or_default(),
            get("year").unwrap_or_default(),
        ));
    }
    Ok(())
}
