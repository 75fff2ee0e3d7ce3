//! edgegate patch 72: a small per-thread cache of freed blocks between 1 KiB and 16 KiB.
//!
//! mimalloc's allocation fast path (a pop from the free list of a page kept per size class)
//! covers sizes up to `MI_SMALL_SIZE_MAX`, 1 KiB on 64-bit. A larger request always goes
//! through `_mi_malloc_generic`: the page queue of its bin is searched, the page's freed
//! blocks are collected into its free list, and when the block is freed again the page's
//! last used block often goes with it, so the page is "retired" and taken back on the next
//! allocation. ~150 instructions a pair, where a small block costs ~30. A server that
//! allocates a few blocks of the same medium sizes per request and frees them at its end
//! (a request's state machine, read and write buffers) pays that on each.
//!
//! Each thread keeps such blocks by exact size, in up to [`LINES`] stacks of one size each,
//! threaded through the blocks themselves: a freed block goes on its size's stack, and an
//! allocation of that size takes the block freed last (edgegate patch 83 made it last in,
//! first out and deeper: one slot per size handed a request's buffers out in turn, cold,
//! when tens of requests were in flight). A stack holds at most [`DEPTH`] blocks and a
//! thread [`BYTES`] in all; beyond that a block is freed. A size with no stack takes an
//! empty one, else the stacks are emptied and taken in turn, so that a size freed often
//! finds a place even after rarer ones took every stack. A block is a mimalloc block
//! whichever thread allocated it (mimalloc frees a block from any thread), so a block freed
//! on another thread than its own is kept and reused there. A thread's blocks are freed
//! when it exits. During and after that exit (another thread-local's destructor allocating
//! or freeing), the cache is not there and mimalloc is called directly.

extern crate std;

use core::cell::Cell;
use core::ffi::c_void;
use core::ptr::null_mut;

use crate::stack::Stack;

/// The smallest size cached: mimalloc's own fast path covers the sizes below.
pub(crate) const MIN: usize = 1024 + 1;
/// The largest size cached.
pub(crate) const MAX: usize = 16 * 1024;
/// Sizes a thread keeps blocks of at once.
const LINES: usize = 8;
/// Blocks kept of one size, at most.
const DEPTH: u32 = 64;
/// Bytes a thread keeps, at most.
const BYTES: usize = 2 * 1024 * 1024;

struct Cache {
    /// The size of each stack's blocks; 0 for a stack no size has taken.
    sizes: [Cell<usize>; LINES],
    /// Each size's kept blocks.
    stacks: [Stack; LINES],
    bytes: Cell<usize>,
    /// The stack taken next when every stack has a size.
    next: Cell<usize>,
}

impl Cache {
    /// Frees every block of stack `i`.
    fn empty(&self, i: usize) {
        let freed = self.stacks[i].free_all();
        self.bytes.set(self.bytes.get() - self.sizes[i].get() * freed as usize);
        #[cfg(test)]
        FREED_AT_EXIT.fetch_add(freed as usize, core::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        for i in 0..LINES {
            self.empty(i);
        }
    }
}

std::thread_local! {
    static CACHE: Cache = const {
        Cache {
            sizes: [const { Cell::new(0) }; LINES],
            stacks: [const { Stack::new() }; LINES],
            bytes: Cell::new(0),
            next: Cell::new(0),
        }
    };
}

/// Whether blocks of `size` bytes are cached: one subtraction and one comparison, on every
/// allocation and free.
#[inline(always)]
pub(crate) fn cached(size: usize) -> bool {
    size.wrapping_sub(MIN) <= MAX - MIN
}

/// A block of `size` bytes (a [`cached`] size, at most 16-aligned): the one of that size
/// freed last on this thread if one is kept, else a new one. Out of line, so that the
/// allocation of any other size stays a jump to mimalloc.
#[inline(never)]
pub(crate) fn alloc(size: usize) -> *mut u8 {
    let kept = CACHE
        .try_with(|c| {
            for i in 0..LINES {
                if c.sizes[i].get() == size {
                    let kept = c.stacks[i].pop();
                    if !kept.is_null() {
                        c.bytes.set(c.bytes.get() - size);
                        return kept;
                    }
                }
            }
            null_mut()
        })
        .unwrap_or(null_mut());
    if kept.is_null() {
        // SAFETY: mimalloc's blocks of a cached size are 16-aligned, as asked at most.
        unsafe { ffi::mi_malloc(size) as *mut u8 }
    } else {
        kept
    }
}

/// Keeps `ptr`, a block of a [`cached`] `size` the caller gives up, for a later [`alloc`]
/// of that size, or frees it when its stack or the thread keeps enough. Every mimalloc
/// block of a cached size is 16-aligned, whatever alignment it was allocated with, so any
/// can be handed out again.
///
/// # Safety
/// `ptr` is a live mimalloc block of at least `size` bytes that nothing uses any more.
#[inline(never)]
pub(crate) unsafe fn free(ptr: *mut u8, size: usize) {
    let kept = CACHE.try_with(|c| {
        let line = (0..LINES).find(|&i| c.sizes[i].get() == size).or_else(|| {
            // A stack for this size: an empty one, else the next in turn, emptied.
            let i = (0..LINES).find(|&i| c.stacks[i].len() == 0).unwrap_or_else(|| {
                let i = c.next.get();
                c.next.set((i + 1) % LINES);
                c.empty(i);
                i
            });
            c.sizes[i].set(size);
            Some(i)
        });
        let Some(i) = line else { return false };
        if c.stacks[i].len() >= DEPTH || c.bytes.get() + size > BYTES {
            return false;
        }
        // SAFETY: the caller gives the block (over 1 KiB) up.
        unsafe { c.stacks[i].push(ptr) };
        c.bytes.set(c.bytes.get() + size);
        true
    });
    if kept != Ok(true) {
        // SAFETY: the caller gives the block up.
        unsafe { ffi::mi_free(ptr as *mut c_void) };
    }
}

/// Blocks freed by exiting threads' caches (tests).
#[cfg(test)]
pub(crate) static FREED_AT_EXIT: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// The sizes of the blocks this thread keeps, one entry a block (tests).
#[cfg(test)]
pub(crate) fn kept() -> std::vec::Vec<usize> {
    CACHE.with(|c| {
        (0..LINES).flat_map(|i| core::iter::repeat_n(c.sizes[i].get(), c.stacks[i].len() as usize)).collect()
    })
}
