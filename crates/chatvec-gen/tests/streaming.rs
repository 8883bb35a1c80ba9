//! Incremental decoding of Korean and one-line errors for bad model directories.

mod common;

use candle_core::{DType, Device};
use chatvec_gen::{Model, ModelTokenizer};

#[test]
fn korean_streams_syllable_by_syllable() {
    let tok = ModelTokenizer::load(&common::fixtures().join("tokenizer")).unwrap();
    // No ASCII at all: a decoder that waits for an ASCII character would print nothing until
    // the end.
    let text = "대한민국은민주공화국이다모든권력은국민으로부터나온다";
    let ids = tok.encode(text, false).unwrap();
    assert!(ids.len() > 4);
    let mut stream = tok.stream();
    let mut chunks = Vec::new();
    let mut emitted_at = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        if let Some(chunk) = stream.step(id).unwrap() {
            chunks.push(chunk);
            emitted_at.push(i);
        }
    }
    assert_eq!(chunks.concat(), text);
    assert_eq!(chunks.concat(), tok.decode(&ids, true).unwrap());
    assert!(chunks.iter().all(|c| !c.contains('\u{fffd}')));
    // Text appears while tokens are still arriving, not all at the end.
    assert!(chunks.len() >= ids.len() / 2, "{chunks:?}");
    assert!(emitted_at[0] < ids.len() / 2);
}

#[test]
fn split_hangul_bytes_wait_for_the_whole_syllable() {
    let tok = ModelTokenizer::load(&common::fixtures().join("tokenizer")).unwrap();
    // Byte-level tokens for the three UTF-8 bytes of one syllable (ByteLevel maps them to
    // printable stand-ins), fed one at a time.
    let bytes: Vec<u32> = "헌".bytes().map(|b| byte_token(&tok, b)).collect();
    let mut stream = tok.stream();
    assert_eq!(stream.step(bytes[0]).unwrap(), None);
    assert_eq!(stream.step(bytes[1]).unwrap(), None);
    assert_eq!(stream.step(bytes[2]).unwrap().as_deref(), Some("헌"));
}

/// The id of the single-byte token for `b` in a GPT-2 style byte-level vocabulary.
fn byte_token(tok: &ModelTokenizer, b: u8) -> u32 {
    let ch = gpt2_byte_char(b);
    tok.token_to_id(&ch.to_string()).expect("byte token")
}

fn gpt2_byte_char(b: u8) -> char {
    let printable = |c: u8| (b'!'..=b'~').contains(&c) || (0xa1..=0xac).contains(&c) || (0xae..=0xff).contains(&c);
    if printable(b) {
        return b as char;
    }
    let mut n = 0u32;
    for c in 0..=255u8 {
        if !printable(c) {
            if c == b {
                return char::from_u32(256 + n).unwrap();
            }
            n += 1;
        }
    }
    unreachable!()
}

#[test]
fn bad_model_dirs_give_one_line_errors() {
    let missing =
        Model::load(std::path::Path::new("/nonexistent/model"), &Device::Cpu, DType::F32).unwrap_err().to_string();
    assert!(missing.contains("/nonexistent/model") && missing.contains("not a directory"), "{missing}");

    let empty = tempfile::tempdir().unwrap();
    let err = Model::load(empty.path(), &Device::Cpu, DType::F32).unwrap_err().to_string();
    assert!(err.contains("no config.json"), "{err}");

    let dir = common::oracle_model_dir();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = Model::load(dir.path(), &Device::Cpu, DType::F32).unwrap_err().to_string();
    assert!(err.contains("no weights found") && err.contains("model.safetensors"), "{err}");

    let dir = common::oracle_model_dir();
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("LlamaForCausalLM", "FalconForCausalLM");
    std::fs::write(&cfg, text).unwrap();
    let err = Model::load(dir.path(), &Device::Cpu, DType::F32).unwrap_err().to_string();
    assert!(err.contains("FalconForCausalLM") && err.contains("Qwen2ForCausalLM"), "{err}");

    let dir = common::oracle_model_dir();
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("\"hidden_size\": 64", "\"hidden_size\": 32");
    std::fs::write(&cfg, text).unwrap();
    let err = Model::load(dir.path(), &Device::Cpu, DType::F32).unwrap_err().to_string();
    assert!(err.contains("model.embed_tokens.weight has shape"), "{err}");

    for e in [missing, err] {
        assert!(!e.contains('\n'), "{e}");
    }
}

/// Byte-fallback tokenizers (Mistral, Gemma) turn a stray continuation byte and the bytes before
/// it into U+FFFD when the whole answer is decoded, which the tokenizers crate's stream decoder
/// reports as an error ("Invalid prefix"). Random and badly merged models generate such ids. The
/// stream goes on, and the answer has as many characters as transformers' decode of the same
/// ids, with the same text after the bad bytes (expected strings from transformers 5.24).
#[test]
fn stray_bytes_in_byte_fallback_tokenizers_do_not_stop_the_stream() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/arch");
    for (model, ids, transformers) in [
        ("mistral", [127u32, 193, 122, 400], "\u{fffd}\u{fffd}\u{fffd} vi"),
        ("gemma", [227, 244, 145, 458], "\u{fffd}\u{fffd}\u{fffd} forest"),
    ] {
        let tok = ModelTokenizer::load(&data.join(model)).unwrap();
        let mut stream = tok.stream();
        let mut text = String::new();
        for id in ids {
            text.extend(stream.step(id).unwrap());
        }
        text.extend(stream.finish().unwrap());
        assert_eq!(text.chars().count(), transformers.chars().count(), "{model}: {text:?}");
        let tail: String = transformers.chars().skip(1).collect();
        assert!(text.ends_with(&tail), "{model}: {text:?} vs {transformers:?}");
    }
}
