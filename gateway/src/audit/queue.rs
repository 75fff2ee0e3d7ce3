//! The records' way from the request threads to the writers: chunks of [`CHUNK`] records
//! under one lock. A push appends to the chunk being filled; a full chunk joins the list
//! the writers take from, and the next is an emptied one, the last the writers gave back.
//!
//! Why not a ring: a ring of slots as deep as the sink's bound (65,536 records, ~15 MB)
//! writes each record into the slot used 65,536 records before, never in any cache; that
//! one load was about half the CPU of a request's logging step. Chunks reused last in,
//! first out are written where the writers have just read, so a push writes into memory in
//! the cache. The bound itself is the sink's count ([`super::QUEUE_CAPACITY`]), not the
//! queue's.
//!
//! The lock is held for one push, or by a writer for a few moves of whole chunks (tens of
//! nanoseconds each, a few times per batch it takes). A writer preempted inside it, at its
//! low priority, makes a request thread that pushes meanwhile wait until the writer runs
//! again: with nothing else runnable on the core that is two context switches, and it needs
//! a request thread woken within those nanoseconds of a writer's turn.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use super::Queued;

/// Records per chunk: a list operation and a lock's worth of bookkeeping once per this
/// many records, and little held back at low rates (a writer that finds no full chunk
/// takes the one being filled).
pub(super) const CHUNK: usize = 64;
/// Emptied chunks kept for reuse, at most: the ~8,000 records a saturated core lets wait
/// before the rescue writer takes them (~1.9 MB). Beyond that a chunk goes back to the
/// allocator: a backlog from a long stall is not kept as memory.
const SPARE_MOST: usize = 128;

#[derive(Default)]
struct Inner {
    filling: Vec<Queued>,
    full: VecDeque<Vec<Queued>>,
    spare: Vec<Vec<Queued>>,
}

impl Inner {
    fn spare_chunk(&mut self) -> Vec<Queued> {
        self.spare.pop().unwrap_or_else(|| Vec::with_capacity(CHUNK))
    }
}

pub(super) struct Queue {
    inner: Mutex<Inner>,
}

/// The writers' side: the chunks taken from the queue and not yet emptied, oldest first.
#[derive(Default)]
pub(super) struct Held {
    chunks: VecDeque<Vec<Queued>>,
    emptied: Vec<Vec<Queued>>,
}

impl Queue {
    pub(super) fn new() -> Queue {
        Queue { inner: Mutex::new(Inner { filling: Vec::with_capacity(CHUNK), ..Inner::default() }) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock (pushes into reserved room, swaps); a
        // poisoned lock still holds whole chunks.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a record. The caller has counted it against the sink's bound.
    pub(super) fn push(&self, record: Queued) {
        let mut q = self.lock();
        q.filling.push(record);
        if q.filling.len() >= CHUNK {
            let next = q.spare_chunk();
            let full = std::mem::replace(&mut q.filling, next);
            q.full.push_back(full);
        }
    }

    /// Moves records, oldest first, into `batch` until it holds `most` or none are left.
    /// Each record is [`Queued::formatted`] on its way. Returns whether `batch` is full.
    pub(super) fn take(&self, held: &mut Held, batch: &mut Vec<Queued>, most: usize) -> bool {
        while batch.len() < most {
            if held.chunks.is_empty() {
                let mut q = self.lock();
                if !q.full.is_empty() {
                    std::mem::swap(&mut q.full, &mut held.chunks);
                } else if !q.filling.is_empty() {
                    let next = q.spare_chunk();
                    let partial = std::mem::replace(&mut q.filling, next);
                    held.chunks.push_back(partial);
                } else {
                    break;
                }
            }
            let Some(chunk) = held.chunks.front_mut() else { break };
            let room = most - batch.len();
            if chunk.len() > room {
                batch.extend(chunk.drain(..room).map(Queued::formatted));
                break;
            }
            batch.extend(chunk.drain(..).map(Queued::formatted));
            if let Some(emptied) = held.chunks.pop_front() {
                held.emptied.push(emptied);
            }
        }
        if !held.emptied.is_empty() {
            let mut q = self.lock();
            // Last in, first out: the chunk emptied last is the next to be filled.
            for chunk in held.emptied.drain(..) {
                if q.spare.len() < SPARE_MOST {
                    q.spare.push(chunk);
                }
            }
        }
        batch.len() >= most
    }

    /// Emptied chunks kept for reuse (tests).
    #[cfg(test)]
    pub(super) fn spare_chunks(&self) -> usize {
        self.lock().spare.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::queued;
    use super::*;
    use edgegate_filters::audit::AsFields;

    fn ids(batch: &[Queued]) -> Vec<String> {
        batch.iter().map(|q| q.fields().request_id.to_string()).collect()
    }

    fn expected(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|n| format!("req-{n}")).collect()
    }

    // Whatever the chunk boundaries and the batch sizes, the writers get every record once,
    // in the order pushed, formatted; the chunk being filled is taken too, so a record is
    // never held back waiting for 63 more.
    #[test]
    fn records_come_out_once_in_order_across_chunks_and_the_one_being_filled() {
        let q = Queue::new();
        let mut held = Held::default();
        let n = 3 * CHUNK + 5;
        for i in 0..n {
            q.push(queued(i));
        }
        let mut out = Vec::new();
        let mut batch = Vec::new();
        for most in [1, CHUNK - 1, CHUNK + 2, 7, 1000] {
            batch.clear();
            let full = q.take(&mut held, &mut batch, most);
            assert_eq!(full, batch.len() == most, "full only when the batch reached {most}");
            assert!(batch.iter().all(|r| r.formatted), "taken records are formatted");
            out.extend(ids(&batch));
        }
        assert_eq!(out, expected(0..n));
        batch.clear();
        assert!(!q.take(&mut held, &mut batch, 1000));
        assert!(batch.is_empty(), "nothing is taken twice");

        // One record alone reaches the writers; so does one pushed after a partial take.
        q.push(queued(n));
        q.take(&mut held, &mut batch, 1000);
        assert_eq!(ids(&batch), expected(n..n + 1));
    }

    // Emptied chunks are kept for reuse, up to SPARE_MOST: a long stall's backlog does not
    // stay as memory once written.
    #[test]
    fn emptied_chunks_are_reused_and_at_most_spare_most_are_kept() {
        let q = Queue::new();
        let mut held = Held::default();
        let mut batch = Vec::new();
        for i in 0..2 * CHUNK {
            q.push(queued(i));
        }
        q.take(&mut held, &mut batch, usize::MAX);
        assert_eq!(batch.len(), 2 * CHUNK);
        // Two full chunks emptied and kept; the empty one being filled is left in place.
        assert_eq!(q.spare_chunks(), 2);
        for i in 0..CHUNK {
            q.push(queued(i));
        }
        assert_eq!(q.spare_chunks(), 1, "a filled chunk is replaced by an emptied one");

        let backlog = (SPARE_MOST + 40) * CHUNK;
        for i in 0..backlog {
            q.push(queued(i));
        }
        batch.clear();
        q.take(&mut held, &mut batch, usize::MAX);
        assert_eq!(batch.len(), backlog + CHUNK);
        assert_eq!(q.spare_chunks(), SPARE_MOST);
    }
}
