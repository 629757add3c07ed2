//! Stripe's API, the parts reconciled reads: the list of events (`GET /v1/events`) and one
//! PaymentIntent (`GET /v1/payment_intents/{id}`).
//!
//! No `Stripe-Version` header is sent: events are listed as they were rendered when created,
//! in the API version of the account at the time (which may differ from the webhook
//! endpoint's); the Stripe adapter reads the shapes of both old and new versions.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::http::snippet;
use super::{ApiError, ApiSettings, Credentials, Http};
use crate::secret::Secret;

/// Events per page: Stripe's largest.
pub const PAGE_SIZE: u32 = 100;

/// A Stripe API client for one endpoint. `Debug` shows no key.
#[derive(Debug)]
pub struct StripeApi {
    http: Http,
    key: Secret,
}

/// Which page of the event list to ask for. Stripe lists newest first; a cursor is an event
/// id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// The newest events (created at or after the time given, unix seconds).
    Newest {
        /// `created[gte]`.
        since: Option<i64>,
    },
    /// The events just older than this one (`starting_after`), created at or after `since`.
    Older {
        /// The cursor.
        than: String,
        /// `created[gte]`.
        since: Option<i64>,
    },
    /// The events just newer than this one (`ending_before`): the ones closest to it.
    Newer {
        /// The cursor.
        than: String,
    },
}

/// One listed event: its id, type and exact bytes.
#[derive(Debug, Clone)]
pub struct ListedEvent {
    /// `evt_…`.
    pub id: String,
    /// Its type (`payment_intent.succeeded`).
    pub kind: String,
    /// The event's JSON exactly as Stripe listed it.
    pub raw: Bytes,
}

/// A page of the event list, newest first as Stripe lists it.
#[derive(Debug)]
pub struct EventPage {
    /// The events.
    pub events: Vec<ListedEvent>,
    /// Whether more events lie beyond this page in the direction asked.
    pub has_more: bool,
}

#[derive(Deserialize)]
struct List<'a> {
    object: &'a str,
    has_more: bool,
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
}

impl StripeApi {
    /// The client for a Stripe endpoint's `[endpoint.api]`.
    pub fn new(settings: &ApiSettings) -> Result<StripeApi, String> {
        let Credentials::Stripe { key } = &settings.credentials else {
            return Err("not a Stripe API".into());
        };
        Ok(StripeApi { http: settings.http()?, key: key.clone() })
    }

    /// Where the API is (for the inbox's `remote_addr`).
    pub fn host(&self) -> &str {
        self.http.host()
    }

    fn authorization(&self) -> String {
        format!("Bearer {}", String::from_utf8_lossy(self.key.expose()))
    }

    /// One page of events.
    pub async fn events(&self, page: &Page) -> Result<EventPage, ApiError> {
        let mut query: Vec<(&str, String)> = vec![("limit", PAGE_SIZE.to_string())];
        match page {
            Page::Newest { since } => {
                query.extend(since.map(|s| ("created[gte]", s.to_string())));
            }
            Page::Older { than, since } => {
                query.push(("starting_after", than.clone()));
                query.extend(since.map(|s| ("created[gte]", s.to_string())));
            }
            Page::Newer { than } => query.push(("ending_before", than.clone())),
        }
        let answer = self
            .http
            .send(|c, base| c.get(format!("{base}/v1/events")).query(&query), &self.authorization())
            .await?;
        if answer.status != 200 {
            return Err(refused(answer.status, &answer.body));
        }
        parse_page(&answer.body)
    }

    /// The PaymentIntent `id` as Stripe has it now (its exact JSON), or `None` if Stripe does
    /// not know it.
    pub async fn payment_intent(&self, id: &str) -> Result<Option<Bytes>, ApiError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(ApiError::Malformed(format!("\"{id}\" is not a PaymentIntent id")));
        }
        let answer = self
            .http
            .send(|c, base| c.get(format!("{base}/v1/payment_intents/{id}")), &self.authorization())
            .await?;
        match answer.status {
            200 => Ok(Some(answer.body)),
            404 => Ok(None),
            status => Err(refused(status, &answer.body)),
        }
    }
}

/// Reads a list answer, keeping each event's bytes as they were sent.
pub fn parse_page(body: &[u8]) -> Result<EventPage, ApiError> {
    let list: List<'_> = serde_json::from_slice(body)
        .map_err(|e| ApiError::Malformed(format!("not a Stripe list: {e}")))?;
    if list.object != "list" {
        return Err(ApiError::Malformed(format!(
            "object is \"{}\", expected \"list\"",
            list.object
        )));
    }
    let mut events = Vec::with_capacity(list.data.len());
    for raw in list.data {
        let bytes = Bytes::copy_from_slice(raw.get().as_bytes());
        let id = crate::provider::stripe::identify(&bytes)
            .map_err(|e| ApiError::Malformed(format!("a listed event: {e}")))?;
        events.push(ListedEvent { id: id.id, kind: id.kind, raw: bytes });
    }
    Ok(EventPage { events, has_more: list.has_more })
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: Option<String>,
    message: Option<String>,
}

/// A 4xx answer as Stripe describes it (`{"error": {"code", "message"}}`).
fn refused(status: u16, body: &[u8]) -> ApiError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ApiError::Refused {
            status,
            message: format!(
                "Stripe answered {status}: {}",
                e.error.message.unwrap_or_else(|| "no message".into())
            ),
            code: e.error.code,
        },
        Err(_) => ApiError::Refused {
            status,
            code: None,
            message: format!("Stripe answered {status}: {}", snippet(body)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_keeps_each_event_byte_for_byte() {
        let a = r#"{"id":"evt_1", "object":"event","type":"payment_intent.succeeded","created":2}"#;
        let b = "{\n  \"id\": \"evt_0\",\n  \"object\": \"event\",\n  \"type\": \"charge.refunded\",\n  \"created\": 1.0e0\n}";
        let body =
            format!(r#"{{"object":"list","url":"/v1/events","has_more":true,"data":[{a},  {b}]}}"#);
        let page = parse_page(body.as_bytes()).unwrap();
        assert!(page.has_more);
        assert_eq!(page.events.len(), 2);
        assert_eq!((page.events[0].id.as_str(), &page.events[0].raw[..]), ("evt_1", a.as_bytes()));
        assert_eq!(page.events[1].kind, "charge.refunded");
        assert_eq!(&page.events[1].raw[..], b.as_bytes());
    }

    #[test]
    fn a_page_that_is_not_a_list_of_events_is_refused() {
        for body in [
            r#"{"object":"event","has_more":false,"data":[]}"#,
            r#"{"object":"list","has_more":false,"data":[{"id":"x","object":"charge","type":"t"}]}"#,
            r#"not json"#,
        ] {
            assert!(matches!(parse_page(body.as_bytes()), Err(ApiError::Malformed(_))), "{body}");
        }
    }

    #[test]
    fn errors_keep_stripes_code_and_message() {
        let body = br#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such event: 'evt_x'","param":"ending_before"}}"#;
        let ApiError::Refused { status, code, message } = refused(404, body) else { panic!() };
        assert_eq!((status, code.as_deref()), (404, Some("resource_missing")));
        assert!(message.contains("No such event"), "{message}");
    }
}
