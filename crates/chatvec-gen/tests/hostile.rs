//! The generation library on hostile inputs (issue 12): weight indexes that point outside the
//! model directory, and the last bytes of a streamed answer.

mod common;

use std::path::Path;

use chatvec_gen::models::CheckpointWeights;
use chatvec_gen::ModelTokenizer;
use common::*;

fn with_index(dir: &Path, shard: &str) {
    let index = serde_json::json!({"weight_map": {"model.norm.weight": shard, "lm_head.weight": "model.safetensors"}});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn weight_index_naming_files_outside_the_model_is_refused() {
    let model = oracle_model_dir();
    let outside = tempfile::tempdir().unwrap();
    std::fs::copy(model.path().join("model.safetensors"), outside.path().join("shard.safetensors")).unwrap();
    let escape = format!("../{}/shard.safetensors", outside.path().file_name().unwrap().to_string_lossy());
    for (name, why) in [
        (escape.as_str(), "not a plain relative path"),
        ("/etc/passwd", "not a plain relative path"),
        ("nope.safetensors", "which is missing"),
    ] {
        with_index(model.path(), name);
        let err = CheckpointWeights::open(model.path()).err().expect("refused").to_string();
        assert!(err.contains("model.safetensors.index.json") && err.contains(name) && err.contains(why), "{err}");
    }
    // A symlink inside the directory that leads out of it.
    std::os::unix::fs::symlink(outside.path().join("shard.safetensors"), model.path().join("link.safetensors"))
        .unwrap();
    with_index(model.path(), "link.safetensors");
    let err = CheckpointWeights::open(model.path()).err().expect("refused").to_string();
    assert!(err.contains("outside the model directory"), "{err}");
    // The same index naming files that are inside opens.
    with_index(model.path(), "model.safetensors");
    assert!(CheckpointWeights::open(model.path()).is_ok());
}

#[test]
fn the_stream_gives_out_held_back_bytes_at_the_end_as_transformers_decodes_them() {
    let tok = ModelTokenizer::load(&fixtures().join("tokenizer")).unwrap();
    // " 밖" then the byte token of 0xEC, the first of the three bytes of a Hangul syllable.
    let ids = [1370, tok.token_to_id("ì").unwrap()];
    let mut stream = tok.stream();
    let mut text = String::new();
    for id in ids {
        text.extend(stream.step(id).unwrap());
    }
    assert_eq!(text, " 밖", "the incomplete character is held back while streaming");
    text.extend(stream.finish().unwrap());
    // transformers: PreTrainedTokenizerFast(tokenizer_file=...).decode([1370, 168]) == ' 밖\ufffd'
    assert_eq!(text, " 밖\u{FFFD}");
    assert_eq!(text, tok.decode(&ids, true).unwrap());
    assert_eq!(stream.finish().unwrap(), None, "nothing is given out twice");
}
