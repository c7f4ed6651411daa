//! The binary's memory allocator: mimalloc (the feature `system-allocator` keeps glibc's malloc,
//! which heap profilers such as heaptrack see into).
//!
//! mimalloc instead of glibc's malloc: under steady load glibc's per-thread arenas kept what was
//! freed and the process grew without its live heap growing (see `make soak`).

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// mimalloc, called at its plain entry points whenever the layout allows. The `mimalloc` crate
/// calls the aligned ones for every allocation, which check the alignment again each time: about
/// 25 more instructions an allocation, and a request makes about sixty (callgrind, 2026-12-05).
pub struct MiMalloc;

/// Every mimalloc block of at least this size is aligned to it (`MI_MAX_ALIGN_SIZE`); a smaller
/// block is aligned to its size class, a multiple of 8. So a layout whose alignment is at most
/// this and at most its size needs no aligned call: the rule Rust's own `System` allocator
/// applies to malloc.
const PLAIN_ALIGN: usize = 16;

fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

// SAFETY: each call hands mimalloc a layout's size (never zero: `GlobalAlloc` callers ensure it)
// and, when the plain rule above does not promise the alignment, the layout's alignment (a power
// of two, as `Layout` guarantees). Every block is freed with `mi_free`, whichever call made it.
unsafe impl GlobalAlloc for MiMalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: see the impl.
        unsafe { if plain(align, size) { mi::mi_malloc(size) } else { mi::mi_malloc_aligned(size, align) } }.cast()
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: see the impl.
        unsafe { if plain(align, size) { mi::mi_zalloc(size) } else { mi::mi_zalloc_aligned(size, align) } }.cast()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's promise).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        let ptr = ptr.cast::<c_void>();
        // SAFETY: see the impl; `ptr` came from this allocator (the caller's promise).
        unsafe {
            if plain(align, new_size) {
                mi::mi_realloc(ptr, new_size)
            } else {
                mi::mi_realloc_aligned(ptr, new_size, align)
            }
        }
        .cast()
    }
}

/// mimalloc gives freed pages back to the system only a second (whole arenas: ten) after they
/// are freed, and only when the thread that freed them next calls the allocator: a server that
/// frees a large transient and then idles kept all of it. Parsing a million-user users file left
/// 1,200 MiB resident instead of 190. Freed pages are given back at once instead.
pub fn give_back_freed_memory_promptly() {
    // SAFETY: sets a process-wide option before any thread is started; takes no pointers.
    unsafe { mi::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

/// mimalloc v3's `mi_option_purge_delay` (milliseconds; libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: mi::mi_option_t = 15;

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    /// The option number names the purge delay: its documented default is 1,000 ms.
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // SAFETY: reads a process-wide option; takes no pointers.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) }, 1000);
    }

    /// Every block has the layout's alignment, through the plain calls and the aligned ones,
    /// fresh, zeroed and grown or shrunk, over the small sizes where size classes are not powers
    /// of two.
    #[test]
    fn blocks_have_the_alignment_their_layout_asks() {
        let a = super::MiMalloc;
        let aligned = |p: *mut u8, align: usize| !p.is_null() && (p as usize).is_multiple_of(align);
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in 1..=600 {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: nonzero sizes, power-of-two alignments; each block is freed once, with
                // the layout it has at that point.
                unsafe {
                    let z = a.alloc_zeroed(layout);
                    assert!(aligned(z, align), "alloc_zeroed {size} aligned {align}: {z:?}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                    a.dealloc(z, layout);
                    for new_size in [1, size / 2 + 1, size * 3 + 5] {
                        let p = a.alloc(layout);
                        assert!(aligned(p, align), "alloc {size} aligned {align}: {p:?}");
                        p.write_bytes(0xA5, size);
                        let q = a.realloc(p, layout, new_size);
                        assert!(aligned(q, align), "realloc {size} to {new_size} aligned {align}: {q:?}");
                        assert_eq!(*q, 0xA5, "realloc keeps the content");
                        a.dealloc(q, Layout::from_size_align(new_size, align).unwrap());
                    }
                }
            }
        }
    }
}
