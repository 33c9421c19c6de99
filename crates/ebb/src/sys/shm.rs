//! Shared memory that outlives the process that writes it: a memfd mapped
//! `MAP_SHARED`. The daemon keeps its in-flight table in one; the keeper
//! holds the memfd, so a restarted daemon maps the same bytes again.

use std::ffi::CString;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// A mapped memfd.
#[derive(Debug)]
pub struct SharedMemory {
    ptr: NonNull<u8>,
    len: NonZeroUsize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain memory owned by this value; access goes
// through `&self`/`&mut self`, so the usual borrow rules serialise it within
// the process. Other processes sharing it are the caller's protocol.
unsafe impl Send for SharedMemory {}

impl SharedMemory {
    /// A new memfd of `len` zeroed bytes, mapped.
    pub fn create(name: &str, len: usize) -> io::Result<SharedMemory> {
        let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = memfd_create(&name, MemFdCreateFlag::MFD_CLOEXEC)?;
        let size =
            libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        nix::unistd::ftruncate(&fd, size)?;
        SharedMemory::map(fd)
    }

    /// Map an existing memfd (or any file) whole.
    pub fn map(fd: OwnedFd) -> io::Result<SharedMemory> {
        let len = std::fs::File::from(fd.try_clone()?).metadata()?.len();
        let len = usize::try_from(len)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "empty shared memory"))?;
        // SAFETY: a fresh shared mapping of `len` bytes of `fd`, placed by
        // the kernel (no fixed address, so nothing existing is replaced).
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )?
        };
        Ok(SharedMemory {
            ptr: ptr.cast(),
            len,
            fd,
        })
    }

    /// The memfd, to hand to a keeper.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes for as long as `self`
        // lives; the shared borrow of `self` rules out a `&mut` alias.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len.get()) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and the unique borrow of `self` makes this
        // the only reference into the mapping from this process.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len.get()) }
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `map`, and no
        // slice into it can outlive `self`.
        if let Err(e) = unsafe { munmap(self.ptr.cast(), self.len.get()) } {
            tracing::warn!("munmap of shared memory: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_written_through_one_mapping_show_in_another_of_the_same_fd() {
        let mut a = SharedMemory::create("ebb-test", 8192).expect("create");
        assert!(a.bytes().iter().all(|&b| b == 0));
        a.bytes_mut()[4096..4101].copy_from_slice(b"hello");
        let b = SharedMemory::map(a.fd().try_clone_to_owned().expect("dup")).expect("map");
        assert_eq!(&b.bytes()[4096..4101], b"hello");
        assert_eq!(b.bytes().len(), 8192);
        drop(a);
        assert_eq!(
            &b.bytes()[4096..4101],
            b"hello",
            "outlives the first mapping"
        );
        assert_eq!(b.bytes().as_ptr().align_offset(8), 0);
    }
}
