//! edgegate patches 72 and 83: freed blocks kept in a list threaded through the blocks
//! themselves (each one's first word points to the one pushed before it), taken newest
//! first.

use core::cell::Cell;
use core::ffi::c_void;
use core::ptr::null_mut;

pub(crate) struct Stack {
    /// The block pushed last; null when empty.
    head: Cell<*mut u8>,
    len: Cell<u32>,
}

impl Stack {
    pub(crate) const fn new() -> Stack {
        Stack { head: Cell::new(null_mut()), len: Cell::new(0) }
    }

    pub(crate) fn len(&self) -> u32 {
        self.len.get()
    }

    /// The block pushed last, taken off; null when there is none.
    #[inline(always)]
    pub(crate) fn pop(&self) -> *mut u8 {
        let head = self.head.get();
        if !head.is_null() {
            // SAFETY: a kept block's first word is the next kept block.
            self.head.set(unsafe { (head as *mut *mut u8).read() });
            self.len.set(self.len.get() - 1);
        }
        head
    }

    /// Keeps `ptr`.
    ///
    /// # Safety
    /// `ptr` is a live mimalloc block of at least a word that nothing else uses any more.
    #[inline(always)]
    pub(crate) unsafe fn push(&self, ptr: *mut u8) {
        // SAFETY: the block has at least a word and is the stack's now.
        unsafe { (ptr as *mut *mut u8).write(self.head.get()) };
        self.head.set(ptr);
        self.len.set(self.len.get() + 1);
    }

    /// Gives every kept block back to mimalloc; returns how many there were.
    pub(crate) fn free_all(&self) -> u32 {
        let freed = self.len.replace(0);
        let mut block = self.head.replace(null_mut());
        while !block.is_null() {
            // SAFETY: a kept block is a live mimalloc block no one else has; its first word
            // is the next kept block.
            unsafe {
                let next = (block as *mut *mut u8).read();
                ffi::mi_free(block as *mut c_void);
                block = next;
            }
        }
        freed
    }
}
