//! Shared memory for large frames: sealed `memfd` regions, mapped shared.
//!
//! A region is made here ([`create`]: sized, then sealed against shrinking and growing, so its
//! size is fixed for its whole life) and a received one is checked here before it is mapped
//! ([`open`]: it must carry the shrink seal — which only a `memfd` can — and be at least as large
//! as what will be read): a peer cannot make this process touch a page past the end of the file
//! (`SIGBUS`), whatever it does with its own descriptor afterwards.
//!
//! The bytes of a mapping are shared with another process that may write them at any time. Every
//! read of them is bounds-checked against the mapping's fixed length, and the decoder treats them
//! as untrusted input; a peer that writes into a region while this process decodes it can only
//! garble its own message (a decode error, or other data), never reach outside the mapping.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// A shared, read-write mapping of a whole region (or its first `len` bytes), unmapped on drop.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; the bytes are only handed out as
// shared slices and through the atomic state word, and written by `write` into a region that
// its one writer (the sender holding it) never reads as a slice.
unsafe impl Send for Mapping {}
// SAFETY: as above: `&Mapping` gives out only shared reads and atomic accesses.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` shared and read-write; `populate` fills the page tables at once
    /// (one system call instead of a fault per page).
    fn map(fd: BorrowedFd<'_>, len: usize, populate: bool) -> io::Result<Mapping> {
        if len < 4 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "region too small",
            ));
        }
        let flags = if populate {
            MapFlags::SHARED | MapFlags::POPULATE
        } else {
            MapFlags::SHARED
        };
        // SAFETY: a fresh mapping at an address the kernel chooses; nothing else refers to it.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                flags,
                fd,
                0,
            )?
        };
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Mapping { ptr, len })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The region's state word (its first four bytes), shared by both processes.
    pub(crate) fn state(&self) -> &AtomicU32 {
        // SAFETY: the mapping is at least 4 bytes long and page-aligned; an `AtomicU32` may
        // alias memory that another process writes (that is what atomics are for).
        unsafe { &*self.ptr.as_ptr().cast::<AtomicU32>() }
    }

    /// The 4-byte word at `at` (a multiple of 4), shared by both processes; `None` past the end.
    pub(crate) fn word(&self, at: usize) -> Option<&AtomicU32> {
        if at % 4 != 0 || at.checked_add(4)? > self.len {
            return None;
        }
        // SAFETY: within the mapping and 4-byte aligned (the mapping is page-aligned); an
        // `AtomicU32` may alias memory that another process writes.
        Some(unsafe { &*self.ptr.as_ptr().add(at).cast::<AtomicU32>() })
    }

    /// The bytes `at..at + len` of the mapping, or `None` past its end.
    pub(crate) fn bytes(&self, at: usize, len: usize) -> Option<&[u8]> {
        let end = at.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: within the mapping, which lives as long as `self`.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(at), len) })
    }

    /// Copies `src` into the mapping at `at`; false (and nothing written) past its end. Only the
    /// sender that holds a region writes it, and it never reads it back as a slice.
    pub(crate) fn write(&self, at: usize, src: &[u8]) -> bool {
        match at.checked_add(src.len()) {
            Some(end) if end <= self.len => {
                // SAFETY: within the mapping; `src` is ordinary memory of this process, so the
                // ranges do not overlap.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.as_ptr(),
                        self.ptr.as_ptr().add(at),
                        src.len(),
                    )
                };
                true
            }
            _ => false,
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `map` with this length and is not used after this.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A new region of `size` bytes: a close-on-exec `memfd`, sized and sealed (its size can never
/// change again), mapped here with its pages populated.
pub(crate) fn create(size: usize) -> io::Result<(OwnedFd, Mapping)> {
    create_named("msgport-region", size, true)
}

/// [`create`], the `memfd` named `name` (as `/proc/<pid>/fd` shows it), its pages populated
/// at once or faulted in as they are first touched.
pub(crate) fn create_named(
    name: &str,
    size: usize,
    populate: bool,
) -> io::Result<(OwnedFd, Mapping)> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, size as u64)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    let map = Mapping::map(fd.as_fd(), size, populate)?;
    Ok((fd, map))
}

/// A region's identity and size, to find a mapping of it made earlier.
pub(crate) fn identify(fd: BorrowedFd<'_>) -> io::Result<(u64, u64, u64)> {
    let stat = rustix::fs::fstat(fd)?;
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    Ok((stat.st_dev, stat.st_ino, size))
}

/// Maps the first `len` bytes of a region a peer sent, after checking that it cannot shrink
/// (sealed) and holds at least `len` bytes: reading them can never fault. The pages are not
/// populated: each is faulted in when first read, once for the life of the mapping.
pub(crate) fn open(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
    let seals = rustix::fs::fcntl_get_seals(fd)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a region is not a memfd"))?;
    if !seals.contains(SealFlags::SHRINK) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a region is not sealed against shrinking",
        ));
    }
    let size = rustix::fs::fstat(fd)?.st_size;
    if u64::try_from(size).map_or(true, |size| size < len as u64) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a region is smaller than its frame says",
        ));
    }
    Mapping::map(fd, len, false)
}

/// Maps a whole region a peer sent that must be exactly `len` bytes long (sealed against
/// shrinking and growing); its pages are faulted in as they are first touched.
pub(crate) fn open_exact(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
    let seals = rustix::fs::fcntl_get_seals(fd)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a region is not a memfd"))?;
    if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a region's size is not sealed",
        ));
    }
    let size = rustix::fs::fstat(fd)?.st_size;
    if u64::try_from(size).ok() != Some(len as u64) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a region is not of the size agreed",
        ));
    }
    Mapping::map(fd, len, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_region_is_sealed_and_shared_between_mappings() {
        let (fd, map) = create(1 << 16).unwrap();
        assert!(map.write(64, b"hello"));
        assert!(!map.write((1 << 16) - 2, b"abc"), "past the end");
        let seen = open(fd.as_fd(), 128).unwrap();
        assert_eq!(seen.bytes(64, 5), Some(&b"hello"[..]));
        assert_eq!(seen.bytes(120, 16), None, "past the mapped length");
        seen.state().store(7, Ordering::Release);
        assert_eq!(map.state().load(Ordering::Acquire), 7);
        // The size is fixed for good.
        assert!(rustix::fs::ftruncate(&fd, 10).is_err());
        assert!(rustix::fs::ftruncate(&fd, 1 << 20).is_err());
        assert!(rustix::fs::fcntl_add_seals(&fd, SealFlags::WRITE).is_err());
    }

    #[test]
    fn unsealed_small_or_foreign_regions_are_refused() {
        let unsealed = rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, 4096).unwrap();
        assert!(open(unsealed.as_fd(), 64).is_err());
        let (fd, _map) = create(4096).unwrap();
        assert!(open(fd.as_fd(), 4097).is_err(), "larger than the file");
        assert!(open(fd.as_fd(), 4096).is_ok());
        let (a, _b) = super::super::socketpair().unwrap();
        assert!(open(a.as_fd(), 64).is_err(), "a socket");
        let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        assert!(open(null.as_fd(), 64).is_err());
    }
}
