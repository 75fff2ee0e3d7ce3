//! Upstream feedback and retry decisions (request path step 8, "proxy"): what each
//! attempt's outcome means for the endpoint (latency estimate, outlier streak) and
//! whether the request may go to another endpoint. Retries happen on connect failures
//! (nothing was sent), and for idempotent requests on the group's configured statuses
//! and on connections the upstream broke before answering — never after any of the
//! response reached the client, never beyond `retry.attempts`, and only while the
//! group's retry budget allows, so retries cannot amplify an outage.
//!
//! Read timeouts are not retried: the request may still be running upstream, and a
//! second full timeout would double the wait.

use std::sync::atomic::Ordering;

use pingora_error::{Error, ErrorType};

use crate::balancer::clock::{ms_at, now_ms};
use crate::balancer::endpoint::{Attempt, UpstreamResult};
use crate::balancer::Pool;

/// Every original request funds the group's retry budget.
pub fn on_request(pool: &Pool, now_ms: u64) {
    pool.group.budget.deposit(pool.config.retry.budget_ratio, now_ms);
}

/// A response header arrived at `clock`: feed the latency estimate and the outlier streak,
/// and decide whether to discard it and retry on its status.
pub fn on_response(
    pool: &Pool,
    attempt: &Attempt,
    status: u16,
    idempotent: bool,
    retries: &mut u32,
    clock: tokio::time::Instant,
) -> bool {
    let now = ms_at(clock);
    let elapsed = clock.saturating_duration_since(attempt.started);
    attempt.endpoint.ewma.observe(elapsed, now, pool.config.balancer.decay);
    let stats = &attempt.endpoint.stats;
    stats.duration.observe(elapsed);
    if status >= 500 {
        stats.count_result(UpstreamResult::ServerError);
        pool.record_failure(attempt.index, now);
    } else {
        stats.count_result(UpstreamResult::Response);
        pool.record_success(attempt.index);
    }
    idempotent && pool.config.retry.on_status.contains(&status) && book_retry(pool, retries, now)
}

pub fn on_connect_failure(pool: &Pool, attempt: &Attempt, retries: &mut u32) -> bool {
    connect_failure_at(pool, attempt, retries, now_ms())
}

/// [`on_connect_failure`] at a given time (tests pass one clock to deposits and withdrawals).
fn connect_failure_at(pool: &Pool, attempt: &Attempt, retries: &mut u32, now: u64) -> bool {
    attempt.endpoint.stats.count_result(UpstreamResult::ConnectError);
    pool.record_failure(attempt.index, now);
    book_retry(pool, retries, now)
}

/// An error after the connection was up. A pooled connection the upstream had already
/// closed is retried once without counting against the endpoint; other upstream
/// errors count as failures and are retried when the request can be replayed.
pub fn on_proxy_error(
    pool: &Pool,
    attempt: &Attempt,
    e: &Error,
    client_reused: bool,
    replayable: bool,
    retries: &mut u32,
) -> bool {
    let now = now_ms();
    let mut retry = e.retry;
    retry.decide_reuse(client_reused);
    if replayable && retry.retry() && client_reused {
        // Stale keep-alive connection: not the endpoint's fault, and not a budgeted retry.
        return true;
    }
    let timed_out = matches!(e.etype(), ErrorType::ReadTimedout | ErrorType::WriteTimedout);
    if e.esource() == &pingora_error::ErrorSource::Upstream {
        attempt.endpoint.stats.count_result(if timed_out { UpstreamResult::Timeout } else { UpstreamResult::Error });
        pool.record_failure(attempt.index, now);
    }
    replayable && !timed_out && e.esource() == &pingora_error::ErrorSource::Upstream && book_retry(pool, retries, now)
}

/// Takes a retry if attempts remain, another endpoint exists and the budget allows.
fn book_retry(pool: &Pool, retries: &mut u32, now_ms: u64) -> bool {
    let policy = &pool.config.retry;
    if *retries >= policy.attempts || pool.endpoints.len() < 2 {
        return false;
    }
    if !pool.group.budget.try_withdraw(policy.min_per_second, now_ms) {
        pool.group.retries_denied.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(upstream = pool.name(), "retry refused by the retry budget");
        return false;
    }
    *retries += 1;
    pool.group.retries.fetch_add(1, Ordering::Relaxed);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgegate_config::Config;

    fn pool(retry: &str) -> Pool {
        let c = Config::from_yaml(&format!(
            "listeners: [{{name: p, address: '127.0.0.1:0'}}]\nupstreams:\n  g:\n    endpoints: [{{address: '10.0.0.1:80'}}, {{address: '10.0.0.2:80'}}, {{address: '10.0.0.3:80'}}]\n    outlier: {{consecutive_failures: 1000}}\n    retry: {retry}\n"
        ))
        .expect("valid");
        Pool::new(&c.upstreams[0], None, 0)
    }

    #[test]
    fn the_budget_caps_retries_during_an_outage() {
        let p = pool("{attempts: 1, budget_ratio: 0.2, min_per_second: 0}");
        let now = now_ms();
        let mut granted = 0;
        for _ in 0..100 {
            on_request(&p, now);
            let attempt = Attempt::start(std::sync::Arc::clone(&p.endpoints[0]), 0);
            let mut retries = 0;
            // One clock for deposits and withdrawals: a second boundary crossed between
            // them (a loaded machine) must not change the budget under test.
            granted += u32::from(connect_failure_at(&p, &attempt, &mut retries, now));
        }
        // Deposits accrue as requests arrive, so a few more than 20 % can pass early on.
        assert!((18..=22).contains(&granted), "{granted} retries for 100 failing requests");
        assert_eq!(p.group.retries.load(Ordering::Relaxed), u64::from(granted));
        assert_eq!(p.group.retries_denied.load(Ordering::Relaxed), u64::from(100 - granted));
    }

    #[test]
    fn attempts_limit_retries_per_request() {
        let p = pool("{attempts: 2, budget_ratio: 1.0, min_per_second: 100}");
        let attempt = Attempt::start(std::sync::Arc::clone(&p.endpoints[0]), 0);
        let mut retries = 0;
        assert!(on_connect_failure(&p, &attempt, &mut retries));
        assert!(on_connect_failure(&p, &attempt, &mut retries));
        assert!(!on_connect_failure(&p, &attempt, &mut retries), "third retry refused");
        assert_eq!(retries, 2);
    }

    #[test]
    fn status_retries_only_for_idempotent_requests_and_listed_statuses() {
        let p = pool("{attempts: 1, on_status: [503], min_per_second: 100}");
        let attempt = Attempt::start(std::sync::Arc::clone(&p.endpoints[0]), 0);
        let mut retries = 0;
        assert!(
            !on_response(&p, &attempt, 503, false, &mut retries, tokio::time::Instant::now()),
            "POST is not replayed"
        );
        assert!(!on_response(&p, &attempt, 500, true, &mut retries, tokio::time::Instant::now()), "500 is not listed");
        assert!(on_response(&p, &attempt, 503, true, &mut retries, tokio::time::Instant::now()));
        assert_eq!(retries, 1);
    }
}
