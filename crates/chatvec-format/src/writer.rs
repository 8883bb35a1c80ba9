//! Writing a model directory: sharded safetensors whose tensors are written in place, in pieces,
//! from the threads that compute them, into a hidden temporary directory beside the output that is
//! renamed into place only when complete.
//!
//! The safetensors crate's serializer wants every tensor as one contiguous buffer; an 8B model's
//! embedding is 1 GB, so the header (a small JSON object) is written here and the data streamed.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::checkpoint::MappedBytes;
use crate::error::OutputPathProblem;
use crate::{Error, Result};

/// A hidden directory beside the final output; removed on drop unless [`commit`](Self::commit)ed,
/// so an error or Ctrl-C never leaves an output that looks complete.
#[derive(Debug)]
pub struct OutputDir {
    final_path: PathBuf,
    tmp_path: PathBuf,
    force: bool,
    committed: bool,
    /// Removes the temporary directory if a truncated input ends the process (see `fault`).
    _fault_guard: crate::fault::OutputGuard,
}

impl OutputDir {
    /// Prepares to write `out`. An existing `out` is refused unless `force`.
    pub fn create(out: &Path, force: bool) -> Result<Self> {
        if out.exists() && !force {
            return Err(Error::OutputExists { path: out.to_path_buf() });
        }
        let name = out.file_name().ok_or_else(|| Error::bad_output(out, OutputPathProblem::NoFileName))?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if parent.exists() && !parent.is_dir() {
            return Err(Error::bad_output(out, OutputPathProblem::ParentNotADirectory(parent)));
        }
        if !parent.is_dir() {
            return Err(Error::bad_output(out, OutputPathProblem::NoParentDirectory));
        }
        let prefix = format!(".{}.chatvec-tmp-", name.to_string_lossy());
        remove_stale_temp_dirs(&parent, &prefix);
        let tmp_path = parent.join(format!("{prefix}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp_path);
        std::fs::create_dir(&tmp_path).map_err(|e| Error::io(&tmp_path, e))?;
        let _fault_guard = crate::fault::guard_output(&tmp_path, true);
        Ok(OutputDir { final_path: out.to_path_buf(), tmp_path, force, committed: false, _fault_guard })
    }

    /// The directory being written (the temporary one).
    pub fn path(&self) -> &Path {
        &self.tmp_path
    }

    /// The directory the output will have.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Moves the finished directory into place (replacing an old output when forced).
    pub fn commit(mut self) -> Result<()> {
        if self.final_path.exists() {
            if !self.force {
                return Err(Error::OutputAppeared { path: self.final_path.clone() });
            }
            let old = self.tmp_path.with_extension("old");
            std::fs::rename(&self.final_path, &old).map_err(|e| Error::io(&self.final_path, e))?;
            std::fs::rename(&self.tmp_path, &self.final_path).map_err(|e| Error::io(&self.final_path, e))?;
            let _ = if old.is_dir() { std::fs::remove_dir_all(&old) } else { std::fs::remove_file(&old) };
        } else {
            std::fs::rename(&self.tmp_path, &self.final_path).map_err(|e| Error::io(&self.final_path, e))?;
        }
        self.committed = true;
        Ok(())
    }
}

/// Removes `parent/{prefix}PID[.old]` directories left by runs that were killed (`kill -9`, a
/// crash): their process is gone. Directories of live processes (another run writing the same
/// output) are left alone; where liveness cannot be told (no `/proc`), nothing is removed.
fn remove_stale_temp_dirs(parent: &Path, prefix: &str) {
    let proc_fs = Path::new("/proc");
    if !proc_fs.join("self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else { continue };
        let pid = pid.strip_suffix(".old").unwrap_or(pid);
        let is_pid = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
        if is_pid && !proc_fs.join(pid).exists() && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp_path);
        }
    }
}

/// One tensor as it will be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name.
    pub name: String,
    /// safetensors dtype name (`BF16`, `F32`, `I64`, ...).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Size in bytes.
    pub bytes: usize,
    /// Where the caller lists the tensor (a run's plan index), so that it can stream the tensors
    /// in the order the shards store them.
    pub index: usize,
}

/// One output file and the tensors it holds, in write order.
#[derive(Debug, Clone)]
pub struct Shard {
    /// File name, e.g. `model-00001-of-00002.safetensors`.
    pub file: String,
    /// Its tensors in data order.
    pub tensors: Vec<TensorSpec>,
}

/// Splits tensors into shards of at most `max_bytes` (a tensor larger than that gets its own
/// shard), named as transformers names them; inside a shard wider elements come first so every
/// tensor's data stays aligned to its element size.
pub fn plan_shards(tensors: Vec<TensorSpec>, max_bytes: u64, stem: &str) -> Vec<Shard> {
    let mut groups: Vec<Vec<TensorSpec>> = vec![];
    let mut size = 0u64;
    for t in tensors {
        if groups.is_empty() || (size > 0 && size + t.bytes as u64 > max_bytes) {
            groups.push(vec![]);
            size = 0;
        }
        size += t.bytes as u64;
        groups.last_mut().expect("pushed above").push(t);
    }
    let n = groups.len();
    groups
        .into_iter()
        .enumerate()
        .map(|(i, mut tensors)| {
            tensors.sort_by_key(|t| std::cmp::Reverse(elem_size(&t.dtype)));
            let file = if n == 1 {
                format!("{stem}.safetensors")
            } else {
                format!("{stem}-{:05}-of-{n:05}.safetensors", i + 1)
            };
            Shard { file, tensors }
        })
        .collect()
}

fn elem_size(dtype: &str) -> usize {
    match dtype {
        "F64" | "I64" | "U64" | "C64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        _ => 1,
    }
}

/// The safetensors header of a shard: length prefix + JSON, padded to 8 bytes.
pub(crate) fn shard_header(shard: &Shard) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    obj.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut off = 0usize;
    for t in &shard.tensors {
        obj.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [off, off + t.bytes]}),
        );
        off += t.bytes;
    }
    let mut json = serde_json::to_vec(&obj).expect("a JSON map serialises");
    while !(json.len() + 8).is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out
}

/// Writes `model.safetensors.index.json` for a multi-shard layout (nothing for one shard).
pub fn write_index(dir: &Path, shards: &[Shard], stem: &str) -> Result<()> {
    if shards.len() < 2 {
        return Ok(());
    }
    let total: usize = shards.iter().flat_map(|s| &s.tensors).map(|t| t.bytes).sum();
    let mut weight_map = std::collections::BTreeMap::new();
    for s in shards {
        for t in &s.tensors {
            weight_map.insert(t.name.clone(), s.file.clone());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let path = dir.join(format!("{stem}.safetensors.index.json"));
    write_json(&path, &index)
}

/// Writes pretty JSON (two-space indent, trailing newline, as transformers does) to `path`.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).expect("JSON value serialises");
    text.push('\n');
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// The most bytes handed to the kernel in one `write` call.
///
/// Measured on Linux 6.18/ext4 (this project's bench machine, a C loop of `pwrite` calls):
/// writing 3 GB into the page cache took 1.2–1.4 s of system time in 64–256 KiB calls but
/// 4.7–8.8 s in 1–16 MiB calls. Small calls cost nothing elsewhere: 12 k system calls for 3 GB.
pub const WRITE_CHUNK: usize = 256 << 10;

/// Asks the kernel to start writing `len` bytes at `offset` of `file` to disk, without waiting,
/// so the final sync finds most pages clean and the disk works while later blocks are computed.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads its arguments; a failure leaves the pages to the
    // kernel's own writeback (the final sync still writes them).
    unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// How far behind the newest written byte a streaming shard's pages are synced and dropped from
/// the page cache: the writeback started on the last few blocks is left to run.
const DROP_LAG: u64 = 64 << 20;

/// Waits until `len` bytes at `offset` of `file` are on disk, then drops them from the page cache.
#[cfg(target_os = "linux")]
fn sync_and_drop(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: both calls only read their arguments; a failure leaves the pages cached (the final
    // sync still writes them).
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags);
        libc::posix_fadvise(file.as_raw_fd(), offset as i64, len as i64, libc::POSIX_FADV_DONTNEED);
    }
}

#[cfg(not(target_os = "linux"))]
fn sync_and_drop(_file: &File, _offset: u64, _len: u64) {}

/// A writer that hands at most [`WRITE_CHUNK`] bytes to each `write` of the inner writer.
pub struct ChunkedWrite<W: Write>(pub W);

impl<W: Write> Write for ChunkedWrite<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(&buf[..buf.len().min(WRITE_CHUNK)])
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Where a run's output tensor data goes: the safetensors [`ShardWriter`], or another format's
/// writer (GGUF). Blocks arrive in the order the run was given, each belonging to one tensor, in
/// the tensor's planned dtype; a tensor's blocks together are exactly its bytes.
pub trait TensorSink {
    /// A buffer of `len` bytes for the next block, reused from written blocks where possible:
    /// its bytes are not cleared, so the caller writes every one of them.
    fn buffer(&self, len: usize) -> Vec<u8>;
    /// Takes the next block; fails with the sink's error if it stopped.
    fn push(&mut self, block: Vec<u8>) -> Result<()>;
    /// Takes the next block as bytes of an input (a copied tensor), which a sink may write
    /// without copying them first; by default they are copied into a [`buffer`](Self::buffer).
    fn push_mapped(&mut self, bytes: MappedBytes) -> Result<()> {
        let mut block = self.buffer(bytes.len());
        block.copy_from_slice(&bytes);
        self.push(block)
    }
    /// Where the tensor the run lists as `index` is stored, when this sink takes its bytes at any
    /// position and from any thread (then the run writes small pieces as they are computed,
    /// while they are still in the CPU's cache, instead of pushing blocks in order).
    fn place(&self, _index: usize) -> Option<TensorPlace<'_>> {
        None
    }
}

/// The bytes of one output tensor in its shard file, written at any position from any thread.
#[derive(Clone, Copy)]
pub struct TensorPlace<'a> {
    file: &'a ShardFile,
    /// The tensor's offset in the file.
    offset: u64,
    /// Its size in bytes.
    len: usize,
    name: &'a str,
}

impl TensorPlace<'_> {
    /// Writes `bytes` at byte `at` of the tensor.
    pub fn write_at(&self, at: usize, bytes: &[u8]) -> Result<()> {
        if at + bytes.len() > self.len {
            return Err(Error::tensor(self.name, "more data than its shape holds (internal error)"));
        }
        let mut pos = self.offset + at as u64;
        for piece in bytes.chunks(WRITE_CHUNK) {
            self.file.file.write_all_at(piece, pos).map_err(|source| Error::WriteTensor {
                path: self.file.path.clone(),
                tensor: self.name.to_string(),
                source,
            })?;
            pos += piece.len() as u64;
        }
        Ok(())
    }

    /// Says that bytes `range` of the tensor are written: the kernel starts writing them to disk
    /// (and, for a streaming writer, the file's pages [`DROP_LAG`] behind are synced and dropped).
    pub fn written(&self, range: std::ops::Range<usize>) {
        let start = self.offset + range.start as u64;
        start_writeback(&self.file.file, start, range.len() as u64);
        if let Some(dropped) = &self.file.dropped_to {
            let to = start.saturating_sub(DROP_LAG);
            let from = dropped.fetch_max(to, Ordering::Relaxed);
            if from < to {
                sync_and_drop(&self.file.file, from, to - from);
            }
        }
    }
}

/// One shard file being written.
struct ShardFile {
    path: PathBuf,
    file: File,
    /// For a streaming writer: the offset below which pages were synced and dropped.
    dropped_to: Option<AtomicU64>,
}

/// A tensor's place in the layout: its shard, offset and size.
struct Slot {
    shard: usize,
    offset: u64,
    len: usize,
    name: String,
}

/// Writes tensor data into the shard files of a layout. A run writes each tensor at its
/// [`place`](TensorSink::place) from its worker threads; [`push`](Self::push) writes blocks in
/// layout order instead (for writers that produce tensors one after another).
pub struct ShardWriter {
    files: Vec<ShardFile>,
    /// By the tensors' `index`.
    slots: HashMap<usize, Slot>,
    /// Layout order of the slots, and where the next pushed block goes.
    order: Vec<usize>,
    cursor: (usize, usize),
    total: u64,
}

impl ShardWriter {
    /// Creates the shard files of `shards` in `dir`, each with its header.
    pub fn start(dir: &Path, shards: Vec<Shard>) -> Result<Self> {
        Self::create(dir, shards, false)
    }

    /// As [`Self::start`], for one of several outputs written at once (a merge at several
    /// ratios): written pages are synced and dropped from the page cache as the writing goes on,
    /// so the outputs, together larger than the inputs, do not push the inputs out of it.
    pub fn start_streaming(dir: &Path, shards: Vec<Shard>) -> Result<Self> {
        Self::create(dir, shards, true)
    }

    fn create(dir: &Path, shards: Vec<Shard>, streaming: bool) -> Result<Self> {
        let (mut files, mut slots, mut order, mut total) = (vec![], HashMap::new(), vec![], 0u64);
        for (k, shard) in shards.iter().enumerate() {
            let path = dir.join(&shard.file);
            let mut file = File::create(&path).map_err(|e| Error::io(&path, e))?;
            let header = shard_header(shard);
            file.write_all(&header).map_err(|e| Error::io(&path, e))?;
            let mut offset = header.len() as u64;
            for t in &shard.tensors {
                if slots.insert(t.index, Slot { shard: k, offset, len: t.bytes, name: t.name.clone() }).is_some() {
                    return Err(Error::tensor(&t.name, "listed twice in the layout (internal error)"));
                }
                order.push(t.index);
                offset += t.bytes as u64;
            }
            total += offset;
            files.push(ShardFile { path, file, dropped_to: streaming.then(|| AtomicU64::new(0)) });
        }
        Ok(ShardWriter { files, slots, order, cursor: (0, 0), total })
    }

    /// A buffer for the next pushed block.
    pub fn buffer(&self, len: usize) -> Vec<u8> {
        vec![0; len]
    }

    /// Writes a block of the next tensor data in layout order.
    pub fn push(&mut self, block: Vec<u8>) -> Result<()> {
        self.push_bytes(&block)
    }

    fn push_bytes(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let (i, at) = self.cursor;
            let index = *self.order.get(i).ok_or(Error::LayoutOverflow)?;
            let place = self.place(index).expect("every listed tensor has a slot");
            let n = bytes.len().min(place.len - at);
            place.write_at(at, &bytes[..n])?;
            place.written(at..at + n);
            self.cursor = if at + n == place.len { (i + 1, 0) } else { (i, at + n) };
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Syncs every shard to disk; returns the bytes of the shards (headers included).
    pub fn finish(self) -> Result<u64> {
        // On disk before the directory is renamed into place: a crash never leaves an output that
        // looks complete. Most pages were written back while later tensors were computed.
        for f in &self.files {
            f.file.sync_data().map_err(|e| Error::io(&f.path, e))?;
            if f.dropped_to.is_some() {
                sync_and_drop(&f.file, 0, 0);
            }
        }
        Ok(self.total)
    }
}

impl TensorSink for ShardWriter {
    fn buffer(&self, len: usize) -> Vec<u8> {
        ShardWriter::buffer(self, len)
    }
    fn push(&mut self, block: Vec<u8>) -> Result<()> {
        ShardWriter::push(self, block)
    }
    fn push_mapped(&mut self, bytes: MappedBytes) -> Result<()> {
        self.push_bytes(&bytes)
    }
    fn place(&self, index: usize) -> Option<TensorPlace<'_>> {
        let slot = self.slots.get(&index)?;
        Some(TensorPlace { file: &self.files[slot.shard], offset: slot.offset, len: slot.len, name: &slot.name })
    }
}

/// `path` with symlinks resolved as far as it exists: its longest existing ancestor
/// canonicalized, then the components that do not exist yet.
pub fn resolve_existing_prefix(path: &std::path::Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut missing = vec![];
    let mut cur = absolute.as_path();
    loop {
        if let Ok(real) = cur.canonicalize() {
            return missing.iter().rev().fold(real, |acc, c| acc.join(c));
        }
        match (cur.file_name(), cur.parent()) {
            (Some(name), Some(parent)) => {
                missing.push(name.to_os_string());
                cur = parent;
            }
            _ => return absolute,
        }
    }
}

/// Refuses a one-file output (a GGUF) at `out` that lies inside one of the model directories
/// `inputs`, a new file there included, whether reached directly or through symlinks: its parent
/// is resolved as far as it exists (the temporary file is written there, and the rename would
/// replace a file of the input). An existing `out` is also refused when it resolves into an
/// input (a hub snapshot's files link into its `blobs/`).
pub fn refuse_file_inside_inputs(inputs: &[&Path], out: &Path) -> Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = out.file_name().unwrap_or_default();
    let placed = resolve_existing_prefix(parent).join(name);
    let target = out.canonicalize().ok();
    for dir in inputs {
        let real = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let inside = |p: &Path| p.starts_with(&real);
        if inside(&placed) || target.as_deref().is_some_and(inside) {
            return Err(Error::OutputInsideInput { path: out.to_path_buf(), input: dir.to_path_buf() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: &str, n: usize) -> TensorSpec {
        let index = name.bytes().map(usize::from).sum();
        TensorSpec { name: name.into(), dtype: dtype.into(), shape: vec![n], bytes: n * elem_size(dtype), index }
    }

    #[test]
    fn tensors_written_in_place_out_of_order_equal_pushed_ones() {
        let tensors = vec![spec("a", "BF16", 3), spec("b", "F32", 5), spec("c", "BF16", 300_000)];
        let shards = plan_shards(tensors.clone(), 30, "model");
        let data = |t: &TensorSpec| -> Vec<u8> { (0..t.bytes).map(|i| (i * 7 + t.index) as u8).collect() };
        let (pushed, placed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut w = ShardWriter::start(pushed.path(), shards.clone()).unwrap();
        shards.iter().flat_map(|s| &s.tensors).for_each(|t| w.push(data(t)).unwrap());
        w.finish().unwrap();
        let w = ShardWriter::start(placed.path(), shards.clone()).unwrap();
        // Backwards, in pieces that cross the write-call size, from several threads.
        std::thread::scope(|scope| {
            for t in tensors.iter().rev() {
                let (place, bytes) = (w.place(t.index).unwrap(), data(t));
                scope.spawn(move || {
                    for (k, piece) in bytes.chunks(WRITE_CHUNK / 3 + 1).enumerate().rev() {
                        place.write_at(k * (WRITE_CHUNK / 3 + 1), piece).unwrap();
                    }
                });
            }
        });
        assert!(w.place(9999).is_none());
        let c = w.place(tensors[2].index).unwrap();
        assert!(c.write_at(tensors[2].bytes - 1, &[0, 0]).unwrap_err().to_string().contains("more data"));
        w.finish().unwrap();
        for s in &shards {
            let (a, b) = (
                std::fs::read(pushed.path().join(&s.file)).unwrap(),
                std::fs::read(placed.path().join(&s.file)).unwrap(),
            );
            assert!(a == b, "{} differs", s.file);
        }
    }

    #[test]
    fn written_shards_parse_with_the_safetensors_crate() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = vec![spec("a", "BF16", 3), spec("b", "F32", 5), spec("c", "BF16", 100)];
        let shards = plan_shards(tensors, 30, "model");
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].file, "model-00001-of-00002.safetensors");
        assert_eq!(shards[0].tensors[0].name, "b", "wider dtype first keeps alignment");
        let mut w = ShardWriter::start(dir.path(), shards.clone()).unwrap();
        for s in &shards {
            for t in &s.tensors {
                let mut b = w.buffer(t.bytes);
                b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8);
                w.push(b).unwrap();
            }
        }
        w.finish().unwrap();
        write_index(dir.path(), &shards, "model").unwrap();
        let bytes = std::fs::read(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("c").unwrap().data().len(), 200);
        assert_eq!(st.tensor("c").unwrap().data()[7], 7);
        let idx: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("model.safetensors.index.json")).unwrap())
                .unwrap();
        assert_eq!(idx["weight_map"]["a"], "model-00001-of-00002.safetensors");
        assert_eq!(idx["metadata"]["total_size"], 226);
    }

    #[test]
    fn temp_dirs_of_dead_processes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // PIDs above the kernel's pid_max (at most 2^22) belong to no process.
        let dead = dir.path().join(".out.chatvec-tmp-4999999");
        let dead_old = dir.path().join(".out.chatvec-tmp-4999998.old");
        let live = dir.path().join(format!(".out.chatvec-tmp-{}", std::os::unix::process::parent_id()));
        let other = dir.path().join(".other.chatvec-tmp-4999999");
        for d in [&dead, &dead_old, &live, &other] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("model-00001-of-00002.safetensors"), "partial").unwrap();
        }
        let o = OutputDir::create(&dir.path().join("out"), false).unwrap();
        assert!(!dead.exists() && !dead_old.exists(), "stale temp dirs of dead processes are removed");
        assert!(live.exists() && other.exists(), "a live process's and another output's are kept");
        drop(o);
    }

    #[test]
    fn output_whose_parent_is_a_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "x").unwrap();
        let err = OutputDir::create(&dir.path().join("file/x"), false).unwrap_err().to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }

    #[test]
    fn uncommitted_output_is_removed_and_existing_output_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        {
            let o = OutputDir::create(&out, false).unwrap();
            std::fs::write(o.path().join("x"), "1").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        std::fs::create_dir(&out).unwrap();
        assert!(OutputDir::create(&out, false).unwrap_err().to_string().contains("--force"));
        let o = OutputDir::create(&out, true).unwrap();
        std::fs::write(o.path().join("new"), "1").unwrap();
        o.commit().unwrap();
        assert!(out.join("new").exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
