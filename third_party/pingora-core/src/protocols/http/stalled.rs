// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! A process-wide bound on response writes stalled on their clients.
//!
//! edgegate patch 48. A response whose client takes none of it holds its buffers (the pipe
//! between the request's two halves, the batch being written, the next read from upstream)
//! and its upstream connection until the write timeout ends it. The write timeout bounds how
//! long; nothing bounded how many, so enough connections that stop reading could hold
//! `max connections × per-response buffers` at once.
//!
//! With a limit set ([`set_stalled_write_limit`]), a server-side body write that is still
//! waiting after `after` counts as *stalled*. When a new stall would make more than `limit`,
//! the one stalled longest is cut at once: its write fails with [`WRITE_STALLED_CUT`], the
//! request ends and its buffers are freed. Writes that finish within `after` — every client
//! that is reading — never touch the shared state; they cost what the write timeout alone
//! cost before. Without a limit (the default) writes behave exactly as before.

use pingora_error::{Error, ErrorType, Result};
use pingora_timeout::timeout;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The error type of a write cut because more responses were stalled than the limit.
pub const WRITE_STALLED_CUT: ErrorType = ErrorType::Custom("WriteStalledCut");

static LIMIT: AtomicUsize = AtomicUsize::new(0);
static AFTER_MS: AtomicU64 = AtomicU64::new(1000);
static CUT: AtomicU64 = AtomicU64::new(0);
static STALLED: Mutex<Stalled> = Mutex::new(Stalled { next: 0, waiting: BTreeMap::new() });

/// The writes stalled now, by the order in which they stalled (oldest first).
struct Stalled {
    next: u64,
    waiting: BTreeMap<u64, Arc<Notify>>,
}

/// Sets the most body writes that may be stalled at once, and how long a write waits before it
/// counts as stalled. `limit` 0 removes the bound (the default). Takes effect for stalls that
/// start from now on; lowering it cuts no one until the next stall.
pub fn set_stalled_write_limit(limit: usize, after: Duration) {
    AFTER_MS.store(after.as_millis().clamp(1, u64::MAX as u128) as u64, Ordering::Relaxed);
    LIMIT.store(limit, Ordering::Relaxed);
}

/// Body writes stalled now.
pub fn stalled_writes() -> usize {
    lock().waiting.len()
}

/// Writes cut since the process started because more were stalled than the limit.
pub fn stalled_writes_cut() -> u64 {
    CUT.load(Ordering::Relaxed)
}

fn lock() -> std::sync::MutexGuard<'static, Stalled> {
    // The map stays consistent across a panic: every change is a single insert or remove.
    STALLED.lock().unwrap_or_else(|p| p.into_inner())
}

/// One stalled write's place in the queue; leaving it (the write ended either way) frees the
/// place.
struct Stall {
    id: u64,
    cut: Arc<Notify>,
}

impl Stall {
    fn enter(limit: usize) -> Stall {
        let cut = Arc::new(Notify::new());
        let mut stalled = lock();
        let id = stalled.next;
        stalled.next += 1;
        stalled.waiting.insert(id, cut.clone());
        while stalled.waiting.len() > limit.max(1) {
            let Some((_, oldest)) = stalled.waiting.pop_first() else { break };
            // A permit is kept if the oldest is between polls, so the cut is never lost.
            oldest.notify_one();
            CUT.fetch_add(1, Ordering::Relaxed);
        }
        Stall { id, cut }
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        lock().waiting.remove(&self.id);
    }
}

fn timed_out(t: Duration, what: &str) -> Box<Error> {
    Error::explain(ErrorType::WriteTimedout, format!("{what}, timeout: {t:?}"))
}

/// Runs a server-side body write under the write timeout `t`, as `timeout(t, write)` did, and
/// under the stalled-write limit when one is set.
/// The caller pins the write where it is built, so that it is not moved into this future.
pub(crate) async fn write_body<T>(
    t: Option<Duration>,
    mut write: std::pin::Pin<&mut impl Future<Output = Result<T>>>,
    what: &str,
) -> Result<T> {
    let limit = LIMIT.load(Ordering::Relaxed);
    let after = Duration::from_millis(AFTER_MS.load(Ordering::Relaxed));
    if limit == 0 || t.is_some_and(|t| t <= after) {
        return match t {
            Some(t) => timeout(t, write).await.unwrap_or_else(|_| Err(timed_out(t, what))),
            None => write.await,
        };
    }
    // The common case: the write finishes, or fails, before it counts as stalled. The rest
    // is boxed so that a write's future carries none of it.
    match timeout(after, &mut write).await {
        Ok(done) => done,
        Err(_) => Box::pin(stalled(limit, t.map(|t| (t, t - after)), write, what)).await,
    }
}

/// A write waiting longer than `after`: in the queue of stalled writes until it finishes, its
/// timeout (`t`, with `rest` of it left) ends it, or a newer stall past `limit` cuts it.
async fn stalled<T>(
    limit: usize,
    t: Option<(Duration, Duration)>,
    mut write: std::pin::Pin<&mut impl Future<Output = Result<T>>>,
    what: &str,
) -> Result<T> {
    let stall = Stall::enter(limit);
    let rest = async {
        match t {
            Some((t, rest)) => timeout(rest, &mut write).await.unwrap_or_else(|_| Err(timed_out(t, what))),
            None => (&mut write).await,
        }
    };
    let cut = stall.cut.notified();
    let finished = match futures::future::select(pin!(rest), pin!(cut)).await {
        futures::future::Either::Left((done, _)) => Some(done),
        futures::future::Either::Right(_) => None,
    };
    drop(stall);
    finished.unwrap_or_else(|| {
        Error::e_explain(
            WRITE_STALLED_CUT,
            format!("{what}: stalled longest while more than {limit} responses were stalled"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as TestLock;

    // The limit and the queue are process-wide: these tests take turns.
    static TURN: TestLock<()> = TestLock::new(());

    /// A write that never finishes, as to a client that reads nothing.
    async fn never() -> Result<usize> {
        std::future::pending().await
    }

    #[tokio::test]
    async fn past_the_limit_the_write_stalled_longest_is_cut_first() {
        let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        set_stalled_write_limit(2, Duration::from_millis(20));
        let cut_before = stalled_writes_cut();
        let mut writes = Vec::new();
        for _ in 0..4 {
            writes.push(tokio::spawn(async { write_body(Some(Duration::from_secs(60)), pin!(never()), "w").await }));
            // Each stalls (20 ms) well before the next one starts.
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(stalled_writes(), 2);
        assert_eq!(stalled_writes_cut() - cut_before, 2);
        for (i, w) in writes.into_iter().enumerate() {
            if i < 2 {
                let e = w.await.expect("joined").expect_err("the oldest two are cut");
                assert_eq!(e.etype(), &WRITE_STALLED_CUT);
            } else {
                assert!(!w.is_finished(), "write {i} is one of the two newest and still waits");
                w.abort();
                let _ = w.await;
            }
        }
        assert_eq!(stalled_writes(), 0, "an ended write leaves the queue");
        set_stalled_write_limit(0, Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_write_that_finishes_in_time_never_counts_and_the_timeout_still_ends_a_stall() {
        let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        set_stalled_write_limit(1, Duration::from_millis(20));
        let cut_before = stalled_writes_cut();
        // A write that takes 50 ms stalls, then finishes with its own result.
        let slow = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(7usize)
        };
        assert_eq!(write_body(Some(Duration::from_secs(5)), pin!(slow), "w").await.expect("done"), 7);
        // A write that never finishes ends at its timeout, counted from its start.
        let started = std::time::Instant::now();
        let e = write_body(Some(Duration::from_millis(200)), pin!(never()), "w").await.expect_err("times out");
        assert_eq!(e.etype(), &ErrorType::WriteTimedout);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(stalled_writes(), 0);
        assert_eq!(stalled_writes_cut(), cut_before, "one stall at a time is within a limit of 1");
        set_stalled_write_limit(0, Duration::from_secs(1));
    }
}
