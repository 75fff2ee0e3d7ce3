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

//! edgegate patch 96: TLS handshakes on a worker take turns with its other tasks.
//!
//! A server's step of a handshake (the ClientHello read, the key exchange, the
//! certificate's signature, the flight written) runs inside one poll of the handshake's
//! future: ~0.15 ms of CPU with an ECDSA P-256 key, ~0.6 ms with RSA 2048. Tokio runs a
//! worker's ready tasks in turn and polls for I/O only between rounds of them (or every
//! `event_interval` tasks), so when many handshakes are ready at once (a flood of new
//! connections, or every client of a restarted node coming back) the worker's other
//! tasks — the requests of clients already connected — wait for all of those steps, and
//! the requests that become ready meanwhile are not even seen until they are done.
//!
//! [`Turns`] lets a worker take **one handshake step per scheduler round**: a step may run
//! only if no other handshake has taken one since the worker last polled for I/O.
//! Handshakes that find the turn taken wait in line and are woken one at a time after the
//! next I/O poll (through tokio's deferred wake-ups, the mechanism of
//! [`tokio::task::yield_now`]). Handshakes that have already taken a step go first, oldest
//! first: a handshake whose dear step is paid for (the signature is in its first) finishes
//! rather than waiting behind every new one. Then new handshakes, oldest first — unless the
//! oldest has waited [`BEHIND`] already: the worker is then behind by more than it can
//! catch up soon (more new connections than it can sign, a flood), and the newest goes
//! first. Oldest first, every handshake in such a line would wait until the client or the
//! gateway's handshake timeout gives up, many of them after their signature was paid for;
//! newest first, the worker completes as many as it can sign, each soon, and those left
//! longest are dropped by the timeout having cost only their accept (the "adaptive LIFO"
//! of overloaded servers' queues). A request then waits for at most one handshake step,
//! however many handshakes are ready, and a worker with nothing else to do runs its
//! handshakes back to back as before (a round is then a step and an I/O poll).
//!
//! Outside a tokio runtime the turn is given back at once: the future behaves as the one
//! it wraps.
//!
//! edgegate patch 98: a server's own dear steps on a worker (a bearer token's signature
//! check, ~20–40 µs) take the same turns through [`take_turn`]: awaited right before the
//! step, with nothing awaited between, it holds the worker's turn for the rest of that poll.
//! A step of either kind runs only if no step of either kind has run since the worker last
//! polled for I/O; such steps wait in line with the new handshakes, in the same order.
//!
//! edgegate patch 104: a step the server holds in less regard (a token check for a client
//! address that sent a forged token a moment ago) takes its turn through
//! [`take_turn_last`]: it waits behind every handshake and every other step, in a line of
//! its own served in the same order (oldest first, newest first once the oldest has waited
//! [`BEHIND`]), and runs only in a round no one else in line wants. A flood of forgeries
//! from addresses already seen forging then delays neither a new client's handshake nor
//! a new citizen's first token check.
//!
//! [`take_turn_first`] is its converse: a step the server holds in more regard (a token
//! check for a client address whose token verified lately, a returning citizen's) waits
//! only behind handshakes past their first step, before new handshakes and other steps.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// One worker thread's turn.
struct Gate {
    line: Mutex<Line>,
}

struct Line {
    /// Turns not held: a turn is held by a handshake that stepped in this round, or that
    /// was handed it and has not stepped yet. One per worker thread's own line; on a
    /// work-stealing runtime, one per worker in the runtime's shared line.
    free: usize,
    /// Handshakes waiting for the turn that have taken a step before, oldest first.
    continuing: VecDeque<Arc<Place>>,
    /// Steps taken first ([`take_turn_first`]), oldest first.
    first: VecDeque<Arc<Place>>,
    /// Handshakes waiting for their first step, oldest first.
    new: VecDeque<Arc<Place>>,
    /// Steps taken last ([`take_turn_last`]), oldest first.
    last: VecDeque<Arc<Place>>,
}

/// Where a step waits in line: see the module's comment.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lane {
    First,
    Usual,
    Last,
}

/// What takes turns, counted apart: TLS handshakes, and the server's own steps.
struct Kind {
    /// In line now, over every worker.
    waiting: AtomicUsize,
    /// Times one found the turn taken and took a place in line.
    waits: AtomicU64,
}

static HANDSHAKES: Kind = Kind { waiting: AtomicUsize::new(0), waits: AtomicU64::new(0) };
static STEPS: Kind = Kind { waiting: AtomicUsize::new(0), waits: AtomicU64::new(0) };

/// TLS handshakes waiting for their worker's turn now, over every worker: a flood of new
/// connections shows as a line that does not empty.
pub fn handshakes_waiting() -> usize {
    HANDSHAKES.waiting.load(Ordering::Relaxed)
}

/// Times a TLS handshake's step waited for its worker's turn since the process started.
pub fn handshake_waits() -> u64 {
    HANDSHAKES.waits.load(Ordering::Relaxed)
}

/// The server's own steps ([`take_turn`]) waiting for their worker's turn now.
pub fn steps_waiting() -> usize {
    STEPS.waiting.load(Ordering::Relaxed)
}

/// Times one of the server's own steps waited for its worker's turn since the process
/// started.
pub fn step_waits() -> u64 {
    STEPS.waits.load(Ordering::Relaxed)
}

/// Waits for the worker's turn for a dear step of the server's own (see the module's
/// comment): await it right before the step, with nothing awaited between, and do the step
/// in the same poll. The turn is handed on after this scheduler round. Outside a runtime,
/// ready at once.
pub async fn take_turn() {
    take_turn_in(Lane::Usual).await
}

/// As [`take_turn`], for a step that waits behind every handshake and every other step in
/// line (see the module's comment): its turn comes in a round no one else in line wants.
pub async fn take_turn_last() {
    take_turn_in(Lane::Last).await
}

/// As [`take_turn`], for a step that waits only behind handshakes past their first step,
/// before new handshakes and every other step (see the module's comment).
pub async fn take_turn_first() {
    take_turn_in(Lane::First).await
}

async fn take_turn_in(lane: Lane) {
    let mut turns = Turns::of(std::future::ready(()), &STEPS);
    turns.lane = lane;
    turns.await
}

/// How long the oldest new handshake may wait in line before the newest are taken first.
/// A step is ~0.15–0.6 ms: a quarter of a second is hundreds of steps behind.
pub(crate) const BEHIND: std::time::Duration = std::time::Duration::from_millis(250);

const WAITING: u8 = 0;
const GRANTED: u8 = 1;
const CANCELLED: u8 = 2;

/// A waiting handshake's place in line.
struct Place {
    state: AtomicU8,
    waker: Mutex<Option<Waker>>,
    /// The gate whose turn this place is handed.
    gate: Arc<Gate>,
    /// When it took its place.
    since: std::time::Instant,
    /// What it counts as.
    kind: &'static Kind,
}

impl Place {
    /// It left the line (handed the turn, or dropped while waiting).
    fn left_line(&self) {
        self.kind.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

thread_local! {
    static GATE: Arc<Gate> = Arc::new(Gate {
        line: Mutex::new(Line::new(1)),
    });
}

/// The line on a work-stealing runtime: one, shared by its workers, with a turn per worker.
/// A handshake waiting in a worker's own line could wait for that worker however busy it
/// is while another had nothing to do (a task in a line is in no run queue to steal); in
/// the shared line, whichever worker's turn comes free next takes it, and the handshake
/// it wakes runs on that worker.
static SHARED: std::sync::OnceLock<Arc<Gate>> = std::sync::OnceLock::new();

/// The line the current thread's handshakes take turns in: the worker's own on a
/// one-thread runtime (Pingora's workers without work stealing), the runtime's shared one
/// on a work-stealing runtime.
fn gate() -> Arc<Gate> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => SHARED
            .get_or_init(|| {
                let workers = h.metrics().num_workers().max(1);
                Arc::new(Gate { line: Mutex::new(Line::new(workers)) })
            })
            .clone(),
        _ => GATE.with(Arc::clone),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Line {
    fn new(free: usize) -> Line {
        Line { free, continuing: VecDeque::new(), first: VecDeque::new(), new: VecDeque::new(), last: VecDeque::new() }
    }

    /// Whose turn it is: a handshake past its first step, else a step taken first, else a
    /// new handshake or a step, else a step taken last.
    fn next(&mut self) -> Option<Arc<Place>> {
        self.continuing
            .pop_front()
            .or_else(|| first_of(&mut self.first))
            .or_else(|| first_of(&mut self.new))
            .or_else(|| first_of(&mut self.last))
    }
}

/// The one in `line` whose turn it is: the oldest, or the newest once the oldest has waited
/// [`BEHIND`].
fn first_of(line: &mut VecDeque<Arc<Place>>) -> Option<Arc<Place>> {
    // Those dropped while waiting (their timeout) leave from the front, oldest first, so a
    // line served newest first does not keep them.
    while line.front().is_some_and(|p| p.state.load(Ordering::Acquire) == CANCELLED) {
        line.pop_front();
    }
    match line.front() {
        Some(oldest) if oldest.since.elapsed() >= BEHIND => line.pop_back(),
        _ => line.pop_front(),
    }
}

impl Gate {
    /// Hands the turn to the handshake next in line, or frees it.
    fn pass_on(&self) {
        let next = {
            let mut line = lock(&self.line);
            loop {
                match line.next() {
                    Some(place) => {
                        if place.state.compare_exchange(WAITING, GRANTED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                            place.left_line();
                            break Some(place);
                        }
                        // Cancelled: its handshake was dropped while waiting.
                    }
                    None => {
                        line.free += 1;
                        break None;
                    }
                }
            }
        };
        if let Some(place) = next {
            if let Some(waker) = lock(&place.waker).take() {
                waker.wake();
            }
        }
    }
}

/// Gives a gate's turn on at the worker's next I/O poll.
struct PassOn(Arc<Gate>);

impl Wake for PassOn {
    fn wake(self: Arc<Self>) {
        self.0.pass_on();
    }
}

/// After this round: tokio wakes deferred wakers once its scheduler has polled for I/O
/// (outside a runtime, `yield_now` wakes at once).
fn pass_on_after_this_round(gate: Arc<Gate>) {
    let waker = Waker::from(Arc::new(PassOn(gate)));
    let mut cx = Context::from_waker(&waker);
    let yielded = std::pin::pin!(tokio::task::yield_now());
    let _ = yielded.poll(&mut cx);
}

/// A handshake future whose polls take the worker's turn (see the module's comment).
pub(crate) struct Turns<F> {
    inner: F,
    place: Option<Arc<Place>>,
    /// It has taken a step.
    stepped: bool,
    /// Where it waits in line ([`take_turn_first`], [`take_turn_last`]).
    lane: Lane,
    kind: &'static Kind,
}

impl<F> Turns<F> {
    pub(crate) fn new(inner: F) -> Self {
        Turns::of(inner, &HANDSHAKES)
    }

    fn of(inner: F, kind: &'static Kind) -> Self {
        Turns { inner, place: None, stepped: false, lane: Lane::Usual, kind }
    }
}

impl<F: Future + Unpin> Future for Turns<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let gate = match this.place.take() {
            Some(place) => {
                if place.state.load(Ordering::Acquire) != GRANTED {
                    // Still in line (woken by its socket meanwhile): keep the waker current.
                    *lock(&place.waker) = Some(cx.waker().clone());
                    // Handed the turn meanwhile, by another thread on a work-stealing
                    // runtime (which woke the waker it found): take it now.
                    if place.state.load(Ordering::Acquire) != GRANTED {
                        this.place = Some(place);
                        return Poll::Pending;
                    }
                }
                // Handed the turn of the gate it waited at.
                place.gate.clone()
            }
            None => {
                let gate = gate();
                let mut line = lock(&gate.line);
                if line.free == 0 {
                    let place = Arc::new(Place {
                        state: AtomicU8::new(WAITING),
                        waker: Mutex::new(Some(cx.waker().clone())),
                        gate: gate.clone(),
                        since: std::time::Instant::now(),
                        kind: this.kind,
                    });
                    let lane = match (this.lane, this.stepped) {
                        (Lane::First, _) => &mut line.first,
                        (Lane::Last, _) => &mut line.last,
                        (Lane::Usual, true) => &mut line.continuing,
                        (Lane::Usual, false) => &mut line.new,
                    };
                    lane.push_back(place.clone());
                    this.kind.waiting.fetch_add(1, Ordering::Relaxed);
                    this.kind.waits.fetch_add(1, Ordering::Relaxed);
                    drop(line);
                    this.place = Some(place);
                    return Poll::Pending;
                }
                line.free -= 1;
                drop(line);
                gate
            }
        };
        let out = Pin::new(&mut this.inner).poll(cx);
        this.stepped = true;
        pass_on_after_this_round(gate);
        out
    }
}

impl<F> Drop for Turns<F> {
    fn drop(&mut self) {
        if let Some(place) = self.place.take() {
            if place.state.compare_exchange(WAITING, CANCELLED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                place.left_line();
            } else {
                // Handed the turn but dropped before its step: give it on.
                place.gate.pass_on();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Log = Arc<Mutex<Vec<String>>>;

    /// A stand-in for a handshake: `left` polls, each logged, each woken again at once (as
    /// a handshake whose client answers at once).
    struct Steps {
        name: &'static str,
        left: usize,
        log: Log,
    }

    impl Future for Steps {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            lock(&self.log).push(self.name.to_string());
            self.left -= 1;
            if self.left == 0 {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// On a worker's runtime (one thread, as Pingora's workers without work stealing):
    /// `handshakes` each of `steps` polls, wrapped in [`Turns`] or not, beside a client's
    /// requests: a task woken again after each of its polls, as a busy keep-alive
    /// connection is. The order in which they ran.
    fn run(handshakes: &[&'static str], steps: usize, turns: bool, abort: &[usize]) -> Vec<String> {
        let log: Log = Arc::default();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let abort = abort.to_vec();
        let handshakes = handshakes.to_vec();
        let task_log = log.clone();
        rt.block_on(async move {
            let log = task_log;
            let handles = Arc::new(Mutex::new(Vec::new()));
            // Spawned first, so that after the first round it runs before the handshake
            // the turn was handed to gets its step.
            let to_abort = handles.clone();
            let aborter = tokio::spawn(async move {
                tokio::task::yield_now().await;
                for &i in &abort {
                    let handles = lock(&to_abort);
                    let h: &Vec<tokio::task::JoinHandle<()>> = &handles;
                    h[i].abort();
                }
            });
            for name in handshakes {
                let steps = Steps { name, left: steps, log: log.clone() };
                let handle = if turns { tokio::spawn(Turns::new(steps)) } else { tokio::spawn(steps) };
                lock(&handles).push(handle);
            }
            let req_log = log.clone();
            let requests = tokio::spawn(async move {
                for _ in 0..40 {
                    lock(&req_log).push("r".to_string());
                    tokio::task::yield_now().await;
                }
            });
            let _ = aborter.await;
            let _ = requests.await;
            let rest = std::mem::take(&mut *lock(&handles));
            for h in rest {
                let _ = h.await;
            }
        });
        let out = lock(&log).clone();
        out
    }

    /// The most handshake steps that ran between two turns of the client's requests.
    fn longest_wait(log: &[String]) -> usize {
        let last = log.iter().rposition(|s| s == "r").expect("the requests ran");
        log[..last].split(|s| s == "r").skip(1).map(|between| between.len()).max().unwrap_or(0)
    }

    const SIX: [&str; 6] = ["h1", "h2", "h3", "h4", "h5", "h6"];

    #[test]
    fn a_busy_clients_requests_wait_for_at_most_two_handshake_steps() {
        // One step runs per scheduler round; the requests run once a round, before or
        // after it: at most two between two of their turns, however many are ready.
        let log = run(&SIX, 3, true, &[]);
        assert_eq!(
            log.iter().filter(|s| s.starts_with('h')).count(),
            18,
            "every handshake finished its three steps: {log:?}"
        );
        assert!(longest_wait(&log) <= 2, "{log:?}");
    }

    #[test]
    fn without_turns_the_requests_wait_for_every_ready_handshake() {
        // The check above can fail: without the wrapper each round runs all six steps (and
        // here more, as these handshakes are ready again at once).
        let log = run(&SIX, 3, false, &[]);
        assert!(longest_wait(&log) >= 6, "{log:?}");
    }

    #[test]
    fn handshakes_dropped_in_line_or_handed_the_turn_do_not_stall_the_others() {
        let log = run(&["h1", "h2", "h3", "h4", "h5"], 2, true, &[1, 3]);
        for name in ["h1", "h3", "h5"] {
            assert_eq!(log.iter().filter(|s| *s == name).count(), 2, "{name} finished: {log:?}");
        }
    }

    #[test]
    fn a_turn_handed_to_a_dropped_handshake_goes_to_the_next_in_line() {
        let log: Log = Arc::default();
        let gate = GATE.with(Arc::clone);
        lock(&gate.line).free = 0; // another handshake has this round's step
        let mut cx = Context::from_waker(Waker::noop());
        let mut b = Turns::new(Steps { name: "b", left: 1, log: log.clone() });
        let mut c = Turns::new(Steps { name: "c", left: 1, log: log.clone() });
        assert!(Pin::new(&mut b).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut c).poll(&mut cx).is_pending());
        let c_place = c.place.clone().expect("c waits in line");
        gate.pass_on(); // the round ends: b is handed the turn
        assert_eq!(c_place.state.load(Ordering::Acquire), WAITING);
        drop(b); // … and its connection closes before its step
        assert_eq!(c_place.state.load(Ordering::Acquire), GRANTED);
        assert!(Pin::new(&mut c).poll(&mut cx).is_ready());
        assert_eq!(*lock(&log), ["c"]);
        // c's step handed the turn on (outside a runtime, at once): nobody waits, it is free.
        assert_eq!(lock(&gate.line).free, 1);
    }

    #[test]
    fn a_handshake_past_its_first_step_goes_before_new_ones() {
        let log: Log = Arc::default();
        let gate = GATE.with(Arc::clone);
        let mut cx = Context::from_waker(Waker::noop());
        lock(&gate.line).free = 0; // another handshake has this round's step
        let mut new1 = Turns::new(Steps { name: "new1", left: 1, log: log.clone() });
        let mut new2 = Turns::new(Steps { name: "new2", left: 1, log: log.clone() });
        assert!(Pin::new(&mut new1).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut new2).poll(&mut cx).is_pending());
        // One that took its first step in an earlier round and waits for its second.
        let mut old = Turns::new(Steps { name: "old", left: 1, log: log.clone() });
        old.stepped = true;
        assert!(Pin::new(&mut old).poll(&mut cx).is_pending());
        let places = [&new1, &new2, &old].map(|t| t.place.clone().expect("in line"));
        gate.pass_on();
        let granted = places.iter().map(|p| p.state.load(Ordering::Acquire) == GRANTED);
        assert_eq!(granted.collect::<Vec<_>>(), [false, false, true], "the one past its first step first");
        assert!(Pin::new(&mut old).poll(&mut cx).is_ready());
        // Outside a runtime its step hands the turn on at once: then the oldest new one.
        assert_eq!(places[0].state.load(Ordering::Acquire), GRANTED);
        assert_eq!(places[1].state.load(Ordering::Acquire), WAITING);
        drop((new1, new2));
        assert_eq!(lock(&gate.line).free, 1, "nobody left in line: the turn is free");
    }

    #[test]
    fn new_handshakes_go_newest_first_once_the_oldest_has_waited_too_long() {
        let gate = Arc::new(Gate { line: Mutex::new(Line::new(0)) });
        let place = |waited: std::time::Duration| {
            Arc::new(Place {
                state: AtomicU8::new(WAITING),
                waker: Mutex::new(None),
                gate: gate.clone(),
                since: std::time::Instant::now().checked_sub(waited).expect("a past instant"),
                kind: &HANDSHAKES,
            })
        };
        let granted = |places: &[Arc<Place>]| {
            places.iter().map(|p| p.state.load(Ordering::Acquire) == GRANTED).collect::<Vec<_>>()
        };
        let ms = std::time::Duration::from_millis;
        // In line as `poll` puts them (the count of those waiting included).
        let enqueue = |places: &[Arc<Place>]| {
            lock(&gate.line).new.extend(places.iter().cloned());
            HANDSHAKES.waiting.fetch_add(places.len(), Ordering::Relaxed);
        };
        // Not behind: oldest first.
        let places = [place(ms(100)), place(ms(50)), place(ms(0))];
        enqueue(&places);
        gate.pass_on();
        assert_eq!(granted(&places), [true, false, false]);
        lock(&gate.line).new.clear();
        HANDSHAKES.waiting.fetch_sub(2, Ordering::Relaxed);
        // Behind: the newest first; one dropped meanwhile at the front is let go.
        let places = [place(BEHIND + ms(100)), place(BEHIND), place(ms(10)), place(ms(0))];
        enqueue(&places);
        places[0].state.store(CANCELLED, Ordering::Release);
        places[0].left_line();
        gate.pass_on();
        assert_eq!(granted(&places), [false, false, false, true]);
        assert_eq!(lock(&gate.line).new.len(), 2, "the dropped one left the line");
        gate.pass_on();
        assert_eq!(granted(&places), [false, false, true, true]);
        lock(&gate.line).new.clear();
        places[1].left_line();
    }

    #[test]
    fn the_servers_own_steps_take_the_same_turns_as_the_handshakes() {
        // Three handshakes of three steps and three requests checking three tokens each
        // (a turn taken before each check), beside a busy client's requests on a one-thread
        // runtime: at most two dear steps of either kind between two of the client's turns.
        let log: Log = Arc::default();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let waits_before = step_waits();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for name in ["h1", "h2", "h3"] {
                tasks.push(tokio::spawn(Turns::new(Steps { name, left: 3, log: log.clone() })));
            }
            for name in ["c1", "c2", "c3"] {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    for _ in 0..3 {
                        take_turn().await;
                        lock(&log).push(name.to_string());
                        tokio::task::yield_now().await;
                    }
                }));
            }
            let req_log = log.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..40 {
                    lock(&req_log).push("r".to_string());
                    tokio::task::yield_now().await;
                }
            }));
            for t in tasks {
                t.await.expect("task");
            }
        });
        let log = lock(&log).clone();
        assert_eq!(log.iter().filter(|s| s.starts_with('c')).count(), 9, "every check ran: {log:?}");
        assert_eq!(log.iter().filter(|s| s.starts_with('h')).count(), 9, "every handshake step ran: {log:?}");
        assert!(longest_wait(&log) <= 2, "{log:?}");
        assert!(step_waits() > waits_before, "the checks waited in line and were counted");
        assert_eq!(free_turns(), 1, "nobody left in this worker's line: the turn is free");
    }

    #[test]
    fn a_step_taken_last_waits_behind_new_handshakes_and_other_steps() {
        let log: Log = Arc::default();
        let gate = GATE.with(Arc::clone);
        let mut cx = Context::from_waker(Waker::noop());
        lock(&gate.line).free = 0; // another has this round's step
        let mut last = Turns::of(Steps { name: "last", left: 1, log: log.clone() }, &STEPS);
        last.lane = Lane::Last;
        assert!(Pin::new(&mut last).poll(&mut cx).is_pending(), "in line first");
        let mut new = Turns::new(Steps { name: "new", left: 1, log: log.clone() });
        assert!(Pin::new(&mut new).poll(&mut cx).is_pending());
        let (last_place, new_place) = (last.place.clone().expect("in line"), new.place.clone().expect("in line"));
        gate.pass_on();
        assert_eq!(new_place.state.load(Ordering::Acquire), GRANTED, "the handshake in line after it goes first");
        assert_eq!(last_place.state.load(Ordering::Acquire), WAITING);
        assert!(Pin::new(&mut new).poll(&mut cx).is_ready());
        // Outside a runtime its step hands the turn on at once: nobody else waits.
        assert_eq!(last_place.state.load(Ordering::Acquire), GRANTED);
        assert!(Pin::new(&mut last).poll(&mut cx).is_ready());
        assert_eq!(*lock(&log), ["new", "last"]);
        assert_eq!(lock(&gate.line).free, 1, "nobody left in line: the turn is free");
    }

    /// The turns free in this thread's line: 1 once nobody waits in it. (`steps_waiting` counts
    /// every thread's, and the tests run on threads of their own at once.)
    fn free_turns() -> usize {
        lock(&GATE.with(Arc::clone).line).free
    }

    #[test]
    fn a_flood_of_steps_taken_last_delays_no_other_step_on_a_worker() {
        // Six checks taken last arrive first, then two checks taken as usual: after the
        // step running when they arrive, the two go next, then the rest of the six.
        let log: Log = Arc::default();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let mut tasks = Vec::new();
            for name in ["l1", "l2", "l3", "l4", "l5", "l6"] {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    take_turn_last().await;
                    lock(&log).push(name.to_string());
                }));
            }
            for name in ["c1", "c2"] {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    take_turn().await;
                    lock(&log).push(name.to_string());
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
        });
        assert_eq!(*lock(&log), ["l1", "c1", "c2", "l2", "l3", "l4", "l5", "l6"]);
        assert_eq!(free_turns(), 1, "nobody left in this worker's line: the turn is free");
    }

    #[test]
    fn a_step_taken_first_goes_before_new_handshakes_and_other_steps() {
        // Six new handshakes and two usual steps wait; then a step taken first arrives: it
        // goes once the step running when it arrived is done, before all of them.
        let log: Log = Arc::default();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let mut tasks = Vec::new();
            for name in ["h1", "h2", "h3", "h4", "h5", "h6"] {
                tasks.push(tokio::spawn(Turns::new(Steps { name, left: 1, log: log.clone() })));
            }
            for (name, first) in [("c1", false), ("c2", false), ("f1", true)] {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    if first {
                        take_turn_first().await;
                    } else {
                        take_turn().await;
                    }
                    lock(&log).push(name.to_string());
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
        });
        assert_eq!(*lock(&log), ["h1", "f1", "h2", "h3", "h4", "h5", "h6", "c1", "c2"]);
        assert_eq!(free_turns(), 1, "nobody left in this worker's line: the turn is free");
    }

    #[test]
    fn on_a_work_stealing_runtime_the_workers_share_one_line_with_a_turn_each() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let log: Log = Arc::default();
        let names = ["h1", "h2", "h3", "h4", "h5", "h6", "h7", "h8"];
        rt.block_on(async {
            let handles: Vec<_> =
                names.iter().map(|&name| tokio::spawn(Turns::new(Steps { name, left: 3, log: log.clone() }))).collect();
            for h in handles {
                h.await.expect("handshake");
            }
            // The last steps' turns are handed back when their workers next look for I/O.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        });
        drop(rt);
        assert_eq!(lock(&log).len(), 24, "every step ran: {:?}", lock(&log));
        let shared = SHARED.get().expect("the shared line was used");
        let line = lock(&shared.line);
        assert_eq!(
            (line.free, line.continuing.len(), line.first.len(), line.new.len(), line.last.len()),
            (2, 0, 0, 0, 0),
            "both turns free, nobody left"
        );
    }

    #[test]
    fn outside_a_runtime_the_turn_is_given_back_at_once() {
        let log: Log = Arc::default();
        let mut a = Turns::new(Steps { name: "a", left: 2, log: log.clone() });
        let mut b = Turns::new(Steps { name: "b", left: 2, log: log.clone() });
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut b).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut a).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut b).poll(&mut cx).is_ready());
        assert_eq!(*lock(&log), ["a", "b", "a", "b"]);
    }
}
