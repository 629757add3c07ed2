//! The admin page, `GET /admin`: what needs a person, on one server-rendered page that works
//! without JavaScript. Reviews waiting for a person, notifications that went `dead`, actions
//! the sinks have not taken, the latest verification failures, and when each endpoint last
//! stored a notification; `GET /admin/inbox/{id}` shows one stored notification.
//!
//! Read-only: there is no form and no button that changes anything (the command line does
//! that). Every value that came from a notification or a request is HTML-escaped, and a strict
//! Content-Security-Policy forbids scripts, inline styles, frames and forms, so a body carrying
//! markup renders as text. Basic auth (user `admin`, the admin token as password), so a browser
//! can log in, or the Bearer token.

use std::fmt::Write as _;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::Admin;
use crate::domain::{ActionKind, InboxStatus};
use crate::store::{DeliveryFilter, ListFilter, OutboxFilter, StoreError};
use crate::time::format_utc;

/// The page's style sheet, served at `/admin/admin.css` (the policy allows no inline style).
const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25em .6em;\
border-bottom:1px solid #eee;vertical-align:top}th{background:#f4f4f4}\
.none{color:#777}.bad{color:#a00;font-weight:bold}.ok{color:#070}\
pre{background:#f6f6f6;padding:.8em;overflow:auto;white-space:pre-wrap;word-break:break-all}\
nav a{margin-right:1em}";

/// Scripts, frames, forms, plugins and inline styles: none. Only the page's own style sheet.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Rows shown per section.
const ROWS: u64 = 50;

/// Serves `/admin`, `/admin/inbox/{id}` and `/admin/admin.css`.
pub(super) async fn handle(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "read-only: use GET\n");
    }
    let path = req.uri().path();
    if path == "/admin/admin.css" {
        return respond(StatusCode::OK, "text/css; charset=utf-8", CSS.to_owned());
    }
    // Basic auth (`admin`, the token) so a browser can sign in, or the Bearer token.
    let basic = admin.page_auth.matches(req.headers().get(hyper::header::AUTHORIZATION));
    if !basic && !super::authorized(req, &admin.token_digest) {
        let mut resp = plain(StatusCode::UNAUTHORIZED, "sign in as admin with the admin token\n");
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static(
                "Basic realm=\"reconciled admin\", charset=\"UTF-8\"",
            ),
        );
        return resp;
    }
    let result = match path.strip_prefix("/admin") {
        Some("" | "/") => overview(admin).await.map(Some),
        Some(rest) => match rest.strip_prefix("/inbox/").map(str::parse::<i64>) {
            Some(Ok(id)) => notification(admin, id).await,
            _ => Ok(None),
        },
        None => Ok(None),
    };
    match result {
        Ok(Some(html)) => respond(StatusCode::OK, "text/html; charset=utf-8", html),
        Ok(None) => plain(StatusCode::NOT_FOUND, "no such page\n"),
        Err(e) => {
            tracing::warn!(error = %crate::error::error_chain(&e), "admin page: store unavailable");
            plain(StatusCode::SERVICE_UNAVAILABLE, "the store cannot be read now; retry later\n")
        }
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-security-policy", CONTENT_SECURITY_POLICY)
        .header("x-content-type-options", "nosniff")
        .header("x-frame-options", "DENY")
        .header("referrer-policy", "no-referrer")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", text.to_owned())
}

/// `text` with HTML's special characters escaped, for an element's text or an attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn head(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/admin/admin.css\"></head><body>\n\
         <nav><a href=\"/admin\">Overview</a></nav>\n<h1>{}</h1>\n",
        escape(title),
        escape(title)
    )
}

fn ago(now_ms: i64, at_ms: i64) -> String {
    format!("{} ago", crate::time::format_age(now_ms, at_ms))
}

/// A table with `headers`, or a line saying `empty`.
fn table(out: &mut String, headers: &[&str], rows: &[Vec<String>], empty: &str) {
    if rows.is_empty() {
        let _ = writeln!(out, "<p class=\"none\">{}</p>", escape(empty));
        return;
    }
    out.push_str("<table><thead><tr>");
    for h in headers {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr></thead><tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        // Cells are already escaped (some hold a link).
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

fn link_to_notification(id: i64, text: &str) -> String {
    format!("<a href=\"/admin/inbox/{id}\">{}</a>", escape(text))
}

fn opt(value: Option<&str>) -> String {
    value.map_or_else(|| "<span class=\"none\">–</span>".to_owned(), escape)
}

async fn overview(admin: &Admin) -> Result<String, StoreError> {
    let now = crate::time::now_ms();
    let store = &admin.store;
    let gauges = store.gauges().await?;
    let reviews = store
        .outbox(OutboxFilter {
            kind: Some(ActionKind::Review),
            last: Some(ROWS),
            ..Default::default()
        })
        .await?;
    let dead = store
        .list(ListFilter {
            status: Some(InboxStatus::Dead),
            last: Some(ROWS),
            ..Default::default()
        })
        .await?;
    let undelivered = store
        .deliveries(DeliveryFilter { undelivered: true, limit: Some(ROWS), ..Default::default() })
        .await?;
    let failures = store.failures(20).await?;

    let mut out = head("reconciled");
    let dead_rows = gauges.inbox.iter().find(|(s, _)| *s == "dead").map_or(0, |(_, n)| *n);
    let waiting: i64 = gauges.inbox.iter().filter(|(s, _)| *s != "dead").map(|(_, n)| *n).sum();
    let owed: i64 = gauges.sinks.iter().map(|s| s.owed + s.dead).sum();
    let _ = writeln!(
        out,
        "<p>{} notifications waiting to be decided{}; <span class=\"{}\">{dead_rows} dead</span>; \
         {owed} actions undelivered. As of {}.</p>",
        waiting,
        gauges
            .oldest_due_ms
            .map(|due| format!(" (the oldest due {})", ago(now, due)))
            .unwrap_or_default(),
        if dead_rows > 0 { "bad" } else { "ok" },
        format_utc(now)
    );

    out.push_str("<h2 id=\"reviews\">Reviews waiting for a person</h2>\n");
    let rows: Vec<Vec<String>> = reviews
        .iter()
        .rev()
        .map(|a| {
            vec![
                escape(&a.created_at),
                opt(a.order_id.as_deref()),
                match (&a.amount, &a.currency) {
                    (Some(amount), Some(currency)) => escape(&format!("{amount} {currency}")),
                    _ => opt(None),
                },
                escape(&a.provider),
                escape(&a.reason),
                link_to_notification(a.inbox_id, &a.event_id),
            ]
        })
        .collect();
    table(
        &mut out,
        &["When", "Order", "Amount", "Provider", "Reason", "Notification"],
        &rows,
        "No review actions.",
    );

    out.push_str("<h2 id=\"dead\">Dead notifications</h2>\n");
    let rows: Vec<Vec<String>> = dead
        .iter()
        .rev()
        .map(|r| {
            vec![
                escape(&format_utc(r.received_at)),
                link_to_notification(r.id, &r.dedup_key),
                escape(&r.endpoint),
                opt(r.event_type.as_deref()),
                opt(r.last_error.as_deref()),
            ]
        })
        .collect();
    table(
        &mut out,
        &["Received", "Notification", "Endpoint", "Type", "Error"],
        &rows,
        "None: every notification was decided or is waiting its turn.",
    );

    out.push_str("<h2 id=\"undelivered\">Undelivered actions</h2>\n");
    let rows: Vec<Vec<String>> = gauges
        .sinks
        .iter()
        .map(|s| {
            vec![
                escape(&s.sink),
                s.owed.to_string(),
                if s.dead > 0 {
                    format!("<span class=\"bad\">{}</span>", s.dead)
                } else {
                    "0".into()
                },
                s.oldest_owed_ms.map_or_else(|| opt(None), |ms| escape(&ago(now, ms))),
            ]
        })
        .collect();
    table(&mut out, &["Sink", "Owed", "Dead", "Oldest owed"], &rows, "Every action was delivered.");
    let rows: Vec<Vec<String>> = undelivered
        .iter()
        .map(|d| {
            vec![
                d.action_id.to_string(),
                escape(&d.sink),
                escape(&d.state),
                d.attempts.to_string(),
                opt(d.next_attempt_at.as_deref()),
                opt(d.last_error.as_deref()),
            ]
        })
        .collect();
    if !rows.is_empty() {
        table(
            &mut out,
            &["Action", "Sink", "State", "Attempts", "Next attempt", "Last error"],
            &rows,
            "",
        );
    }

    out.push_str("<h2 id=\"failures\">Latest verification failures</h2>\n");
    let rows: Vec<Vec<String>> = failures
        .iter()
        .map(|f| {
            vec![
                escape(&format_utc(f.at)),
                escape(&f.endpoint),
                escape(&f.remote_addr),
                escape(&f.reason),
                escape(&f.detail),
            ]
        })
        .collect();
    table(&mut out, &["When", "Endpoint", "From", "Reason", "Detail"], &rows, "None recorded.");

    out.push_str("<h2 id=\"endpoints\">Endpoints</h2>\n");
    let mut endpoints = admin.metrics.endpoints();
    for (name, _) in &gauges.last_stored {
        if !endpoints.iter().any(|(e, _)| e == name) {
            endpoints.push((name.clone(), None));
        }
    }
    let rows: Vec<Vec<String>> = endpoints
        .iter()
        .map(|(name, silent_after)| {
            let last = gauges.last_stored.iter().find(|(e, _)| e == name).map(|(_, at)| *at);
            let silent = matches!((last, silent_after), (Some(at), Some(after))
                if now - at > i64::try_from(after.as_millis()).unwrap_or(i64::MAX));
            vec![
                escape(name),
                match last {
                    Some(at) if silent => format!(
                        "<span class=\"bad\">{} ({})</span>",
                        escape(&format_utc(at)),
                        escape(&ago(now, at))
                    ),
                    Some(at) => escape(&format!("{} ({})", format_utc(at), ago(now, at))),
                    None => "<span class=\"none\">never</span>".into(),
                },
                silent_after
                    .map_or_else(|| opt(None), |d| escape(&crate::time::format_duration(d))),
            ]
        })
        .collect();
    table(&mut out, &["Endpoint", "Last notification", "Silent after"], &rows, "No endpoint.");
    out.push_str("</body></html>\n");
    Ok(out)
}

async fn notification(admin: &Admin, id: i64) -> Result<Option<String>, StoreError> {
    let Some(row) = admin.store.show(id).await? else { return Ok(None) };
    let actions = admin.store.actions_of(id).await?;
    let s = &row.summary;
    let mut out = head(&format!("Notification {id}"));
    let fields: Vec<(&str, String)> = vec![
        ("Endpoint", s.endpoint.clone()),
        ("Provider", s.provider.clone()),
        ("Provider's id", s.dedup_key.clone()),
        ("Type", s.event_type.clone().unwrap_or_default()),
        ("Received", format_utc(s.received_at)),
        ("Came by", s.source.as_str().to_owned()),
        ("Deliveries", s.delivery_count.to_string()),
        ("From", s.remote_addr.clone()),
        ("Status", s.status.as_str().to_owned()),
        ("Outcome", s.outcome.clone().unwrap_or_default()),
        ("Attempts", s.attempts.to_string()),
        ("Last error", s.last_error.clone().unwrap_or_default()),
    ];
    out.push_str("<table><tbody>\n");
    for (name, value) in fields {
        let _ = writeln!(out, "<tr><th>{}</th><td>{}</td></tr>", escape(name), escape(&value));
    }
    out.push_str("</tbody></table>\n<h2>Actions</h2>\n");
    let rows: Vec<Vec<String>> = actions
        .iter()
        .map(|a| {
            vec![
                a.id.to_string(),
                escape(a.kind.as_str()),
                opt(a.order_id.as_deref()),
                match (&a.amount, &a.currency) {
                    (Some(amount), Some(currency)) => escape(&format!("{amount} {currency}")),
                    _ => opt(None),
                },
                escape(&a.reason),
            ]
        })
        .collect();
    table(&mut out, &["Action", "Kind", "Order", "Amount", "Reason"], &rows, "No action.");
    let _ = writeln!(
        out,
        "<h2>Body ({} bytes)</h2>\n<pre>{}</pre>",
        row.body.len(),
        escape(&String::from_utf8_lossy(&row.body))
    );
    out.push_str("</body></html>\n");
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
