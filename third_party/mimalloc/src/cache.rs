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
//! Each thread keeps up to [`SLOTS`] such blocks, by exact size: a freed block goes in a
//! free slot (or replaces the oldest, which is freed), and an allocation of the same size
//! takes it back. A block is a mimalloc block whichever thread allocated it (mimalloc frees
//! a block from any thread), so a block freed on another thread than its own is kept and
//! reused there. A thread keeps at most `SLOTS * MAX` bytes this way; they are freed when
//! the thread exits. During and after that exit (another thread-local's destructor
//! allocating or freeing), the cache is not there and mimalloc is called directly.

extern crate std;

use core::cell::Cell;
use core::ffi::c_void;
use core::ptr::null_mut;

/// The smallest size cached: mimalloc's own fast path covers the sizes below.
pub(crate) const MIN: usize = 1024 + 1;
/// The largest size cached.
pub(crate) const MAX: usize = 16 * 1024;
/// Blocks a thread keeps.
const SLOTS: usize = 8;

struct Cache {
    /// The size of the block in each slot; 0 for an empty slot.
    sizes: [Cell<usize>; SLOTS],
    blocks: [Cell<*mut u8>; SLOTS],
    /// The slot a block goes in when none is empty (each in turn).
    next: Cell<usize>,
}

impl Drop for Cache {
    fn drop(&mut self) {
        for (size, block) in self.sizes.iter().zip(&self.blocks) {
            if size.replace(0) != 0 {
                // SAFETY: a slot with a size holds a live mimalloc block no one else has.
                unsafe { ffi::mi_free(block.get() as *mut c_void) };
                #[cfg(test)]
                FREED_AT_EXIT.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

std::thread_local! {
    static CACHE: Cache = const {
        Cache {
            sizes: [const { Cell::new(0) }; SLOTS],
            blocks: [const { Cell::new(null_mut()) }; SLOTS],
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

/// A block of `size` bytes (a [`cached`] size, at most 16-aligned): a kept one of exactly
/// that size if there is one, else a new one. Out of line, so that the allocation of any
/// other size stays a jump to mimalloc.
#[inline(never)]
pub(crate) fn alloc(size: usize) -> *mut u8 {
    let kept = CACHE
        .try_with(|c| {
            for (s, block) in c.sizes.iter().zip(&c.blocks) {
                if s.get() == size {
                    s.set(0);
                    return block.get();
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
/// of that size. Every mimalloc block of a cached size is 16-aligned, whatever alignment
/// it was allocated with, so any can be handed out again.
///
/// # Safety
/// `ptr` is a live mimalloc block of at least `size` bytes that nothing uses any more.
#[inline(never)]
pub(crate) unsafe fn free(ptr: *mut u8, size: usize) {
    let kept = CACHE.try_with(|c| {
        for (s, block) in c.sizes.iter().zip(&c.blocks) {
            if s.get() == 0 {
                s.set(size);
                block.set(ptr);
                return;
            }
        }
        // Full: the slots are replaced in turn, so that a size freed often finds a place
        // even after rarer ones filled the cache.
        let i = c.next.get();
        c.next.set((i + 1) % SLOTS);
        let old = c.blocks[i].replace(ptr);
        c.sizes[i].set(size);
        // SAFETY: the slot held a live block no one else has; it is out of the cache now.
        unsafe { ffi::mi_free(old as *mut c_void) };
    });
    if kept.is_err() {
        // SAFETY: the caller gives the block up.
        unsafe { ffi::mi_free(ptr as *mut c_void) };
    }
}

/// Blocks freed by exiting threads' caches (tests).
#[cfg(test)]
pub(crate) static FREED_AT_EXIT: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// The sizes of the blocks this thread keeps (tests).
#[cfg(test)]
pub(crate) fn kept() -> std::vec::Vec<usize> {
    CACHE.with(|c| c.sizes.iter().map(Cell::get).filter(|s| *s != 0).collect())
}
