//! Opening dataset files that may or may not be gzip-compressed.
//!
//! Compression is detected by the gzip magic bytes (`1f 8b`), not by the file name, so a
//! `.gz` name on raw data (or the reverse) still loads. Readers are capped: a file can never
//! make a loader allocate more than the caller's limit, however large the archive claims to be.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::DataError;

/// The two bytes every gzip member starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Deflate cannot expand data by more than about 1032:1; a header claiming more than this many
/// bytes per compressed byte is lying.
pub(crate) const MAX_DEFLATE_RATIO: u64 = 1032;

/// A file opened for reading, transparently decompressed when it is gzip.
pub(crate) struct Opened {
    /// The decompressed byte stream.
    pub reader: Box<dyn Read>,
    /// The size of the file on disk.
    pub file_len: u64,
    /// Whether the file is gzip-compressed.
    pub gzip: bool,
}

impl Opened {
    /// The most decompressed bytes this file could possibly yield.
    pub fn max_content_len(&self) -> u64 {
        if self.gzip {
            self.file_len.saturating_mul(MAX_DEFLATE_RATIO)
        } else {
            self.file_len
        }
    }
}

/// Opens `path`, detecting gzip by its magic bytes.
pub(crate) fn open(path: &Path) -> Result<Opened, DataError> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        match file.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DataError::io(path, e)),
        }
    }
    let gzip = got == 2 && magic == GZIP_MAGIC;
    let prefix = std::io::Cursor::new(magic[..got].to_vec());
    let raw = BufReader::with_capacity(1 << 16, prefix.chain(file));
    let reader: Box<dyn Read> = if gzip {
        Box::new(MultiGzDecoder::new(raw))
    } else {
        Box::new(raw)
    };
    Ok(Opened {
        reader,
        file_len,
        gzip,
    })
}

/// Reads all of `path` (decompressed), refusing more than `limit` bytes.
pub(crate) fn read_all(path: &Path, limit: u64) -> Result<Vec<u8>, DataError> {
    let opened = open(path)?;
    let mut out = Vec::new();
    opened
        .reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| DataError::io(path, e))?;
    if out.len() as u64 > limit {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(out)
}

/// Decompresses `bytes` if they are gzip, else returns them; refuses more than `limit` bytes.
/// `name` is used in errors (for data embedded in the binary).
pub(crate) fn decode_bytes(name: &Path, bytes: &[u8], limit: u64) -> Result<Vec<u8>, DataError> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::new();
    MultiGzDecoder::new(bytes)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| DataError::io(name, e))?;
    if out.len() as u64 > limit {
        return Err(DataError::TooLarge {
            path: name.to_path_buf(),
            limit,
        });
    }
    Ok(out)
}
