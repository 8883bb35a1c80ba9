//! How long-running reads and writes report progress: a trait the CLI implements with a
//! progress bar, so the libraries print nothing.

/// Progress of a run, reported in output bytes.
pub trait Progress: Sync {
    /// Called once with the total.
    fn begin(&self, _total_bytes: u64) {}
    /// Called as blocks are produced.
    fn advance(&self, _bytes: u64) {}
    /// Called at the end.
    fn finish(&self) {}
}

/// A progress sink that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}
