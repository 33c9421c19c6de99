//! Content-defined chunking (FastCDC 2020).
//!
//! Cut points depend on the bytes, not on their offsets, so an insertion near
//! the start of a file shifts only the chunks around it and the rest still
//! deduplicate against the previous version.

use std::io::{self, Read};

use anyhow::Context;
use fastcdc::v2020::StreamCDC;

/// Smallest chunk the chunker cuts (only the last chunk of a file may be shorter).
pub const CHUNK_MIN: u32 = 64 * 1024;
/// Average chunk size the chunker aims for.
pub const CHUNK_AVG: u32 = 256 * 1024;
/// Largest chunk the chunker cuts, and the largest chunk the store accepts.
pub const CHUNK_MAX: u32 = 1024 * 1024;

/// Split a reader into content-defined chunks, calling `f(offset, bytes)` for
/// each in order. Returns total bytes.
pub fn for_each_chunk<R: Read>(
    reader: R,
    mut f: impl FnMut(u64, &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut total = 0u64;
    for chunk in StreamCDC::new(RetryInterrupted(reader), CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) {
        let chunk = chunk
            .map_err(io::Error::from)
            .with_context(|| format!("reading input to chunk at offset {total}"))?;
        f(chunk.offset, &chunk.data)?;
        total += chunk.data.len() as u64;
    }
    Ok(total)
}

/// StreamCDC gives up on the first `Interrupted`; a daemon gets signals, and
/// a signal must not fail an archive.
struct RetryInterrupted<R>(R);

impl<R: Read> Read for RetryInterrupted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn chunks_of(data: &[u8]) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        let total = for_each_chunk(data, |off, bytes| {
            out.push((off, bytes.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(total, data.len() as u64);
        out
    }

    #[test]
    fn sizes_respect_min_and_max_and_are_contiguous() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut random = vec![0u8; 8 << 20];
        rng.fill_bytes(&mut random);
        // Zeros have no cut points at all: every chunk is cut at the maximum.
        for data in [&random[..], &vec![0u8; 3 << 20 | 123][..]] {
            let chunks = chunks_of(data);
            assert!(chunks.len() > 1);
            let mut next = 0;
            for (i, &(off, len)) in chunks.iter().enumerate() {
                assert_eq!(off, next);
                assert!(len <= CHUNK_MAX as usize, "chunk {i} is {len} bytes");
                if i + 1 < chunks.len() {
                    assert!(len >= CHUNK_MIN as usize, "chunk {i} is {len} bytes");
                }
                next += len as u64;
            }
        }
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert!(chunks_of(&[]).is_empty());
    }

    #[test]
    fn callback_error_stops_chunking() {
        let data = vec![0u8; 3 << 20];
        let mut calls = 0;
        let err = for_each_chunk(&data[..], |_, _| {
            calls += 1;
            anyhow::bail!("stop")
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "stop");
        assert_eq!(calls, 1);
    }

    #[test]
    fn read_error_names_the_offset() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk on fire"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(7);
                self.0 -= n;
                Ok(n)
            }
        }
        let err = for_each_chunk(Failing(4 << 20), |_, _| Ok(())).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("at offset") && msg.contains("disk on fire"),
            "{msg}"
        );
    }
}
