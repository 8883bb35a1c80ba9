//! A [`TensorSink`] that writes GGUF: a merge's output blocks (`chatvec merge --gguf`) go straight
//! into a GGUF file, in the same single pass and flat memory as a safetensors merge, with no
//! directory in between. The merge that drives it lives in the CLI, so this crate needs no merge engine.

use chatvec_format::{Error, Result, TensorSink};

use crate::encode::TensorEncoder;
use crate::export::sources_dtype;
use crate::output::GgufFile;
use crate::plan::{GgufPlan, Origin, SourceTensor};

/// Takes a merge's tensors, in the plan's order, and writes them as GGUF.
pub struct GgufSink<'a> {
    plan: &'a GgufPlan,
    sources: &'a [SourceTensor],
    file: GgufFile,
    next: usize,
    current: Option<(TensorEncoder<'a>, usize)>,
}

impl<'a> GgufSink<'a> {
    /// Starts the file: writes the header.
    pub fn start(plan: &'a GgufPlan, sources: &'a [SourceTensor], mut file: GgufFile) -> Result<Self> {
        file.writer().write_all(&plan.header).map_err(|e| Error::io(file.path(), e))?;
        Ok(GgufSink { plan, sources, file, next: 0, current: None })
    }

    /// Writes computed tensors up to the next input tensor and starts encoding that one.
    fn advance(&mut self) -> Result<()> {
        let align = self.plan.meta.alignment();
        while let Some(t) = self.plan.tensors.get(self.next) {
            self.next += 1;
            let mut enc = TensorEncoder::new(t, sources_dtype(t, self.sources));
            match &t.origin {
                Origin::Computed(values) => {
                    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    enc.feed(&bytes, self.file.writer())?;
                    enc.finish(align, self.file.writer())?;
                }
                Origin::Input(i) => {
                    let s = &self.sources[*i];
                    let len = s.shape.iter().product::<usize>() * s.dtype.size();
                    self.current = Some((enc, len));
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Checks that every tensor arrived and moves the file into place.
    pub fn finish(mut self) -> Result<()> {
        if self.current.is_none() {
            self.advance()?;
        }
        if self.current.is_some() || self.next < self.plan.tensors.len() {
            return Err(Error::LayoutIncomplete);
        }
        self.file.commit()
    }
}

impl TensorSink for GgufSink<'_> {
    fn buffer(&self, len: usize) -> Vec<u8> {
        vec![0; len]
    }

    fn push(&mut self, block: Vec<u8>) -> Result<()> {
        if self.current.is_none() {
            self.advance()?;
        }
        let align = self.plan.meta.alignment();
        let (mut enc, left) = self.current.take().ok_or(Error::LayoutOverflow)?;
        enc.feed(&block, self.file.writer())?;
        let left = left.checked_sub(block.len()).ok_or(Error::LayoutOverflow)?;
        if left == 0 {
            enc.finish(align, self.file.writer())?;
            self.advance()?;
        } else {
            self.current = Some((enc, left));
        }
        Ok(())
    }
}
