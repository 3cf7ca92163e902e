//! Shared memory mappings of BPF array maps created with BPF_F_MMAPABLE.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
};

/// A MAP_SHARED mapping; the kernel sees every store at once.
pub struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; callers only access it through atomics.
unsafe impl Send for Mmap {}
// SAFETY: as above.
unsafe impl Sync for Mmap {}

impl Mmap {
    /// Maps `len` bytes of the map behind `fd`.
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        Self::new(fd.as_raw_fd(), len, libc::MAP_SHARED)
    }

    /// Anonymous zeroed memory of the same shape, for unit tests without a kernel map.
    #[cfg(test)]
    pub fn anonymous(len: usize) -> io::Result<Self> {
        Self::new(-1, len, libc::MAP_SHARED | libc::MAP_ANONYMOUS)
    }

    fn new(fd: i32, len: usize, flags: i32) -> io::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel; checked for MAP_FAILED below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: NonNull::new(p.cast()).expect("mmap returned null"),
            len,
        })
    }

    /// The mapping as a slice of `T` (an atomic integer type: the kernel reads concurrently).
    pub fn as_slice<T>(&self) -> &[T] {
        // SAFETY: page-aligned, `len` bytes mapped for the lifetime of self; T is an atomic
        // integer for which every bit pattern is valid.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.len / size_of::<T>()) }
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
