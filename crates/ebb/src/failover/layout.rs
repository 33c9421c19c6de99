//! Reading and writing the fields of ebb's shared-memory tables (the
//! in-flight table, the fill journal): native-endian integers and file
//! handles, at byte offsets their layouts document.

use crate::sys::handle::FileHandle;

/// Room for a handle (`MAX_HANDLE_SZ`).
pub const HANDLE_MAX: usize = 128;
/// A stored handle: `type i32 | len u32 | bytes [u8; HANDLE_MAX]`.
pub const HANDLE_FIELD: usize = 8 + HANDLE_MAX;

pub fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

pub fn get_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_ne_bytes(a)
}

pub fn put_i64(b: &mut [u8], at: usize, v: i64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// Store `handle` at `at`; `false` (nothing written) if it is too long.
pub fn put_handle(b: &mut [u8], at: usize, handle: &FileHandle) -> bool {
    let len = handle.bytes.len();
    if len > HANDLE_MAX {
        return false;
    }
    put_u32(b, at, handle.handle_type as u32);
    put_u32(b, at + 4, len as u32);
    b[at + 8..at + 8 + len].copy_from_slice(&handle.bytes);
    true
}

/// The handle stored at `at`, unless its length is out of bounds.
pub fn get_handle(b: &[u8], at: usize) -> Option<FileHandle> {
    let len = get_u32(b, at + 4) as usize;
    (len <= HANDLE_MAX).then(|| FileHandle {
        handle_type: get_u32(b, at) as i32,
        bytes: b[at + 8..at + 8 + len].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_as_written_and_oversized_handles_are_refused() {
        let mut b = vec![0u8; 64 + HANDLE_FIELD];
        put_u32(&mut b, 4, 0xdead_beef);
        put_i64(&mut b, 8, -42);
        let h = FileHandle {
            handle_type: 7,
            bytes: vec![1, 2, 3],
        };
        assert!(put_handle(&mut b, 64, &h));
        assert_eq!((get_u32(&b, 4), get_i64(&b, 8)), (0xdead_beef, -42));
        assert_eq!(get_handle(&b, 64), Some(h));
        let big = FileHandle {
            handle_type: 1,
            bytes: vec![0; HANDLE_MAX + 1],
        };
        assert!(!put_handle(&mut b, 64, &big));
        put_u32(&mut b, 68, 999);
        assert_eq!(get_handle(&b, 64), None, "a damaged length is not trusted");
    }
}
