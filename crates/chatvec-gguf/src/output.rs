//! The output file: written under a hidden name beside the final path and renamed into place only
//! when complete; removed if dropped before that (an error, Ctrl-C).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use chatvec_format::writer::{ChunkedWrite, WRITE_CHUNK};
use chatvec_format::{Error, OutputPathProblem, Result};

/// A GGUF file being written.
pub struct GgufFile {
    final_path: PathBuf,
    tmp_path: PathBuf,
    out: Option<BufWriter<ChunkedWrite<File>>>,
    /// Removes the temporary file if a truncated input ends the process (see `chatvec_format::fault`).
    _fault_guard: chatvec_format::fault::OutputGuard,
}

impl GgufFile {
    /// Starts writing `path` (refused if it exists, unless `force`, and refused inside any of the
    /// model directories `inputs`); checks that `bytes` fit on the disk.
    pub fn create(path: &Path, force: bool, bytes: u64, inputs: &[&Path]) -> Result<Self> {
        chatvec_format::writer::refuse_file_inside_inputs(inputs, path)?;
        if path.exists() && !force {
            return Err(Error::OutputExists { path: path.to_path_buf() });
        }
        if path.is_dir() {
            return Err(Error::bad_output(path, OutputPathProblem::IsADirectory("model.gguf")));
        }
        let name = path.file_name().ok_or_else(|| Error::bad_output(path, OutputPathProblem::NoFileName))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(Error::bad_output(path, OutputPathProblem::NoParentDirectory));
        }
        let free = fs4::available_space(&parent).map_err(|e| Error::io(&parent, e))?;
        if free < bytes + (16 << 20) {
            return Err(Error::NotEnoughSpace { dir: parent, need: bytes, free });
        }
        let tmp_path = parent.join(format!(".{}.chatvec-tmp-{}", name.to_string_lossy(), std::process::id()));
        let file = File::create(&tmp_path).map_err(|e| Error::io(&tmp_path, e))?;
        Ok(GgufFile {
            final_path: path.to_path_buf(),
            _fault_guard: chatvec_format::fault::guard_output(&tmp_path, false),
            tmp_path,
            out: Some(BufWriter::with_capacity(WRITE_CHUNK, ChunkedWrite(file))),
        })
    }

    /// The file being written (the temporary one), for messages.
    pub fn path(&self) -> &Path {
        &self.tmp_path
    }

    /// The writer.
    pub fn writer(&mut self) -> &mut dyn Write {
        self.out.as_mut().expect("open until commit")
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> Result<()> {
        let out = self.out.take().expect("open until commit");
        let ChunkedWrite(file) = out.into_inner().map_err(|e| Error::io(&self.tmp_path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp_path, e))?;
        std::fs::rename(&self.tmp_path, &self.final_path).map_err(|e| Error::io(&self.final_path, e))
    }
}

impl Drop for GgufFile {
    fn drop(&mut self) {
        if self.out.is_some() {
            self.out = None;
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}
