//! The harness shared by the `cargo fuzz` target (`fuzz/fuzz_targets/pickle.rs`) and the corpus
//! replay test, so both exercise the same code. Not part of the API.

use std::path::Path;

/// Lists the tensors of `data` as a `pytorch_model.bin`; each must lie inside the file.
pub fn torch_zip(data: &[u8]) {
    if let Ok(tensors) = crate::read_torch_zip(Path::new("fuzz.bin"), data) {
        for t in tensors {
            assert!(t.data_start.checked_add(t.data_len).is_some_and(|end| end <= data.len()), "{t:?}");
        }
    }
}
