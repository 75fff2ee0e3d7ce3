//! Request path step 6, "cache lookup": runs only after the access step let the request
//! in, so a cached answer never bypasses authorization. Keyed on the canonical host and
//! path. L1 (moka) first, then L2 (Redis); an expired entry inside its
//! stale-while-revalidate window is served while one background request refreshes it;
//! concurrent misses for one key wait for a single upstream fetch.

use std::sync::Arc;
use std::time::Instant;

use edgegate_filters::cache::{self, Cached, Fill, FillGuard};
use edgegate_filters::normalise::CanonicalRequest;
use pingora_http::RequestHeader;

use super::revalidate;
use crate::snapshot::RouteInfo;
use crate::state::GatewayState;

/// Where a hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitSource {
    Memory,
    Redis,
    /// Found after waiting for a concurrent miss of the same key.
    Coalesced,
}

/// What the cache step found.
pub enum CacheLookup {
    /// The route does not cache, or this request must not use the cache (not a GET,
    /// `no-store`, an `Authorization` on a shared route).
    Bypass,
    Hit(Arc<Cached>, HitSource),
    /// Expired but within stale-while-revalidate: served, and refreshed in the background.
    Stale(Arc<Cached>),
    /// Go upstream; the answer may be stored under `key`. `fill` is held while this
    /// request fetches for others waiting on the same key.
    Miss {
        key: String,
        fill: Option<FillGuard>,
    },
    /// The client asked for a fresh answer (`Cache-Control: no-cache`, honoured by the
    /// route): go upstream and store the answer for the others.
    Refresh {
        key: String,
    },
}

pub async fn lookup(
    state: &GatewayState,
    route: &RouteInfo,
    req: &RequestHeader,
    canonical: &CanonicalRequest,
    user: Option<&str>,
    arrived: Instant,
) -> CacheLookup {
    let Some(rc) = &route.spec.cache else { return CacheLookup::Bypass };
    let Some(key) = cache::request_key(req.method.as_str(), canonical, req.uri.query(), &req.headers, rc, user) else {
        return CacheLookup::Bypass;
    };
    if cache::client_wants_fresh(&req.headers, rc) {
        return CacheLookup::Refresh { key };
    }
    let l1 = &state.cache.responses;
    // Fresh as of the request's arrival (no clock read of its own).
    if let Some(hit) = l1.get_at(&key, arrived) {
        return CacheLookup::Hit(hit, HitSource::Memory);
    }
    // L1 miss: another gateway sharing the Redis may have it.
    if let Some(l2) = &state.cache.l2 {
        if let Some(entry) = l2.get(&key, rc, &route.spec.name).await {
            // Not kept in memory when a purge came while Redis was read: the read may have
            // been answered from before it.
            let entry = l1.insert_fetched(key, entry, arrived).unwrap_or_else(|unkept| unkept);
            return CacheLookup::Hit(entry, HitSource::Redis);
        }
    }
    if !rc.stale_while_revalidate.is_zero() {
        if let Some(stale) = l1.get_revalidatable(&key) {
            // Serve the expired answer now; one background request refreshes it.
            if let Fill::Leader(guard) = l1.begin_fill(&key) {
                let refresh = revalidate::Refresh::new(key, req, canonical, rc, route);
                let connector = Arc::clone(&state.cache.connector);
                revalidate::spawn(Arc::clone(l1), Arc::clone(&route.pool), connector, guard, refresh);
            }
            return CacheLookup::Stale(stale);
        }
    }
    match l1.begin_fill(&key) {
        Fill::Leader(guard) => CacheLookup::Miss { key, fill: Some(guard) },
        Fill::Follower(mut done) => {
            // Another request is fetching this key: wait for it (at most the route's read
            // timeout), then look again; go upstream ourselves if still nothing.
            let _ = tokio::time::timeout(route.spec.timeouts.read, done.changed()).await;
            match l1.get(&key) {
                Some(hit) => CacheLookup::Hit(hit, HitSource::Coalesced),
                None => CacheLookup::Miss { key, fill: None },
            }
        }
    }
}
