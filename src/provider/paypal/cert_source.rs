//! Where a PayPal endpoint's certificates come from: the pinned ones, then (when fetching is
//! on) those downloaded from allowed certificate URLs.
//!
//! Downloads are bounded in every direction: at most [`MAX_CACHED`] certificates are kept (the
//! least recently used goes first), one download per URL runs at a time while other URLs
//! download in parallel, and a failed URL is answered from memory for
//! [`FETCH_FAILURE_BACKOFF_MS`] instead of being asked again.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::HeaderMap;
use lru::LruCache;

use super::{by_api, check_cert_url, identify, parse_headers, signed_message, verify_with};
use super::{Certificate, Settings, Transmission, Verify, KEPT_HEADERS};
use crate::provider::{keep_headers, Accepted, Rejection};

/// The largest certificate document we download.
const MAX_CERT_BYTES: usize = 64 * 1024;
/// How long a certificate download may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed download, the same URL is not tried again for this long.
const FETCH_FAILURE_BACKOFF_MS: i64 = 30_000;
/// Certificates (and failed URLs) remembered per endpoint.
const MAX_CACHED: NonZeroUsize = NonZeroUsize::new(64).expect("not zero");

/// Certificates for one PayPal endpoint: the pinned ones, and those fetched from allowed
/// certificate URLs (when fetching is on).
#[derive(Debug)]
pub struct CertSource {
    settings: Settings,
    client: Option<reqwest::Client>,
    downloads: Downloads<Certificate>,
}

impl CertSource {
    /// The certificate source for a `paypal` endpoint's settings.
    pub fn new(settings: &Settings) -> Result<CertSource, String> {
        let client = if settings.cert_url_fetch {
            Some(crate::provider::https_client(settings.tls_ca.as_deref(), FETCH_TIMEOUT)?)
        } else {
            None
        };
        Ok(CertSource { settings: settings.clone(), client, downloads: Downloads::new(MAX_CACHED) })
    }

    /// The endpoint's settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Verifies and identifies a request to a PayPal endpoint, as its `verify` says: offline
    /// (`certs`); only its form, stored unverified for PayPal's API (`api`); offline, else
    /// stored unverified when no certificate is to be had (`certs_then_api`). `now` is unix
    /// seconds.
    pub async fn accept(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Accepted, Rejection> {
        let t = parse_headers(headers)?;
        let s = &self.settings;
        // Checked even when a pinned certificate or PayPal's API will decide: a foreign URL is
        // never normal.
        let url = check_cert_url(t.cert_url, &s.cert_hosts)?;
        let verified = match s.verify {
            Verify::Api => false,
            Verify::Certs => match self.check(&t, url.as_str(), body, now).await? {
                Offline::Verified => true,
                Offline::NoCertificate(why) => return Err(why),
            },
            Verify::CertsThenApi => match self.check(&t, url.as_str(), body, now).await? {
                Offline::Verified => true,
                Offline::NoCertificate(why) => {
                    tracing::debug!(reason = %why, "not verified offline; stored for PayPal's API to check");
                    false
                }
            },
        };
        let (id, event_type) = identify(body)?;
        if !verified {
            return Ok(by_api::unverified(headers, body, &id, event_type));
        }
        Ok(Accepted {
            dedup_key: id,
            event_type: Some(event_type),
            headers_json: keep_headers(headers, KEPT_HEADERS),
        })
    }

    /// Checks the transmission signature offline: with the pinned certificates, then (when
    /// fetching is on) the one at the certificate URL.
    async fn check(
        &self,
        t: &Transmission<'_>,
        url: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Offline, Rejection> {
        let s = &self.settings;
        let message = signed_message(t.id, t.time, &s.webhook_id, body);
        let pinned = verify_with(&s.certs, &s.cert_subjects, message.as_bytes(), &t.signature, now);
        match (pinned, &self.client) {
            (Ok(()), _) => Ok(Offline::Verified),
            // No pinned certificate verifies it, and none may be downloaded: it may be signed
            // with one that is not pinned (PayPal rotated it), or not by PayPal at all.
            (Err(e @ Rejection::BadSignature), None) => Ok(Offline::NoCertificate(e)),
            // A pinned certificate verifies it, but is expired or has another subject.
            (Err(e), None) => Err(e),
            (Err(_), Some(client)) => match self.downloads.get(url, || fetch(client, url)).await {
                Ok(cert) => {
                    verify_with([&cert], &s.cert_subjects, message.as_bytes(), &t.signature, now)?;
                    Ok(Offline::Verified)
                }
                Err(e @ Rejection::CertificateUnavailable(_)) => Ok(Offline::NoCertificate(e)),
                Err(e) => Err(e),
            },
        }
    }
}

/// What the offline check came to, short of a refusal.
enum Offline {
    /// A certificate that is valid now, with an allowed subject, verifies the signature.
    Verified,
    /// No certificate that could decide is to be had: none pinned verifies the signature and
    /// downloading is off, or the download failed now. Holds what `verify = "certs"` answers.
    NoCertificate(Rejection),
}

/// Downloads one certificate, logging the outcome; the rejection says how to answer PayPal.
async fn fetch(client: &reqwest::Client, url: &str) -> Result<Certificate, Rejection> {
    match download(client, url).await {
        Ok(cert) => {
            tracing::info!(url, names = ?cert.names(), "PayPal signing certificate downloaded");
            Ok(cert)
        }
        Err(DownloadError::Unavailable(why)) => {
            tracing::warn!(url, error = %why, "PayPal signing certificate could not be downloaded");
            Err(Rejection::CertificateUnavailable(format!(
                "the signing certificate could not be downloaded: {why}"
            )))
        }
        Err(DownloadError::Bad(why)) => {
            tracing::warn!(url, error = %why, "PayPal signing certificate URL serves no usable certificate");
            Err(Rejection::Certificate(format!("the certificate at PAYPAL-CERT-URL {why}")))
        }
    }
}

enum DownloadError {
    /// Try again later (network, timeout, server error).
    Unavailable(String),
    /// The document is not a usable certificate.
    Bad(String),
}

async fn download(client: &reqwest::Client, url: &str) -> Result<Certificate, DownloadError> {
    use DownloadError::{Bad, Unavailable};
    let mut resp =
        client.get(url).send().await.map_err(|e| Unavailable(crate::error::error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(Unavailable(format!("HTTP {}", resp.status())));
    }
    let mut doc = Vec::new();
    while let Some(chunk) =
        resp.chunk().await.map_err(|e| Unavailable(crate::error::error_chain(&e)))?
    {
        if doc.len() + chunk.len() > MAX_CERT_BYTES {
            return Err(Bad(format!("is larger than {MAX_CERT_BYTES} bytes")));
        }
        doc.extend_from_slice(&chunk);
    }
    Certificate::from_pem(&doc).map_err(|e| Bad(format!("is unusable: {e}")))
}

/// Values downloaded by URL: a bounded least-recently-used cache, the recent failures, and
/// one lock per URL being downloaded so that each URL is downloaded once at a time.
struct Downloads<T> {
    cache: Mutex<LruCache<String, T>>,
    /// URL → when its last download failed (unix ms), and the answer it got.
    failed: Mutex<LruCache<String, (i64, Rejection)>>,
    /// URL → its download lock, present only while someone holds or waits for it.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl<T> std::fmt::Debug for Downloads<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloads").field("cached", &lock(&self.cache).len()).finish()
    }
}

fn lock<V>(m: &Mutex<V>) -> MutexGuard<'_, V> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T: Clone> Downloads<T> {
    fn new(capacity: NonZeroUsize) -> Self {
        Downloads {
            cache: Mutex::new(LruCache::new(capacity)),
            failed: Mutex::new(LruCache::new(capacity)),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The value for `url`: from the cache, else from `fetch` (which at most one caller per
    /// URL runs at a time; the others wait for its result), else the failure it met within
    /// the back-off.
    async fn get<F, Fut>(&self, url: &str, fetch: F) -> Result<T, Rejection>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Rejection>>,
    {
        if let Some(hit) = lock(&self.cache).get(url) {
            return Ok(hit.clone());
        }
        let turn = InFlight::join(&self.in_flight, url);
        let _mine = turn.lock.lock().await;
        if let Some(hit) = lock(&self.cache).get(url) {
            return Ok(hit.clone());
        }
        let now = crate::time::now_ms();
        if let Some((at, rejection)) = lock(&self.failed).get(url) {
            if now - at < FETCH_FAILURE_BACKOFF_MS {
                return Err(rejection.clone());
            }
        }
        match fetch().await {
            Ok(value) => {
                lock(&self.cache).put(url.to_owned(), value.clone());
                lock(&self.failed).pop(url);
                Ok(value)
            }
            Err(rejection) => {
                lock(&self.failed).put(url.to_owned(), (now, rejection.clone()));
                Err(rejection)
            }
        }
    }
}

/// A caller's share of one URL's download lock; the last one out removes the entry, so the
/// map holds only URLs being downloaded (and cancelled callers leave nothing behind).
struct InFlight<'a> {
    map: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    url: &'a str,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> InFlight<'a> {
    fn join(map: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>, url: &'a str) -> Self {
        let lock = lock(map).entry(url.to_owned()).or_default().clone();
        InFlight { map, url, lock }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // Shares are only cloned under the map's lock, so the count cannot grow meanwhile:
        // two (the map's and ours) means nobody else holds or waits for this URL.
        let mut map = lock(self.map);
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(self.url);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use super::*;

    fn downloads(capacity: usize) -> Arc<Downloads<String>> {
        Arc::new(Downloads::new(NonZeroUsize::new(capacity).unwrap()))
    }

    /// A fetch that counts itself, takes a while, and returns the URL's value.
    async fn counted(count: &AtomicUsize, url: &str) -> Result<String, Rejection> {
        count.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        Ok(format!("cert of {url}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_download_per_url_however_many_ask_at_once() {
        let d = downloads(4);
        let count = Arc::new(AtomicUsize::new(0));
        let asks: Vec<_> = (0..20)
            .map(|_| {
                let (d, count) = (d.clone(), count.clone());
                tokio::spawn(async move { d.get("u1", || counted(&count, "u1")).await })
            })
            .collect();
        for ask in asks {
            assert_eq!(ask.await.unwrap().unwrap(), "cert of u1");
        }
        assert_eq!(count.load(SeqCst), 1, "twenty asks, one download");
        assert!(lock(&d.in_flight).is_empty(), "no lock is left behind");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn different_urls_download_in_parallel() {
        // Each download waits until the other has started: only parallel downloads finish.
        let d = downloads(4);
        let both = Arc::new(tokio::sync::Barrier::new(2));
        let ask = |url: &'static str| {
            let (d, both) = (d.clone(), both.clone());
            tokio::spawn(async move {
                d.get(url, || async move {
                    both.wait().await;
                    Ok(url.to_owned())
                })
                .await
            })
        };
        let (a, b) = (ask("a"), ask("b"));
        let done = tokio::time::timeout(Duration::from_secs(10), async {
            (a.await.unwrap().unwrap(), b.await.unwrap().unwrap())
        });
        assert_eq!(
            done.await.expect("one URL's download waited for another's"),
            ("a".into(), "b".into())
        );
    }

    #[tokio::test]
    async fn the_least_recently_used_certificate_goes_first() {
        let d = downloads(3);
        let count = AtomicUsize::new(0);
        for url in ["a", "b", "c", "a", "d"] {
            d.get(url, || counted(&count, url)).await.unwrap();
        }
        assert_eq!(count.load(SeqCst), 4, "a was served from the cache the second time");
        assert_eq!(lock(&d.cache).len(), 3, "the cache stays within its bound");
        // b was the least recently used when d came in: it is downloaded again, a is not.
        d.get("a", || counted(&count, "a")).await.unwrap();
        assert_eq!(count.load(SeqCst), 4);
        d.get("b", || counted(&count, "b")).await.unwrap();
        assert_eq!(count.load(SeqCst), 5);
    }

    #[tokio::test]
    async fn a_failure_is_answered_from_memory_during_the_back_off() {
        let d = downloads(2);
        let count = AtomicUsize::new(0);
        let failing = || async {
            count.fetch_add(1, SeqCst);
            Err::<String, _>(Rejection::CertificateUnavailable("HTTP 503".into()))
        };
        let first = d.get("u", failing).await.unwrap_err();
        let again = d.get("u", failing).await.unwrap_err();
        assert_eq!((first, count.load(SeqCst)), (again, 1));
        // Other URLs fill the failure memory; it stays bounded and forgets the oldest.
        d.get("v", failing).await.unwrap_err();
        d.get("w", failing).await.unwrap_err();
        assert_eq!(lock(&d.failed).len(), 2);
        d.get("u", failing).await.unwrap_err();
        assert_eq!(count.load(SeqCst), 4, "u was forgotten, so it was asked again");
    }
}
