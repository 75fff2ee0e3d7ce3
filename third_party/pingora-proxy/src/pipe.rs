// edgegate patch 23: the task pipes between the two halves of an HTTP/1 proxied request.
//
// `proxy_1to1` connects its downstream and upstream halves with two bounded pipes per
// request. They were `tokio::sync::mpsc` channels, built for many senders on many threads:
// each made a cache-padded, 128-byte-aligned shared block (built on the stack and copied into
// its `Arc`) and a 32-slot block list, and every send went through a semaphore. Here there is
// one sender and one receiver, both polled by the request's own task, so a mutex-guarded
// queue with one waker per side does the same work: the same capacity, the same
// reservation (a `Permit` holds a slot until it sends or drops), the same closing rules
// (`recv()` drains what was sent, then `None` once the sender is gone; `is_closed()` and
// failed sends once the receiver is gone).
//
// edgegate patch 59: a pipe lives in the future of the request that uses it and its halves
// borrow it (`Pipe::split`); each pipe was an `Arc`, allocated and freed per request.

use std::fmt;
use std::future::poll_fn;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// The most tasks a pipe holds: its queue is kept inline, in the pipe's one allocation.
pub(crate) const PIPE_SLOTS: usize = 4;

/// edgegate patch 33: a fixed ring of `PIPE_SLOTS` tasks inside the pipe's shared block.
/// It was a `VecDeque`, allocated (and grown from empty) on each request's first send: two
/// allocations per request, for two pipes that never hold more than four tasks.
struct Ring<T> {
    slots: [Option<T>; PIPE_SLOTS],
    head: usize,
    len: usize,
}

impl<T> Ring<T> {
    fn new() -> Self {
        Ring {
            slots: [const { None }; PIPE_SLOTS],
            head: 0,
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Callers keep `len() < PIPE_SLOTS` (the pipe's capacity is at most that).
    fn push_back(&mut self, value: T) {
        debug_assert!(self.len < PIPE_SLOTS);
        self.slots[(self.head + self.len) % PIPE_SLOTS] = Some(value);
        self.len += 1;
    }

    fn pop_front(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let value = self.slots[self.head].take();
        self.head = (self.head + 1) % PIPE_SLOTS;
        self.len -= 1;
        value
    }
}

struct State<T> {
    queue: Ring<T>,
    /// Slots held by live permits.
    reserved: usize,
    capacity: usize,
    sender_alive: bool,
    receiver_alive: bool,
    sender_waker: Option<Waker>,
    receiver_waker: Option<Waker>,
}

fn lock<T>(shared: &Mutex<State<T>>) -> MutexGuard<'_, State<T>> {
    // Nothing panics while the lock is held, but a poisoned pipe is still a consistent one.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// A pipe of `capacity` tasks: at least one, at most `PIPE_SLOTS`. Its two halves borrow it
/// ([`Pipe::split`]).
pub(crate) struct Pipe<T>(Mutex<State<T>>);

impl<T> Pipe<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Pipe(Mutex::new(State {
            queue: Ring::new(),
            reserved: 0,
            capacity: capacity.clamp(1, PIPE_SLOTS),
            sender_alive: true,
            receiver_alive: true,
            sender_waker: None,
            receiver_waker: None,
        }))
    }

    /// The pipe's sending and receiving halves. A pipe is split once: when either half is
    /// dropped the pipe is closed for good.
    pub(crate) fn split(&mut self) -> (Sender<'_, T>, Receiver<'_, T>) {
        let shared = &self.0;
        (Sender { shared }, Receiver { shared })
    }
}

/// Why a send or a reservation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PipeError {
    /// Every slot is taken (only from `try_reserve()`).
    Full,
    /// The receiving half is gone.
    Closed,
}

impl fmt::Display for PipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PipeError::Full => "task pipe is full",
            PipeError::Closed => "task pipe is closed",
        })
    }
}

impl std::error::Error for PipeError {}

pub(crate) struct Sender<'a, T> {
    shared: &'a Mutex<State<T>>,
}

impl<'a, T> Sender<'a, T> {
    fn poll_reserve(&self, cx: Option<&Context<'_>>) -> Poll<Result<(), PipeError>> {
        let mut state = lock(self.shared);
        if !state.receiver_alive {
            return Poll::Ready(Err(PipeError::Closed));
        }
        if state.queue.len() + state.reserved < state.capacity {
            state.reserved += 1;
            return Poll::Ready(Ok(()));
        }
        match cx {
            Some(cx) => {
                register(&mut state.sender_waker, cx);
                Poll::Pending
            }
            None => Poll::Ready(Err(PipeError::Full)),
        }
    }

    /// Waits for a free slot and holds it.
    pub(crate) async fn reserve(&self) -> Result<Permit<'_, 'a, T>, PipeError> {
        poll_fn(|cx| self.poll_reserve(Some(cx))).await?;
        Ok(Permit { sender: self })
    }

    /// Holds a free slot if there is one now.
    pub(crate) fn try_reserve(&self) -> Result<Permit<'_, 'a, T>, PipeError> {
        match self.poll_reserve(None) {
            Poll::Ready(Ok(())) => Ok(Permit { sender: self }),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(PipeError::Full),
        }
    }

    /// Waits for a free slot and sends `value` in it.
    pub(crate) async fn send(&self, value: T) -> Result<(), PipeError> {
        self.reserve().await?.send(value);
        Ok(())
    }

    /// Whether the receiving half is gone.
    pub(crate) fn is_closed(&self) -> bool {
        !lock(self.shared).receiver_alive
    }
}

impl<T> Drop for Sender<'_, T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = lock(self.shared);
            state.sender_alive = false;
            state.receiver_waker.take()
        };
        wake(waker);
    }
}

/// A slot held for one send.
pub(crate) struct Permit<'p, 'a, T> {
    sender: &'p Sender<'a, T>,
}

impl<T> Permit<'_, '_, T> {
    /// Sends `value` in the held slot (dropped if the receiving half is gone meanwhile).
    pub(crate) fn send(self, value: T) {
        let sender = self.sender;
        // The slot is released below, not by `Drop`.
        std::mem::forget(self);
        let (rejected, waker) = {
            let mut state = lock(sender.shared);
            state.reserved -= 1;
            if state.receiver_alive {
                state.queue.push_back(value);
                (None, state.receiver_waker.take())
            } else {
                (Some(value), None)
            }
        };
        drop(rejected);
        wake(waker);
    }
}

impl<T> Drop for Permit<'_, '_, T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = lock(self.sender.shared);
            state.reserved -= 1;
            state.sender_waker.take()
        };
        wake(waker);
    }
}

impl<T> fmt::Debug for Permit<'_, '_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Permit")
    }
}

pub(crate) struct Receiver<'a, T> {
    shared: &'a Mutex<State<T>>,
}

impl<T> Receiver<'_, T> {
    fn poll_recv(&mut self, cx: &Context<'_>) -> Poll<Option<T>> {
        let (value, waker) = {
            let mut state = lock(self.shared);
            match state.queue.pop_front() {
                Some(value) => (value, state.sender_waker.take()),
                None if !state.sender_alive => return Poll::Ready(None),
                None => {
                    register(&mut state.receiver_waker, cx);
                    return Poll::Pending;
                }
            }
        };
        wake(waker);
        Poll::Ready(Some(value))
    }

    /// The next task; `None` once the sending half is gone and every task sent was received.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl<T> Drop for Receiver<'_, T> {
    fn drop(&mut self) {
        let (queued, waker) = {
            let mut state = lock(self.shared);
            state.receiver_alive = false;
            (std::mem::replace(&mut state.queue, Ring::new()), state.sender_waker.take())
        };
        drop(queued);
        wake(waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::sync::Arc;

    /// A pipe that lives as long as the test process, so that its halves can move into
    /// spawned tasks.
    fn channel<T: Send>(capacity: usize) -> (Sender<'static, T>, Receiver<'static, T>) {
        Box::leak(Box::new(Pipe::new(capacity))).split()
    }

    #[tokio::test]
    async fn delivers_in_order_then_none_after_the_sender_goes() {
        let (tx, mut rx) = channel::<u32>(4);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn capacity_counts_held_permits_and_a_dropped_permit_frees_its_slot() {
        let (tx, mut rx) = channel::<u32>(2);
        let a = tx.try_reserve().unwrap();
        let b = tx.try_reserve().unwrap();
        assert_eq!(tx.try_reserve().unwrap_err(), PipeError::Full);
        assert!(tx.reserve().now_or_never().is_none(), "no slot: reserve waits");
        drop(a);
        let c = tx.try_reserve().unwrap();
        b.send(7);
        c.send(8);
        assert_eq!(tx.try_reserve().unwrap_err(), PipeError::Full);
        assert_eq!(rx.recv().await, Some(7));
        tx.try_reserve().unwrap().send(9);
        assert_eq!(rx.recv().await, Some(8));
        assert_eq!(rx.recv().await, Some(9));
        assert!(rx.recv().now_or_never().is_none(), "empty and sender alive: recv waits");
    }

    // edgegate patch 33: the inline ring keeps order as it wraps around, a capacity above
    // its slots is clamped to them, and tasks left in the pipe are dropped with it.
    #[tokio::test]
    async fn the_ring_keeps_order_across_wraps_and_drops_what_is_left() {
        let (tx, mut rx) = channel::<u32>(PIPE_SLOTS);
        let mut next_sent = 0;
        let mut next_received = 0;
        for round in 0..10 {
            // Fill a varying part of the ring, then take all but one back.
            for _ in 0..(round % PIPE_SLOTS) + 1 {
                if tx.try_reserve().map(|p| p.send(next_sent)).is_ok() {
                    next_sent += 1;
                }
            }
            while next_sent - next_received > 1 {
                assert_eq!(rx.recv().await, Some(next_received));
                next_received += 1;
            }
        }
        assert!(next_sent > 2 * PIPE_SLOTS as u32, "the ring wrapped around");

        let (tx, _rx) = channel::<u32>(PIPE_SLOTS + 3);
        let held: Vec<_> = (0..PIPE_SLOTS).map(|_| tx.try_reserve().unwrap()).collect();
        assert_eq!(tx.try_reserve().unwrap_err(), PipeError::Full);
        drop(held);

        let task = Arc::new(());
        let (tx, rx) = channel::<Arc<()>>(PIPE_SLOTS);
        for _ in 0..3 {
            tx.send(task.clone()).await.unwrap();
        }
        assert_eq!(Arc::strong_count(&task), 4);
        drop(rx);
        assert_eq!(Arc::strong_count(&task), 1, "the queued tasks were dropped with the receiver");
        drop(tx);
    }

    #[tokio::test]
    async fn a_waiting_sender_wakes_when_the_receiver_takes_a_task() {
        let (tx, mut rx) = channel::<u32>(1);
        tx.send(1).await.unwrap();
        let sender = tokio::spawn(async move {
            tx.send(2).await.unwrap();
            tx
        });
        tokio::task::yield_now().await;
        assert_eq!(rx.recv().await, Some(1));
        let tx = sender.await.unwrap();
        assert_eq!(rx.recv().await, Some(2));
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_on_send_and_on_sender_drop() {
        let (tx, mut rx) = channel::<u32>(4);
        let receiver = tokio::spawn(async move {
            let first = rx.recv().await;
            let second = rx.recv().await;
            (first, second)
        });
        tokio::task::yield_now().await;
        tx.send(5).await.unwrap();
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(receiver.await.unwrap(), (Some(5), None));
    }

    #[tokio::test]
    async fn sends_fail_and_waiting_senders_wake_once_the_receiver_is_gone() {
        let (tx, rx) = channel::<u32>(1);
        tx.send(1).await.unwrap();
        let permit_wait = tokio::spawn(async move {
            let r = tx.reserve().await.map(|_| ());
            (r, tx)
        });
        tokio::task::yield_now().await;
        drop(rx);
        let (r, tx) = permit_wait.await.unwrap();
        assert_eq!(r.unwrap_err(), PipeError::Closed);
        assert!(tx.is_closed());
        assert_eq!(tx.send(2).await.unwrap_err(), PipeError::Closed);
        assert_eq!(tx.try_reserve().unwrap_err(), PipeError::Closed);
    }

    #[tokio::test]
    async fn a_permit_sending_after_the_receiver_left_drops_the_task() {
        let (tx, rx) = channel::<Arc<()>>(1);
        let task = Arc::new(());
        let permit = tx.try_reserve().unwrap();
        drop(rx);
        permit.send(task.clone());
        assert_eq!(Arc::strong_count(&task), 1, "the task was dropped, not kept");
    }
}
