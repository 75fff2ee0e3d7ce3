//! Response cache, in-process (request path steps 6 and 9): lookups run after the policy
//! allowed the request — a cached answer never bypasses authorization — and stores
//! follow an RFC 9111 subset. Entries are weighed by body and header bytes against a
//! global memory budget (moka evicts by TinyLFU).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pingora_http::ResponseHeader;
use tokio::sync::watch;

use bytes::Bytes;
use edgegate_config::RouteCache;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT_ENCODING, AUTHORIZATION, CACHE_CONTROL, SET_COOKIE, VARY,
};

/// Responses larger than this are passed through uncached.
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;

/// Fixed memory cost of one cache entry beyond its key, headers and body (see
/// [`Cached::weight`]), the prepared head's status line and status record included.
const PER_ENTRY: usize = 768 + 256;
/// Memory cost of one stored header beyond its name and value bytes: the `(HeaderName,
/// HeaderValue)` pair, the value's allocation header, the map slot in the prebuilt head.
const PER_HEADER: usize = 96;

/// Statuses cached by default (RFC 9111 §4.2.2 heuristically cacheable).
const CACHEABLE: [u16; 6] = [200, 203, 204, 301, 404, 410];

/// A stored response.
#[derive(Debug)]
pub struct Cached {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub stored: Instant,
    pub fresh_for: Duration,
    /// Kept this long past freshness, to be served if the upstream fails.
    pub stale_for: Duration,
    /// Past freshness, served this long while a background request refreshes it.
    pub revalidate_for: Duration,
    /// The answer's response head, prepared by the gateway on the first hit and shared by
    /// every later one. Empty until then.
    pub head: OnceLock<PreparedHead>,
}

/// A cached answer's response head in the forms a hit writes it.
#[derive(Debug)]
pub struct PreparedHead {
    /// Stored headers, `Content-Length`, status header and placeholders for the per-hit
    /// fields: cloned and updated for an HTTP/2 hit or a stale answer.
    pub header: ResponseHeader,
    /// The HTTP/1 status line and the same fields serialised, without the per-hit ones
    /// (`Age`, `X-Request-Id`, `Strict-Transport-Security`, `Date`, `Connection`): an
    /// HTTP/1 hit appends those and writes it as it is, with no header map.
    pub wire: Bytes,
    /// The status alone, no fields: the session's record of the answer written (cloning
    /// it allocates no map; the body's length is passed beside it).
    pub status: ResponseHeader,
}

impl Cached {
    /// How long the entry is kept from when it was stored: fresh, then stale for whichever
    /// window is longer (saturating: a freshness read from a pod may be as long as 2^31 s).
    pub fn kept_for(&self) -> Duration {
        self.fresh_for.saturating_add(self.stale_for.max(self.revalidate_for))
    }

    pub fn age(&self) -> Duration {
        self.stored.elapsed()
    }

    /// The age at `now` (zero if the entry was stored after `now`): a hit judges and
    /// reports it at the request's arrival, with the clock read the request already made.
    pub fn age_at(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored)
    }

    /// What the entry really holds, in bytes: the key, the stored headers and the
    /// response head prepared from them on the first hit (each header twice, with the map's
    /// per-entry cost, and once more serialised), the body, and the fixed cost of an entry
    /// (the `Cached` and its `Arc`, the key's `String`, the cache's node, expiry and
    /// frequency bookkeeping), measured against RSS under random-key churn
    /// (docs/benchmarks.md).
    fn weight(&self, key: &str) -> u32 {
        let bytes: usize = self.headers.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
        let headers = 2 * (bytes + self.headers.len() * PER_HEADER) + bytes + 4 * self.headers.len();
        u32::try_from(key.len() + headers + self.body.len() + PER_ENTRY).unwrap_or(u32::MAX)
    }
}

pub struct ResponseCache {
    /// Keyed by ahash with per-process random keys: cheaper per lookup than std's
    /// SipHash, and like it keyed, so clients choosing paths cannot choose collisions.
    entries: moka::sync::Cache<String, Arc<Cached>, ahash::RandomState>,
    /// Entries evicted to stay within the memory budget.
    evictions: Arc<std::sync::atomic::AtomicU64>,
    /// Keys being fetched from an upstream right now, for request coalescing: a waiter
    /// holds a receiver that wakes when the leader's guard is dropped. Touched on misses
    /// only, never on hits.
    filling: Arc<Mutex<HashMap<String, watch::Receiver<()>>>>,
    /// The purges of the last [`PURGE_MEMORY`], so that an answer fetched before a purge and
    /// stored after it — a miss in flight while the purge ran, a Redis read that answered
    /// after it — is not kept. Touched on purges and stores only, never on hits.
    purges: Arc<Mutex<PurgeLog>>,
}

/// How long a purge is remembered for [`ResponseCache::purged_since`], and how many at most.
const PURGE_MEMORY: Duration = Duration::from_secs(600);
const PURGES_KEPT: usize = 1024;

#[derive(Default)]
struct PurgeLog {
    /// When each purge was applied, and its prefix (empty: everything); oldest first.
    recent: std::collections::VecDeque<(Instant, String)>,
    /// When the newest purge no longer in `recent` was applied: an answer fetched before
    /// it may have been purged, and is not kept.
    forgotten: Option<Instant>,
}

impl PurgeLog {
    fn remember(&mut self, prefix: &str, at: Instant) {
        while self.recent.front().is_some_and(|(t, _)| at.duration_since(*t) > PURGE_MEMORY)
            || self.recent.len() >= PURGES_KEPT
        {
            let Some((t, _)) = self.recent.pop_front() else { break };
            self.forgotten = Some(t);
        }
        self.recent.push_back((at, prefix.to_owned()));
    }

    fn purged_since(&self, key: &str, since: Instant) -> bool {
        if self.forgotten.is_some_and(|t| t > since) {
            return true;
        }
        let mut newer = self.recent.iter().rev().take_while(|(t, _)| *t > since).peekable();
        if newer.peek().is_none() {
            return false;
        }
        let url = key_url(key);
        newer.any(|(_, prefix)| url.starts_with(prefix.as_str()))
    }
}

/// `host` + `path` of a cache key (`host\npath\n…`), the string purge prefixes match.
fn key_url(key: &str) -> String {
    let mut parts = key.splitn(3, '\n');
    let (host, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut url = String::with_capacity(host.len() + path.len());
    url.push_str(host);
    url.push_str(path);
    url
}

/// What a cache miss should do about concurrent misses for the same key.
pub enum Fill {
    /// Fetch from the upstream; others wait for this request until the guard drops.
    Leader(FillGuard),
    /// Another request is fetching: wait on this, then look again.
    Follower(watch::Receiver<()>),
}

/// Held by the request fetching a key; dropping it wakes the waiters.
pub struct FillGuard {
    key: String,
    filling: Arc<Mutex<HashMap<String, watch::Receiver<()>>>>,
    _wake: watch::Sender<()>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.filling.lock() {
            map.remove(&self.key);
        }
    }
}

/// Entries leave the cache once they are past freshness and the stale-if-error window.
struct Lifetime;

impl moka::Expiry<String, Arc<Cached>> for Lifetime {
    fn expire_after_create(&self, _key: &String, value: &Arc<Cached>, _created: Instant) -> Option<Duration> {
        Some(value.kept_for())
    }
}

impl ResponseCache {
    pub fn new(memory_bytes: u64) -> ResponseCache {
        let evictions = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = Arc::clone(&evictions);
        let entries = moka::sync::Cache::builder()
            .max_capacity(memory_bytes)
            .weigher(|k: &String, v: &Arc<Cached>| v.weight(k))
            .expire_after(Lifetime)
            .support_invalidation_closures()
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
            .build_with_hasher(ahash::RandomState::new());
        ResponseCache { entries, evictions, filling: Arc::default(), purges: Arc::default() }
    }

    /// Entries evicted for the memory budget so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Coalescing: the first miss for a key leads, later ones follow.
    pub fn begin_fill(&self, key: &str) -> Fill {
        let Ok(mut map) = self.filling.lock() else {
            // A poisoned map only costs coalescing: everyone fetches.
            let (tx, _) = watch::channel(());
            return Fill::Leader(FillGuard { key: key.to_owned(), filling: Arc::clone(&self.filling), _wake: tx });
        };
        if let Some(rx) = map.get(key) {
            return Fill::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        map.insert(key.to_owned(), rx);
        Fill::Leader(FillGuard { key: key.to_owned(), filling: Arc::clone(&self.filling), _wake: tx })
    }

    /// A fresh entry for `key`.
    pub fn get(&self, key: &str) -> Option<Arc<Cached>> {
        self.get_at(key, Instant::now())
    }

    /// [`Self::get`], fresh as of `now`.
    pub fn get_at(&self, key: &str, now: Instant) -> Option<Arc<Cached>> {
        self.entries.get(key).filter(|hit| hit.age_at(now) < hit.fresh_for)
    }

    /// An entry for `key` that is past freshness but within its stale-if-error window,
    /// for when the upstream cannot answer.
    pub fn get_stale(&self, key: &str) -> Option<Arc<Cached>> {
        self.entries.get(key).filter(|hit| hit.age() < hit.fresh_for.saturating_add(hit.stale_for))
    }

    /// An entry past freshness but within its stale-while-revalidate window.
    pub fn get_revalidatable(&self, key: &str) -> Option<Arc<Cached>> {
        self.entries
            .get(key)
            .filter(|hit| hit.age() >= hit.fresh_for && hit.age() < hit.fresh_for.saturating_add(hit.revalidate_for))
    }

    /// Stores `entry` and returns it, shared.
    pub fn insert(&self, key: String, entry: Cached) -> Arc<Cached> {
        let entry = Arc::new(entry);
        self.entries.insert(key, Arc::clone(&entry));
        entry
    }

    /// Drops every entry whose host and path (`host/path`, as in a URL without scheme)
    /// start with `prefix`; an empty prefix drops everything. Takes effect for lookups
    /// at once.
    pub fn purge(&self, prefix: &str) -> Result<(), String> {
        // Remembered and applied under the log's lock, which `insert_fetched` holds from its
        // look to its insert: a store either sees the purge or was inserted before it.
        let mut log = self.purges.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        log.remember(prefix, Instant::now());
        let prefix = prefix.to_owned();
        self.entries
            .invalidate_entries_if(move |key, _| key_url(key).starts_with(&prefix))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Whether a purge matching `key` was applied after `since` (or one that may have,
    /// no longer remembered): an answer fetched at `since` is then not to be stored. A
    /// poisoned log answers yes — not storing costs a miss, storing could keep a purged
    /// answer.
    pub fn purged_since(&self, key: &str, since: Instant) -> bool {
        self.purges.lock().map_or(true, |log| log.purged_since(key, since))
    }

    /// Stores `entry`, fetched at `fetched` (when the request that fetched it, from the pod
    /// or from Redis, arrived), unless a purge of `key` came after that: then the entry is
    /// handed back unstored (the request that fetched it may still be answered with it).
    pub fn insert_fetched(&self, key: String, entry: Cached, fetched: Instant) -> Result<Arc<Cached>, Arc<Cached>> {
        let Ok(log) = self.purges.lock() else { return Err(Arc::new(entry)) };
        if log.purged_since(&key, fetched) {
            return Err(Arc::new(entry));
        }
        Ok(self.insert(key, entry))
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }
}

/// The cache key of a request, or `None` when it must bypass the cache: not a GET, a GET
/// with a body, a client `Cache-Control: no-store`, or an `Authorization` header on a route
/// whose answers are not declared the same for everyone. Host and path are never left out;
/// the query is normalised (pairs sorted by name, a name's values kept in their order);
/// `Accept-Encoding` and the route's `vary` headers join the key, and so does a port named
/// with the host. A body is never part of the key, so a GET carrying one is neither answered
/// from the cache nor stored: a pod that reads parameters from a GET's body would otherwise
/// have its answer to them cached for everyone under the plain GET's key (a "fat GET").
pub fn request_key(
    method: &str,
    canonical: &crate::normalise::CanonicalRequest,
    query: Option<&str>,
    headers: &HeaderMap,
    route: &RouteCache,
    user: Option<&str>,
) -> Option<String> {
    if method != "GET" {
        return None;
    }
    if crate::framing::declares_body(headers) {
        return None;
    }
    // Per-user answers are keyed by the verified user; shared ones must not depend on
    // who asks.
    if route.per_user {
        user?;
    } else if headers.contains_key(AUTHORIZATION) && !route.public {
        return None;
    }
    if directives(headers).any(|(d, _)| d == "no-store") {
        return None;
    }
    let (host, path) = (canonical.host(), canonical.path());
    let mut key = String::with_capacity(host.len() + path.len() + 64);
    key.push_str(host);
    key.push('\n');
    key.push_str(path);
    key.push('\n');
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        // Each pair with its name, split once.
        let mut pairs: Vec<(&str, &str)> =
            crate::query::params(q).filter(|p| !p.pair.is_empty()).map(|p| (p.name(), p.pair)).collect();
        // By name only, and stably: the values of one name keep the order they came in,
        // since pods differ on which of them counts (the first, the last), and two orders
        // can be two answers.
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        for (i, (_, pair)) in pairs.iter().enumerate() {
            if i > 0 {
                key.push('&');
            }
            key.push_str(pair);
        }
    }
    if let (true, Some(user)) = (route.per_user, user) {
        key.push_str("\nuser=");
        key.push_str(user);
    }
    // A port named with the host reaches the pod (which may put it in links), so it keys the
    // answer; kept out of the host part, so that a purge by host and path still finds it.
    if let Some(port) = canonical.port() {
        key.push_str("\nport=");
        crate::normalise::PortText::new(port).push_to(&mut key);
    }
    // `Accept-Encoding` by its pre-built name (a `&str` name is parsed on every lookup).
    push_field(&mut key, "accept-encoding", headers.get_all(ACCEPT_ENCODING));
    for name in &route.vary {
        push_field(&mut key, name, headers.get_all(name.as_str()));
    }
    Some(key)
}

/// One header's part of a cache key: `\nname=` and its values as sent.
fn push_field(key: &mut String, name: &str, values: http::header::GetAll<'_, HeaderValue>) {
    key.push('\n');
    key.push_str(name);
    key.push('=');
    for v in values {
        key.push_str(v.to_str().unwrap_or("?"));
    }
}

/// The client asked for a fresh answer (`Cache-Control: no-cache`) and the route honours it.
pub fn client_wants_fresh(headers: &HeaderMap, route: &RouteCache) -> bool {
    route.honour_client_no_cache && directives(headers).any(|(d, _)| d == "no-cache")
}

/// Whether an entry read from outside this gateway (the shared Redis) is one a gateway
/// could have stored for `route`: a status [`freshness`] stores, no `Set-Cookie` unless the
/// route stores them, and none of the fields a gateway writes anew for each answer and never
/// stores — its framing (`Content-Length`, `Transfer-Encoding`), `Age`, the request id,
/// `Strict-Transport-Security` — nor a hop-by-hop one. An entry with one was not written by
/// a gateway; served, it could split the answer for every client (a chunked body behind a
/// length) or set one cookie for all of them.
pub fn stored_by_a_gateway(status: u16, headers: &[(HeaderName, HeaderValue)], route: &RouteCache) -> bool {
    use http::header::{CONNECTION, PROXY_AUTHENTICATE, STRICT_TRANSPORT_SECURITY};
    CACHEABLE.contains(&status)
        && headers.iter().all(|(name, _)| {
            !written_per_answer(name)
                && *name != STRICT_TRANSPORT_SECURITY
                && *name != CONNECTION
                && *name != PROXY_AUTHENTICATE
                && !crate::headers::always_hop_by_hop(name)
                && (*name != SET_COOKIE || route.cache_set_cookie)
        })
}

/// The fields of an answer a gateway writes anew each time it serves it, and so never
/// stores: its framing (`Content-Length`, `Transfer-Encoding`), `Age` and the request id.
pub fn written_per_answer(name: &HeaderName) -> bool {
    use http::header::{AGE, CONTENT_LENGTH, TRANSFER_ENCODING};
    *name == CONTENT_LENGTH || *name == TRANSFER_ENCODING || *name == AGE || name.as_str() == "x-request-id"
}

/// How long an upstream answer may be served from the cache, or `None` when it must
/// not be stored: an uncacheable status, `Set-Cookie`, `no-store`/`private`/`no-cache`,
/// a `Vary` on a header the key does not include (or `Vary: *`), or a zero lifetime.
/// `s-maxage`, then `max-age`, then the route's `ttl`.
pub fn freshness(status: u16, headers: &HeaderMap, route: &RouteCache) -> Option<Duration> {
    if !CACHEABLE.contains(&status) || (headers.contains_key(SET_COOKIE) && !route.cache_set_cookie) {
        return None;
    }
    let keyed = |name: &str| {
        name.eq_ignore_ascii_case("accept-encoding") || route.vary.iter().any(|v| v.eq_ignore_ascii_case(name))
    };
    let varies_elsewhere = headers
        .get_all(VARY)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|name| !name.is_empty() && (name == "*" || !keyed(name)));
    if varies_elsewhere {
        return None;
    }
    let mut max_age = None;
    let mut s_maxage = None;
    for (directive, value) in directives(headers) {
        match directive.as_str() {
            "no-store" | "private" | "no-cache" => return None,
            "max-age" => max_age = value.and_then(|v| delta_seconds(&v)),
            "s-maxage" => s_maxage = value.and_then(|v| delta_seconds(&v)),
            _ => {}
        }
    }
    let fresh = s_maxage.or(max_age).map_or(route.ttl, Duration::from_secs);
    (!fresh.is_zero()).then_some(fresh)
}

/// The most seconds of freshness an answer is given (RFC 9111 §1.2.2: a delta-seconds
/// larger than a cache can represent, or whose calculations overflow, is 2^31 — 68 years).
pub const MOST_DELTA_SECONDS: u64 = 1 << 31;

/// A `max-age` or `s-maxage` value: digits, at most [`MOST_DELTA_SECONDS`]. A pod's
/// `max-age=18446744073709551615` was taken whole, and adding the route's stale window to
/// it overflowed (a panic on storing the answer, for every request of that path).
fn delta_seconds(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(value.parse::<u64>().unwrap_or(u64::MAX).min(MOST_DELTA_SECONDS))
}

/// `Cache-Control` directives, lower-cased, with their values.
fn directives(headers: &HeaderMap) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    headers.get_all(CACHE_CONTROL).into_iter().filter_map(|v| v.to_str().ok()).flat_map(|v| {
        v.split(',').filter(|d| !d.trim().is_empty()).map(|d| match d.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim().trim_matches('"').to_owned())),
            None => (d.trim().to_ascii_lowercase(), None),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entries_a_gateway_could_have_stored_pass_as_such() {
        let r = route(&[], false);
        let field = |n: &'static str, v: &'static str| (HeaderName::from_static(n), HeaderValue::from_static(v));
        let honest =
            vec![field("content-type", "text/html"), field("cache-control", "max-age=60"), field("etag", "\"1\"")];
        assert!(stored_by_a_gateway(200, &honest, &r));
        assert!(stored_by_a_gateway(404, &[], &r));
        for status in [101, 100, 206, 302, 500, 0] {
            assert!(!stored_by_a_gateway(status, &honest, &r), "{status}");
        }
        for name in [
            "content-length",
            "transfer-encoding",
            "age",
            "strict-transport-security",
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
            "proxy-authenticate",
            "x-request-id",
            "set-cookie",
        ] {
            let mut h = honest.clone();
            h.push(field(name, "x"));
            assert!(!stored_by_a_gateway(200, &h, &r), "{name}");
        }
        let mut cookies = route(&[], false);
        cookies.cache_set_cookie = true;
        assert!(stored_by_a_gateway(200, &[field("set-cookie", "s=1")], &cookies), "when the route stores them");
    }

    fn route(vary: &[&str], public: bool) -> RouteCache {
        RouteCache {
            vary: vary.iter().map(|s| s.to_string()).collect(),
            public,
            ..RouteCache::with_ttl(Duration::from_secs(30))
        }
    }

    /// The canonical request for a host (with any port) and path.
    fn canon(host: &str, path: &str) -> crate::normalise::CanonicalRequest {
        crate::normalise::CanonicalRequest::new(Some(host.as_bytes()), path.as_bytes()).expect("canonical")
    }

    #[test]
    fn a_port_named_with_the_host_keys_the_answer_and_case_does_not() {
        let (r, none) = (route(&[], false), HeaderMap::new());
        let key = |host| request_key("GET", &canon(host, "/x"), None, &none, &r, None);
        assert_eq!(key("a.gov.cn"), key("A.Gov.CN."), "one canonical host");
        assert_ne!(key("a.gov.cn"), key("a.gov.cn:1337"), "the pod sees the port");
        assert_eq!(key("a.gov.cn:1337"), key("A.GOV.CN.:01337"));
        assert_eq!(key("a.gov.cn:"), key("a.gov.cn"), "an empty port names none");
        let mut default = canon("a.gov.cn:443", "/x");
        default.drop_default_port(443);
        assert_eq!(request_key("GET", &default, None, &none, &r, None), key("a.gov.cn"), "the scheme's default");
        // A purge by host and path still finds an entry keyed with a port.
        assert!(key("a.gov.cn:1337").is_some_and(|k| k.starts_with("a.gov.cn\n/x")));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn keys_separate_hosts_queries_and_varied_headers() {
        let r = route(&["accept-language"], false);
        let none = HeaderMap::new();
        let a = request_key("GET", &canon("a.gov.cn", "/x"), Some("b=2&a=1"), &none, &r, None);
        assert_eq!(
            a,
            request_key("GET", &canon("a.gov.cn", "/x"), Some("a=1&b=2"), &none, &r, None),
            "query order is normalised"
        );
        assert_ne!(
            a,
            request_key("GET", &canon("b.gov.cn", "/x"), Some("a=1&b=2"), &none, &r, None),
            "host is in the key"
        );
        assert_ne!(a, request_key("GET", &canon("a.gov.cn", "/y"), Some("a=1&b=2"), &none, &r, None));
        // Values of one name keep their order: a pod that reads the first `lang` answers
        // `lang=en&lang=xx` and `lang=xx&lang=en` differently, so they are two entries.
        let key = |q| request_key("GET", &canon("a.gov.cn", "/x"), Some(q), &none, &r, None);
        assert_ne!(key("lang=en&lang=xx"), key("lang=xx&lang=en"));
        assert_eq!(key("b=2&lang=en&a=1&lang=xx"), key("lang=en&a=1&lang=xx&b=2"));
        assert_ne!(key("a=1"), key("a=1&a=1"));
        let zh = request_key("GET", &canon("a.gov.cn", "/x"), None, &headers(&[("accept-language", "zh")]), &r, None);
        let en = request_key("GET", &canon("a.gov.cn", "/x"), None, &headers(&[("accept-language", "en")]), &r, None);
        assert_ne!(zh, en, "vary header values are in the key");
        let gz = request_key("GET", &canon("a.gov.cn", "/x"), None, &headers(&[("accept-encoding", "gzip")]), &r, None);
        assert_ne!(
            gz,
            request_key("GET", &canon("a.gov.cn", "/x"), None, &none, &r, None),
            "Accept-Encoding always varies"
        );
    }

    #[test]
    fn per_user_keys_need_a_user_and_separate_users() {
        let mut r = route(&[], false);
        r.per_user = true;
        let auth = headers(&[("authorization", "Bearer x")]);
        assert_eq!(request_key("GET", &canon("h", "/me"), None, &auth, &r, None), None, "no verified user, no caching");
        let a = request_key("GET", &canon("h", "/me"), None, &auth, &r, Some("citizen-1"));
        let b = request_key("GET", &canon("h", "/me"), None, &auth, &r, Some("citizen-2"));
        assert!(a.is_some() && b.is_some());
        assert_ne!(a, b);
    }

    #[test]
    fn requests_that_bypass_the_cache() {
        let r = route(&[], false);
        assert_eq!(request_key("POST", &canon("h", "/"), None, &HeaderMap::new(), &r, None), None);
        assert_eq!(request_key("HEAD", &canon("h", "/"), None, &HeaderMap::new(), &r, None), None);
        let auth = headers(&[("authorization", "Bearer x")]);
        assert_eq!(
            request_key("GET", &canon("h", "/"), None, &auth, &r, None),
            None,
            "per-user answers are not shared"
        );
        assert!(
            request_key("GET", &canon("h", "/"), None, &auth, &route(&[], true), None).is_some(),
            "unless the route is public"
        );
        assert_eq!(
            request_key("GET", &canon("h", "/"), None, &headers(&[("cache-control", "no-store")]), &r, None),
            None
        );
        // A GET with a body (its parameters are not in the key).
        for body in
            [&[("content-length", "5")][..], &[("content-length", "00010")], &[("transfer-encoding", "chunked")]]
        {
            assert_eq!(request_key("GET", &canon("h", "/"), None, &headers(body), &r, None), None, "{body:?}");
        }
        for empty in [&[("content-length", "0")][..], &[("content-length", "000")]] {
            assert!(request_key("GET", &canon("h", "/"), None, &headers(empty), &r, None).is_some(), "{empty:?}");
        }
    }

    /// Whoever answers for a cached route — a pod, a compromised one included — chooses its
    /// `max-age`: one past 2^31 seconds (RFC 9111's ceiling) is read as 2^31, so that adding
    /// the route's stale window to it cannot overflow; an entry so kept is stored, served,
    /// and served stale as any other.
    #[test]
    fn a_freshness_past_two_to_the_31_seconds_is_two_to_the_31() {
        let r = route(&[], false);
        let ceiling = Some(Duration::from_secs(MOST_DELTA_SECONDS));
        for cc in [
            "max-age=18446744073709551615",
            "max-age=99999999999999999999999999",
            "s-maxage=2147483649, max-age=5",
            "max-age=\"18446744073709551615\"",
        ] {
            assert_eq!(freshness(200, &headers(&[("cache-control", cc)]), &r), ceiling, "{cc}");
        }
        assert_eq!(
            freshness(200, &headers(&[("cache-control", "max-age=2147483647")]), &r),
            Some(Duration::from_secs(2147483647))
        );
        for cc in ["max-age=-1", "max-age=+5", "max-age=5s", "max-age="] {
            assert_eq!(
                freshness(200, &headers(&[("cache-control", cc)]), &r),
                Some(r.ttl),
                "{cc}: not a delta-seconds"
            );
        }
        let cache = ResponseCache::new(1 << 20);
        let entry = Cached {
            status: 200,
            headers: Vec::new(),
            body: Bytes::from_static(b"x"),
            stored: Instant::now(),
            fresh_for: Duration::MAX,
            stale_for: Duration::from_secs(60),
            revalidate_for: Duration::from_secs(60),
            head: Default::default(),
        };
        cache.insert("k".into(), entry);
        assert!(cache.get("k").is_some() && cache.get_stale("k").is_some(), "stored and served");
        assert!(cache.get_revalidatable("k").is_none(), "and fresh");
    }

    #[test]
    fn freshness_follows_cache_control() {
        let r = route(&[], false);
        assert_eq!(freshness(200, &HeaderMap::new(), &r), Some(Duration::from_secs(30)));
        assert_eq!(
            freshness(200, &headers(&[("cache-control", "public, max-age=5")]), &r),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            freshness(200, &headers(&[("cache-control", "max-age=5, s-maxage=9")]), &r),
            Some(Duration::from_secs(9))
        );
        for cc in ["no-store", "private", "no-cache", "max-age=0"] {
            let h = HeaderMap::from_iter([(CACHE_CONTROL, HeaderValue::from_str(cc).expect("value"))]);
            assert_eq!(freshness(200, &h, &r), None, "{cc}");
        }
        assert_eq!(freshness(200, &headers(&[("set-cookie", "s=1")]), &r), None);
        let mut cookies = route(&[], false);
        cookies.cache_set_cookie = true;
        assert!(freshness(200, &headers(&[("set-cookie", "s=1")]), &cookies).is_some(), "when configured");
        assert_eq!(freshness(500, &HeaderMap::new(), &r), None);
        assert_eq!(freshness(404, &HeaderMap::new(), &r), Some(Duration::from_secs(30)));
        // The upstream's Vary must be covered by the key.
        assert!(freshness(200, &headers(&[("vary", "Accept-Encoding")]), &r).is_some());
        assert_eq!(freshness(200, &headers(&[("vary", "Accept-Language")]), &r), None);
        assert!(freshness(
            200,
            &headers(&[("vary", "accept-language, accept-encoding")]),
            &route(&["accept-language"], false)
        )
        .is_some());
        assert_eq!(freshness(200, &headers(&[("vary", "*")]), &route(&["accept-language"], false)), None);
    }

    #[tokio::test]
    async fn concurrent_misses_coalesce_behind_one_leader() {
        let cache = ResponseCache::new(1 << 20);
        let Fill::Leader(guard) = cache.begin_fill("k") else { panic!("first miss leads") };
        let Fill::Follower(mut rx) = cache.begin_fill("k") else { panic!("second miss follows") };
        assert!(matches!(cache.begin_fill("other"), Fill::Leader(_)), "other keys are independent");
        let waiter = tokio::spawn(async move { rx.changed().await.is_err() });
        drop(guard);
        assert!(waiter.await.expect("join"), "the follower wakes when the leader is done");
        assert!(matches!(cache.begin_fill("k"), Fill::Leader(_)), "the next miss leads again");
    }

    /// An answer is stored only if no purge of its key came after it was fetched: a purge
    /// of another prefix, or one before the fetch, does not stop it; past the purges kept,
    /// one fetched before the oldest forgotten is not stored either.
    #[test]
    fn an_answer_fetched_before_a_purge_of_its_key_is_not_stored() {
        let cache = ResponseCache::new(1 << 20);
        let entry = || Cached {
            status: 200,
            headers: Vec::new(),
            body: Bytes::from_static(b"x"),
            stored: Instant::now(),
            fresh_for: Duration::from_secs(60),
            stale_for: Duration::ZERO,
            revalidate_for: Duration::ZERO,
            head: Default::default(),
        };
        let key = |path: &str| format!("a.gov.cn\n{path}\nGET");
        let before = Instant::now();
        cache.purge("a.gov.cn/forms/").expect("purge");
        let between = Instant::now();
        assert!(cache.insert_fetched(key("/forms/1"), entry(), before).is_err(), "purged since");
        assert!(cache.get(&key("/forms/1")).is_none());
        assert!(cache.insert_fetched(key("/catalogue/1"), entry(), before).is_ok(), "another prefix");
        assert!(cache.insert_fetched(key("/forms/2"), entry(), between).is_ok(), "fetched after the purge");
        assert!(cache.get(&key("/forms/2")).is_some());
        cache.purge("").expect("purge everything");
        assert!(cache.insert_fetched(key("/catalogue/2"), entry(), between).is_err(), "everything");
        let fetched = Instant::now();
        for i in 0..PURGES_KEPT {
            cache.purge(&format!("elsewhere.gov.cn/{i}/")).expect("purge");
        }
        assert!(cache.insert_fetched(key("/catalogue/3"), entry(), fetched).is_ok(), "all remembered, none matches");
        cache.purge("elsewhere.gov.cn/last/").expect("purge");
        assert!(cache.purged_since(&key("/catalogue/3"), fetched), "one forgotten may have matched");
        assert!(!cache.purged_since(&key("/catalogue/3"), Instant::now()), "none since now");
    }

    #[test]
    fn stale_entries_are_not_served_and_the_budget_evicts() {
        let cache = ResponseCache::new(10_000);
        let entry = |ms| Cached {
            status: 200,
            headers: Vec::new(),
            body: Bytes::from(vec![b'x'; 1_000]),
            stored: Instant::now(),
            fresh_for: Duration::from_millis(ms),
            stale_for: Duration::ZERO,
            revalidate_for: Duration::ZERO,
            head: Default::default(),
        };
        cache.insert("fresh".into(), entry(60_000));
        cache.insert("stale".into(), entry(0));
        assert!(cache.get("fresh").is_some());
        assert!(cache.get("stale").is_none());
        for i in 0..50 {
            cache.insert(format!("k{i}"), entry(60_000));
        }
        assert!(cache.entry_count() <= 10, "{} entries of ~1 KB in a 10 KB budget", cache.entry_count());
    }
}
