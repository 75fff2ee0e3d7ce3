// Copyright 2019 Octavian Oncescu

#![no_std]

//! A drop-in global allocator wrapper around the [mimalloc](https://github.com/microsoft/mimalloc) allocator.
//! Mimalloc is a general purpose, performance oriented allocator built by Microsoft.
//!
//! ## Usage
//! ```rust,ignore
//! use mimalloc::MiMalloc;
//!
//! #[global_allocator]
//! static GLOBAL: MiMalloc = MiMalloc;
//! ```
//!
//! ## Usage with secure mode
//! Using secure mode adds guard pages,
//! randomized allocation, encrypted free lists, etc. The performance penalty is usually
//! around 10% according to [mimalloc's](https://github.com/microsoft/mimalloc)
//! own benchmarks.
//!
//! To enable secure mode, put in `Cargo.toml`:
//! ```toml
//! [dependencies]
//! mimalloc = { version = "*", features = ["secure"] }
//! ```

extern crate libmimalloc_sys as ffi;

#[cfg(feature = "extended")]
mod extended;

#[cfg(feature = "thread_cache")]
mod cache;

#[cfg(feature = "small_cache")]
mod small;

#[cfg(any(feature = "thread_cache", feature = "small_cache"))]
mod stack;

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;
use ffi::*;

/// Drop-in mimalloc global allocator.
///
/// ## Usage
/// ```rust,ignore
/// use mimalloc::MiMalloc;
///
/// #[global_allocator]
/// static GLOBAL: MiMalloc = MiMalloc;
/// ```
pub struct MiMalloc;

// edgegate patch 17: a request whose alignment every mimalloc block of its size already has
// takes the plain allocation functions, as Rust's `System` allocator does with `malloc`.
// mimalloc's blocks of 16 bytes or more start 16-aligned (a page's first block is aligned to
// `MI_MAX_ALIGN_SIZE`, 16, and every bin above 8 bytes is a multiple of 16) and all blocks are
// 8-aligned. Sent through `mi_malloc_aligned`, mimalloc v3 takes its fast path only when the
// free block at hand happens to be aligned and otherwise its generic aligned path, which
// over-allocates a size that is not a power of two (a 48-byte request gets a 64-byte block).
const MI_MAX_ALIGN_SIZE: usize = 16;

#[inline]
fn plain_allocation_fits(size: usize, align: usize) -> bool {
    align <= MI_MAX_ALIGN_SIZE && align <= size
}

unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // edgegate patch 83: the small block of its class freed last on this thread.
        #[cfg(feature = "small_cache")]
        if small::cached(layout.size(), layout.align()) {
            return small::alloc(layout.size());
        }
        // edgegate patch 72: a medium block freed on this thread before, if one is kept.
        #[cfg(feature = "thread_cache")]
        if cache::cached(layout.size()) && layout.align() <= MI_MAX_ALIGN_SIZE {
            return cache::alloc(layout.size());
        }
        if plain_allocation_fits(layout.size(), layout.align()) {
            mi_malloc(layout.size()) as *mut u8
        } else {
            mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // edgegate patch 83: a block of the class's full size, kept or new, zeroed here.
        #[cfg(feature = "small_cache")]
        if small::cached(layout.size(), layout.align()) {
            let p = small::alloc(layout.size());
            if !p.is_null() {
                core::ptr::write_bytes(p, 0, layout.size());
            }
            return p;
        }
        if plain_allocation_fits(layout.size(), layout.align()) {
            mi_zalloc(layout.size()) as *mut u8
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // edgegate patch 83: a small block is kept for the next allocation of its class.
        #[cfg(feature = "small_cache")]
        if small::cached(_layout.size(), _layout.align()) {
            small::free(ptr, _layout.size());
            return;
        }
        // edgegate patch 72: a medium block is kept for the next allocation of its size.
        #[cfg(feature = "thread_cache")]
        if cache::cached(_layout.size()) {
            cache::free(ptr, _layout.size());
            return;
        }
        mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // edgegate patch 83: a small block stays a block of its class's full size. One that
        // stays in its class is kept as it is; one that leaves it, or a block that becomes
        // small, is moved (mimalloc's reallocation would size the new block for the size,
        // not the class).
        #[cfg(feature = "small_cache")]
        {
            let old_small = small::cached(layout.size(), layout.align());
            let new_small = small::cached(new_size, layout.align());
            if old_small && new_small && small::class(layout.size()) == small::class(new_size) {
                return ptr;
            }
            if old_small || new_small {
                let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                let new = self.alloc(new_layout);
                if !new.is_null() {
                    core::ptr::copy_nonoverlapping(ptr, new, core::cmp::min(layout.size(), new_size));
                    self.dealloc(ptr, layout);
                }
                return new;
            }
        }
        if plain_allocation_fits(new_size, layout.align()) {
            mi_realloc(ptr as *mut c_void, new_size) as *mut u8
        } else {
            mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // edgegate patch 17: the plain functions must honour every alignment they are used for.
    #[test]
    fn plain_allocations_are_aligned_as_asked() {
        let alloc = MiMalloc;
        for align in [1usize, 2, 4, 8, 16] {
            let mut size = align;
            while size <= 300_000 {
                let layout = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    let mut ptrs = [core::ptr::null_mut(); 8];
                    for p in ptrs.iter_mut() {
                        *p = alloc.alloc(layout);
                        assert!(!p.is_null());
                        assert_eq!(*p as usize % align, 0, "size {} align {}", size, align);
                    }
                    let z = alloc.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed size {} align {}", size, align);
                    assert!(core::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                    let r = alloc.realloc(ptrs[0], layout, size * 3);
                    assert_eq!(r as usize % align, 0, "realloc size {} align {}", size, align);
                    ptrs[0] = r;
                    let grown = Layout::from_size_align(size * 3, align).unwrap();
                    alloc.dealloc(z, layout);
                    alloc.dealloc(ptrs[0], grown);
                    for p in &ptrs[1..] {
                        alloc.dealloc(*p, layout);
                    }
                }
                size += if size < 1024 { align } else { size / 3 + align - (size / 3) % align };
            }
        }
    }

    // edgegate patch 72: the per-thread cache of medium blocks.
    #[cfg(feature = "thread_cache")]
    mod thread_cache {
        extern crate std;
        use super::super::cache;
        use super::*;

        fn layout(size: usize, align: usize) -> Layout {
            Layout::from_size_align(size, align).unwrap()
        }

        #[test]
        fn a_freed_medium_block_is_handed_out_again_for_its_size_only() {
            std::thread::spawn(|| unsafe {
                let alloc = MiMalloc;
                let a = alloc.alloc(layout(4096, 8));
                core::ptr::write_bytes(a, 0xa5, 4096);
                alloc.dealloc(a, layout(4096, 8));
                assert_eq!(cache::kept(), [4096]);
                // Another size does not take it.
                let b = alloc.alloc(layout(4000, 8));
                assert_ne!(a, b);
                // Its own size does, and it is writable whole.
                let c = alloc.alloc(layout(4096, 1));
                assert_eq!(a, c);
                assert!(cache::kept().is_empty());
                core::ptr::write_bytes(c, 0x5a, 4096);
                alloc.dealloc(b, layout(4000, 8));
                alloc.dealloc(c, layout(4096, 1));
                // Sizes at the bounds: 1 KiB is mimalloc's own fast path, past 16 KiB is large.
                for size in [1024, 16 * 1024 + 1] {
                    let p = alloc.alloc(layout(size, 8));
                    alloc.dealloc(p, layout(size, 8));
                }
                for size in [1025, 16 * 1024] {
                    let p = alloc.alloc(layout(size, 8));
                    alloc.dealloc(p, layout(size, 8));
                }
                let mut kept = cache::kept();
                kept.sort_unstable();
                assert_eq!(kept, [1025, 4000, 4096, 16 * 1024]);
            })
            .join()
            .unwrap();
        }

        #[test]
        fn the_cache_keeps_eight_blocks_and_gives_way_to_the_sizes_freed_last() {
            std::thread::spawn(|| unsafe {
                let alloc = MiMalloc;
                let blocks: std::vec::Vec<(usize, *mut u8)> =
                    (0..20).map(|i| (2000 + 16 * i, alloc.alloc(layout(2000 + 16 * i, 16)))).collect();
                for (size, p) in &blocks {
                    alloc.dealloc(*p, layout(*size, 16));
                }
                let mut kept = cache::kept();
                kept.sort_unstable();
                // The last eight freed replaced the first ones in turn.
                assert_eq!(kept, (12..20).map(|i| 2000 + 16 * i).collect::<std::vec::Vec<_>>());
                for (size, p) in &blocks[12..] {
                    assert_eq!(alloc.alloc(layout(*size, 16)), *p);
                }
                assert!(cache::kept().is_empty());
                for (size, p) in &blocks[12..] {
                    alloc.dealloc(*p, layout(*size, 16));
                }
            })
            .join()
            .unwrap();
        }

        // edgegate patch 83: a size's blocks come back last in, first out, and at most
        // DEPTH (64) of one size are kept.
        #[test]
        fn medium_blocks_of_a_size_come_back_newest_first_and_64_at_most() {
            std::thread::spawn(|| unsafe {
                let alloc = MiMalloc;
                let blocks: std::vec::Vec<*mut u8> = (0..70).map(|_| alloc.alloc(layout(4096, 8))).collect();
                for p in &blocks {
                    alloc.dealloc(*p, layout(4096, 8));
                }
                assert_eq!(cache::kept(), [4096; 64]);
                for p in blocks[..64].iter().rev() {
                    assert_eq!(alloc.alloc(layout(4096, 8)), *p);
                }
                assert!(cache::kept().is_empty());
                for p in &blocks[..64] {
                    alloc.dealloc(*p, layout(4096, 8));
                }
            })
            .join()
            .unwrap();
        }

        #[test]
        fn an_over_aligned_request_never_gets_a_kept_block() {
            std::thread::spawn(|| unsafe {
                let alloc = MiMalloc;
                for _ in 0..3 {
                    let ps: std::vec::Vec<*mut u8> = (0..8).map(|_| alloc.alloc(layout(4096, 16))).collect();
                    for p in ps {
                        alloc.dealloc(p, layout(4096, 16));
                    }
                    for align in [32, 64, 4096] {
                        let p = alloc.alloc(layout(4096, align));
                        assert_eq!(p as usize % align, 0, "align {}", align);
                        // Freed, an over-aligned block may be kept: it is 16-aligned as well.
                        alloc.dealloc(p, layout(4096, align));
                    }
                }
                let p = alloc.alloc(layout(4096, 16));
                assert_eq!(p as usize % 16, 0);
                alloc.dealloc(p, layout(4096, 16));
            })
            .join()
            .unwrap();
        }

        #[test]
        fn blocks_freed_by_another_thread_are_kept_there_and_freed_when_it_exits() {
            let alloc = MiMalloc;
            let blocks: std::vec::Vec<usize> =
                (0..4).map(|_| unsafe { alloc.alloc(layout(10_656, 16)) } as usize).collect();
            let freed_before = cache::FREED_AT_EXIT.load(core::sync::atomic::Ordering::Relaxed);
            let reused = std::thread::spawn(move || unsafe {
                for p in &blocks {
                    MiMalloc.dealloc(*p as *mut u8, layout(10_656, 16));
                }
                assert_eq!(cache::kept(), [10_656; 4]);
                let p = MiMalloc.alloc(layout(10_656, 16)) as usize;
                core::ptr::write_bytes(p as *mut u8, 1, 10_656);
                MiMalloc.dealloc(p as *mut u8, layout(10_656, 16));
                blocks.contains(&p)
            })
            .join()
            .unwrap();
            assert!(reused);
            // Its four kept blocks were freed as it exited (other tests' threads add theirs).
            assert!(cache::FREED_AT_EXIT.load(core::sync::atomic::Ordering::Relaxed) >= freed_before + 4);
        }
    }

    // edgegate patch 83: the per-thread cache of small blocks.
    #[cfg(feature = "small_cache")]
    mod small_cache {
        extern crate std;
        use super::super::small;
        use super::*;

        fn layout(size: usize, align: usize) -> Layout {
            Layout::from_size_align(size, align).unwrap()
        }

        #[test]
        fn a_freed_small_block_comes_back_newest_first_for_any_size_of_its_class() {
            std::thread::spawn(|| unsafe {
                let alloc = MiMalloc;
                let a = alloc.alloc(layout(40, 8));
                let b = alloc.alloc(layout(40, 8));
                core::ptr::write_bytes(a, 0xa5, 40);
                alloc.dealloc(a, layout(40, 8));
                alloc.dealloc(b, layout(40, 8));
                assert_eq!(small::kept().0[2], 2, "two blocks kept in the 33-48 byte class");
                // Another class does not take them.
                let other = alloc.alloc(layout(49, 8));
                assert!(other != a && other != b);
                // Any size of their class does, the block freed last first, writable whole.
                let c = alloc.alloc(layout(48, 16));
                assert_eq!(c, b);
                core::ptr::write_bytes(c, 0x5a, 48);
                let d = alloc.alloc(layout(33, 1));
                assert_eq!(d, a);
                assert_eq!(small::kept(), ([0; 64].to_vec(), 0));
                // A zeroed allocation is zeroed though the block kept was written.
                alloc.dealloc(d, layout(33, 1));
                let z = alloc.alloc_zeroed(layout(40, 8));
                assert_eq!(z, a);
                assert!(core::slice::from_raw_parts(z, 40).iter().all(|x| *x == 0));
                for (p, size) in [(z, 40), (c, 48), (other, 49)] {
                    alloc.dealloc(p, layout(size, 8));
                }
            })
            .join()
            .unwrap();
        }

        #[test]
        fn at_most_64_blocks_of_a_class_and_256_kib_are_kept() {
            std::thread::spawn(|| unsafe {
                let alloc = MiMalloc;
                let blocks: std::vec::Vec<*mut u8> = (0..70).map(|_| alloc.alloc(layout(16, 8))).collect();
                for p in &blocks {
                    alloc.dealloc(*p, layout(16, 8));
                }
                let (counts, bytes) = small::kept();
                assert_eq!((counts[0], bytes), (64, 64 * 16));
                // Blocks near 1 KiB: 64 of a class are ~64 KiB, and the byte bound, 256 KiB
                // over all classes, stops the fifth class after 5 blocks: 1,024 bytes of the
                // first class, 64 × (1,024 + 1,008 + 992 + 976) and 5 × 960 are 261,824.
                let big: std::vec::Vec<(usize, *mut u8)> = (0..5)
                    .flat_map(|k| (0..64).map(move |_| 1024 - 16 * k))
                    .map(|size| (size, alloc.alloc(layout(size, 8))))
                    .collect();
                for (size, p) in &big {
                    alloc.dealloc(*p, layout(*size, 8));
                }
                let (counts, bytes) = small::kept();
                assert_eq!(bytes, 261_824);
                assert_eq!(counts[59..], [5, 64, 64, 64, 64]);
            })
            .join()
            .unwrap();
        }

        #[test]
        fn a_reallocated_small_block_keeps_its_contents_and_its_class() {
            std::thread::spawn(|| unsafe {
                let alloc = MiMalloc;
                let p = alloc.alloc(layout(20, 8));
                for i in 0..20 {
                    *p.add(i) = i as u8;
                }
                // Within its class (17-32 bytes): the same block.
                let q = alloc.realloc(p, layout(20, 8), 32);
                assert_eq!(q, p);
                // Out of it, to a small, a medium and a large size and back: moved, contents kept.
                let mut cur = (q, 32);
                for size in [100, 5000, 20_000, 24, 1000, 8] {
                    let r = alloc.realloc(cur.0, layout(cur.1, 8), size);
                    assert!(!r.is_null());
                    for i in 0..cur.1.min(size).min(20) {
                        assert_eq!(*r.add(i), i as u8, "byte {i} after {} -> {size}", cur.1);
                    }
                    core::ptr::write_bytes(r.add(20.min(size)), 0xee, size - 20.min(size));
                    cur = (r, size);
                }
                alloc.dealloc(cur.0, layout(cur.1, 8));
                // The 8-byte block went to the first class and comes back for 16 bytes.
                assert_eq!(alloc.alloc(layout(16, 8)), cur.0);
            })
            .join()
            .unwrap();
        }

        #[test]
        fn an_over_aligned_small_request_is_not_cached_and_kept_blocks_are_freed_at_exit() {
            let freed_before = small::FREED_AT_EXIT.load(core::sync::atomic::Ordering::Relaxed);
            std::thread::spawn(|| unsafe {
                let alloc = MiMalloc;
                for align in [32, 64] {
                    let p = alloc.alloc(layout(64, align));
                    assert_eq!(p as usize % align, 0, "align {align}");
                    alloc.dealloc(p, layout(64, align));
                }
                assert_eq!(small::kept().1, 0, "over-aligned blocks are not kept");
                let ps: std::vec::Vec<*mut u8> = (0..5).map(|_| alloc.alloc(layout(100, 8))).collect();
                for p in ps {
                    alloc.dealloc(p, layout(100, 8));
                }
                assert_eq!(small::kept().0[6], 5);
            })
            .join()
            .unwrap();
            assert!(small::FREED_AT_EXIT.load(core::sync::atomic::Ordering::Relaxed) >= freed_before + 5);
        }
    }

    #[test]
    fn it_frees_allocated_memory() {
        unsafe {
            let layout = Layout::from_size_align(8, 8).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc(layout);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_allocated_big_memory() {
        unsafe {
            let layout = Layout::from_size_align(1 << 20, 32).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc(layout);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_zero_allocated_memory() {
        unsafe {
            let layout = Layout::from_size_align(8, 8).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc_zeroed(layout);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_zero_allocated_big_memory() {
        unsafe {
            let layout = Layout::from_size_align(1 << 20, 32).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc_zeroed(layout);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_reallocated_memory() {
        unsafe {
            let layout = Layout::from_size_align(8, 8).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc(layout);
            let ptr = alloc.realloc(ptr, layout, 16);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_reallocated_big_memory() {
        unsafe {
            let layout = Layout::from_size_align(1 << 20, 32).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc(layout);
            let ptr = alloc.realloc(ptr, layout, 2 << 20);
            alloc.dealloc(ptr, layout);
        }
    }
}
