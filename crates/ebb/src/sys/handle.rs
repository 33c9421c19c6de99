//! File handles: `name_to_handle_at(2)` / `open_by_handle_at(2)`. A handle
//! names a file on its filesystem independently of its path, so the catalog
//! can find a file again after a rename and tell a reused inode number apart.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::str::FromStr;

/// `MAX_HANDLE_SZ`.
const MAX_HANDLE_SZ: usize = 128;

/// An opaque, filesystem-specific handle of one file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileHandle {
    pub handle_type: i32,
    pub bytes: Vec<u8>,
}

impl FileHandle {
    pub fn as_ref(&self) -> HandleRef<'_> {
        HandleRef {
            handle_type: self.handle_type,
            bytes: &self.bytes,
        }
    }
}

/// A [`FileHandle`] where it lies (in an event buffer). It hashes as the
/// owned one does, so a map keyed by `FileHandle` is searched with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HandleRef<'a> {
    pub handle_type: i32,
    pub bytes: &'a [u8],
}

impl HandleRef<'_> {
    pub fn to_owned(self) -> FileHandle {
        FileHandle {
            handle_type: self.handle_type,
            bytes: self.bytes.to_vec(),
        }
    }
}

impl hashbrown::Equivalent<FileHandle> for HandleRef<'_> {
    fn equivalent(&self, key: &FileHandle) -> bool {
        *self == key.as_ref()
    }
}

impl fmt::Display for FileHandle {
    /// `<type>:<hex bytes>`, the form stored in the catalog.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.handle_type, hex::encode(&self.bytes))
    }
}

impl FromStr for FileHandle {
    type Err = io::Error;
    fn from_str(s: &str) -> io::Result<Self> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad file handle {s:?}"));
        let (t, h) = s.split_once(':').ok_or_else(bad)?;
        Ok(FileHandle {
            handle_type: t.parse().map_err(|_| bad())?,
            bytes: hex::decode(h).map_err(|_| bad())?,
        })
    }
}

/// The `struct file_handle` header followed by room for the biggest handle.
#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// The handle of the file `file` refers to, and its mount id.
#[doc(alias = "name_to_handle_at")]
pub fn handle_of(file: BorrowedFd<'_>) -> io::Result<(FileHandle, i32)> {
    let mut raw = RawHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    let empty = CString::default();
    // SAFETY: `raw` starts with a `struct file_handle` header whose
    // `handle_bytes` says how much room follows; `empty` is a valid C string.
    let rc = unsafe {
        libc::name_to_handle_at(
            file.as_raw_fd(),
            empty.as_ptr(),
            (&mut raw as *mut RawHandle).cast(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok((
        FileHandle {
            handle_type: raw.handle_type,
            bytes: raw.f_handle[..len].to_vec(),
        },
        mount_id,
    ))
}

/// Open the file named by `handle` on the filesystem of `mount_fd`.
#[doc(alias = "open_by_handle_at")]
pub fn open_by_handle(
    mount_fd: BorrowedFd<'_>,
    handle: &FileHandle,
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    if handle.bytes.len() > MAX_HANDLE_SZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut raw = RawHandle {
        handle_bytes: handle.bytes.len() as u32,
        handle_type: handle.handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    raw.f_handle[..handle.bytes.len()].copy_from_slice(&handle.bytes);
    // SAFETY: `raw` is a valid `struct file_handle` with its payload.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            (&mut raw as *mut RawHandle).cast(),
            flags | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd just returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_map_of_handles_is_searched_with_borrowed_ones() {
        let handles: Vec<FileHandle> = (0..1000u32)
            .map(|i| FileHandle {
                handle_type: (i % 3) as i32,
                bytes: i.to_ne_bytes().repeat(2),
            })
            .collect();
        let map: hashbrown::HashMap<FileHandle, u32> = handles.iter().cloned().zip(0..).collect();
        for (i, h) in handles.iter().enumerate() {
            let bytes = h.bytes.clone();
            let borrowed = HandleRef {
                handle_type: h.handle_type,
                bytes: &bytes,
            };
            assert_eq!(map.get(&borrowed), Some(&(i as u32)));
            assert_eq!(borrowed.to_owned(), *h);
        }
        let other = HandleRef {
            handle_type: 5,
            bytes: &[0, 0, 0, 0, 0, 0, 0, 0],
        };
        assert_eq!(map.get(&other), None);
    }

    #[test]
    fn handle_roundtrips_through_text_and_reopens_the_same_inode() {
        crate::require_root!();
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let (h, _mnt) = handle_of(file.as_fd()).expect("handle");
        let parsed: FileHandle = h.to_string().parse().expect("parse");
        assert_eq!(parsed, h);
        let root = std::fs::File::open(dir.path()).expect("dir");
        let again = std::fs::File::from(
            open_by_handle(root.as_fd(), &parsed, libc::O_RDONLY).expect("open_by_handle"),
        );
        assert_eq!(
            again.metadata().expect("stat").ino(),
            file.metadata().expect("stat").ino()
        );
    }
}
