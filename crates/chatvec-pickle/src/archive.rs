//! The zip archive over the mapped file, handing out the byte ranges of stored entries so their
//! bytes can be read in place.

use std::io::Cursor;
use std::ops::Range;

use crate::error::ZipError;

/// A torch zip archive over the file's bytes.
pub(crate) struct Zip<'a> {
    archive: zip::ZipArchive<Cursor<&'a [u8]>>,
    len: usize,
}

impl<'a> Zip<'a> {
    pub(crate) fn open(file: &'a [u8]) -> Result<Self, ZipError> {
        let archive = zip::ZipArchive::new(Cursor::new(file)).map_err(|e| ZipError::Unreadable(e.to_string()))?;
        Ok(Zip { archive, len: file.len() })
    }

    /// The folder every entry lives in (`archive/` for current torch, the file's stem for
    /// older), found from the one `<folder>/data.pkl` entry; returned with its trailing slash.
    pub(crate) fn archive_prefix(&self) -> Result<String, ZipError> {
        let mut found: Vec<String> = Vec::new();
        for raw in self.archive.file_names_raw() {
            let Ok(name) = std::str::from_utf8(raw) else {
                continue;
            };
            if let Some(dir) = name.strip_suffix("/data.pkl") {
                if !dir.is_empty() && !dir.contains('/') {
                    found.push(format!("{dir}/"));
                }
            } else if name == "data.pkl" {
                found.push(String::new());
            }
        }
        match found.len() {
            0 => Err(ZipError::NoPickle),
            1 => Ok(found.pop().unwrap_or_default()),
            _ => Err(ZipError::ManyPickles(found)),
        }
    }

    /// The absolute byte range of stored entry `name`, or `None` if there is no such entry.
    pub(crate) fn optional_entry(&mut self, name: &str) -> Result<Option<Range<usize>>, ZipError> {
        let Some(idx) = self.archive.index_for_name(name) else {
            return Ok(None);
        };
        let len = self.len;
        let entry = || name.to_string();
        let f =
            self.archive.by_index_raw(idx).map_err(|e| ZipError::BadEntry { entry: entry(), reason: e.to_string() })?;
        if f.compression() != zip::CompressionMethod::Stored {
            return Err(ZipError::Compressed { entry: entry(), method: f.compression().to_string() });
        }
        if f.encrypted() {
            return Err(ZipError::Encrypted(entry()));
        }
        if f.compressed_size() != f.size() {
            return Err(ZipError::SizesDisagree { entry: entry(), compressed: f.compressed_size(), size: f.size() });
        }
        let start = f.data_start().ok_or_else(|| ZipError::NoDataStart(entry()))?;
        let end = start.checked_add(f.size());
        match (usize::try_from(start), end.and_then(|e| usize::try_from(e).ok())) {
            (Ok(s), Some(e)) if e <= len => Ok(Some(s..e)),
            _ => Err(ZipError::PastEnd { entry: entry(), file_len: len }),
        }
    }

    /// Like [`Zip::optional_entry`] but a missing entry is an error.
    pub(crate) fn entry(&mut self, name: &str) -> Result<Range<usize>, ZipError> {
        self.optional_entry(name)?.ok_or_else(|| ZipError::Missing(name.to_string()))
    }
}
