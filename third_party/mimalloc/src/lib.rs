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
        if plain_allocation_fits(layout.size(), layout.align()) {
            mi_malloc(layout.size()) as *mut u8
        } else {
            mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain_allocation_fits(layout.size(), layout.align()) {
            mi_zalloc(layout.size()) as *mut u8
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
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
