//! Size-capped reading of a model's JSON metadata files (config.json, generation_config.json,
//! tokenizer_config.json, special_tokens_map.json, the weight index): a hostile or broken file
//! of gigabytes is refused in one line before it is read, locally and from the hub alike.

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// The largest JSON metadata file read. The largest real ones are weight indexes of
/// hundred-thousand-tensor models (DeepSeek-V3's is 9 MB) and tokenizer configs with big
/// added-token tables (about 1 MB); a 256 MB index would cost about 2 GB of memory to parse.
pub const MAX_METADATA_BYTES: u64 = 32 << 20;

/// Whether `file` (a repository path) is a JSON metadata file that [`read_metadata`] caps:
/// every `.json` but `tokenizer.json`, whose vocabulary can be large and which the tokenizer
/// library reads itself.
pub fn is_capped_metadata(file: &str) -> bool {
    let name = file.rsplit('/').next().unwrap_or(file);
    name.ends_with(".json") && name != "tokenizer.json"
}

/// The text of the JSON metadata file `path`, refused when it is over
/// [`MAX_METADATA_BYTES`] (checked on its size, then while reading, for files that grow or are
/// not regular files).
pub fn read_metadata(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let too_large = |size: u64| Error::MetadataTooLarge { path: path.to_path_buf(), size, cap: MAX_METADATA_BYTES };
    if size > MAX_METADATA_BYTES {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_METADATA_BYTES + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_METADATA_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|_| Error::NotUtf8 { path: path.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metadata_file_over_the_cap_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_METADATA_BYTES + 1).unwrap();
        let err = read_metadata(&path).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("larger than"), "{err}");
        f.set_len(3).unwrap();
        std::fs::write(&path, "{}\n").unwrap();
        assert_eq!(read_metadata(&path).unwrap(), "{}\n");
    }

    #[test]
    fn only_tokenizer_json_escapes_the_cap() {
        assert!(is_capped_metadata("model.safetensors.index.json"));
        assert!(is_capped_metadata("sub/config.json"));
        assert!(!is_capped_metadata("tokenizer.json"));
        assert!(!is_capped_metadata("model.safetensors"));
    }
}
