//! `chatvec generate` on hostile and broken inputs (issue 12): configs with absurd numbers,
//! prompts longer than the context, weights that give NaN, token ids the model lacks, and an
//! answer that ends inside a UTF-8 character. Each fails with one line, or answers correctly.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

use common::{chatvec, fixture, oracle_model, stderr};

fn oracle_messages(dir: &Path) -> PathBuf {
    let oracle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected/generation_oracle.json")).unwrap()).unwrap();
    let path = dir.join("messages.json");
    std::fs::write(&path, oracle["messages"].to_string()).unwrap();
    path
}

fn generate(model: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--greedy"];
    args.extend(extra);
    chatvec(&args)
}

fn set_config(model: &Path, key: &str, value: serde_json::Value) {
    let path = model.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg[key] = value;
    std::fs::write(&path, cfg.to_string()).unwrap();
}

fn json_run(o: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rec: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    rec["runs"][0].clone()
}

#[test]
fn absurd_config_numbers_fail_with_one_line_naming_file_key_and_range() {
    let tmp = tempfile::tempdir().unwrap();
    let model = oracle_model(tmp.path());
    let cases = [
        ("num_hidden_layers", serde_json::json!(4611686018427387904u64)),
        ("num_hidden_layers", serde_json::json!(1000000000000u64)),
        ("rope_theta", serde_json::json!(-1.0)),
        ("rms_norm_eps", serde_json::json!(-1e-5)),
        ("max_position_embeddings", serde_json::json!(0)),
        ("max_position_embeddings", serde_json::json!(1u64 << 40)),
        ("eos_token_id", serde_json::json!([2001, 5000])),
        ("bos_token_id", serde_json::json!(4294967301u64)),
    ];
    for (key, value) in cases {
        let before = std::fs::read(model.join("config.json")).unwrap();
        set_config(&model, key, value.clone());
        let o = generate(&model, &["--prompt", "x", "--max-new-tokens", "1"]);
        let err = assert_error_snapshot!(&o);
        assert!(!err.contains("Some("), "{err}");
        std::fs::write(model.join("config.json"), before).unwrap();
    }
}

#[test]
fn mistral_sliding_window_zero_is_refused_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let model = oracle_model(tmp.path());
    set_config(&model, "architectures", serde_json::json!(["MistralForCausalLM"]));
    set_config(&model, "sliding_window", serde_json::json!(0));
    let o = generate(&model, &["--prompt", "x", "--max-new-tokens", "1"]);
    assert_error_snapshot!(&o);
}

#[test]
fn a_prompt_longer_than_the_context_is_refused_or_truncated_left() {
    let tmp = tempfile::tempdir().unwrap();
    let model = oracle_model(tmp.path());
    let long = "가나다라 ".repeat(2_000);
    let o = generate(&model, &["--prompt", &long, "--max-new-tokens", "4"]);
    assert_error_snapshot!(&o);

    let o = generate(&model, &["--prompt", &long, "--max-new-tokens", "4", "--truncate", "left", "--json"]);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(stderr.contains("warning: the prompt has") && stderr.contains("the context 256"), "{stderr}");
    let run = json_run(&o);
    assert_eq!(run["new_tokens"], 4, "{run}");
}

#[test]
fn generation_stops_at_the_context_limit_with_stop_reason_context() {
    let tmp = tempfile::tempdir().unwrap();
    let model = oracle_model(tmp.path());
    // The oracle prompt is 127 tokens; 1,000 new tokens would run past 256 positions.
    let msgs = oracle_messages(tmp.path());
    let o = generate(&model, &["--messages", msgs.to_str().unwrap(), "--max-new-tokens", "1000", "--json"]);
    let run = json_run(&o);
    assert_eq!(run["stop"]["kind"], "context", "{run}");
    assert_eq!(run["new_tokens"], 256 - 127, "prompt and answer fill the context exactly: {run}");
    let o = generate(&model, &["--messages", msgs.to_str().unwrap(), "--max-new-tokens", "1000"]);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(stderr.contains("stop context full (256 positions)"), "{stderr}");
}

/// Rewrites `model/model.safetensors`: `edit` sees each tensor's name, shape and bytes.
fn rewrite_tensors(model: &Path, mut edit: impl FnMut(&str, &mut Vec<usize>, &mut Vec<u8>)) {
    let path = model.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    for (n, _, shape, data) in &mut owned {
        edit(n, shape, data);
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

/// Rewrites the bf16 tensor `name` through `edit` on its values as f32.
fn edit_tensor(model: &Path, name: &str, edit: impl Fn(&mut [f32], &[usize])) {
    rewrite_tensors(model, |n, shape, data| {
        if n == name {
            let mut vals: Vec<f32> =
                data.chunks(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)).collect();
            edit(&mut vals, shape);
            *data = vals.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect();
        }
    });
}

#[test]
fn nan_weights_stop_generation_with_an_error_not_token_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let model = oracle_model(tmp.path());
    edit_tensor(&model, "model.norm.weight", |v, _| v.fill(f32::NAN));
    let o = generate(&model, &["--prompt", "안녕", "--max-new-tokens", "4"]);
    let err = assert_error_snapshot!(&o);
    assert!(String::from_utf8_lossy(&o.stdout).trim().is_empty(), "nothing is printed as an answer: {err}");
}

#[test]
fn token_ids_beyond_the_model_vocabulary_say_tokenizer_and_model_disagree() {
    let tmp = tempfile::tempdir().unwrap();
    let model = oracle_model(tmp.path());
    // A model with a smaller vocabulary (1000 rows) than its tokenizer's 2008 ids.
    rewrite_tensors(&model, |name, shape, data| {
        if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            data.truncate(1000 * shape[1] * 2);
            shape[0] = 1000;
        }
    });
    set_config(&model, "vocab_size", serde_json::json!(1000));
    set_config(&model, "bos_token_id", serde_json::json!(1));
    set_config(&model, "eos_token_id", serde_json::json!(2));
    let o = generate(&model, &["--prompt", "안녕", "--max-new-tokens", "1"]);
    assert_error_snapshot!(&o);
}

#[test]
fn an_answer_ending_inside_a_character_prints_its_last_bytes_as_transformers_decodes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let model = oracle_model(tmp.path());
    let msgs = oracle_messages(tmp.path());
    // The oracle's first greedy token is 1370 with logit 0.539 (the largest, positive). Make
    // the byte token 'ì' (0xEC, the first byte of a three-byte Hangul syllable) score twice
    // that: greedy decoding then answers with a single incomplete character.
    let tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("tokenizer.json")).unwrap()).unwrap();
    let byte_token = tok["model"]["vocab"]["ì"].as_u64().unwrap() as usize;
    edit_tensor(&model, "lm_head.weight", |v, shape| {
        let h = shape[1];
        let row: Vec<f32> = v[1370 * h..1371 * h].iter().map(|x| x * 2.0).collect();
        v[byte_token * h..(byte_token + 1) * h].copy_from_slice(&row);
    });
    let o = generate(&model, &["--messages", msgs.to_str().unwrap(), "--max-new-tokens", "1", "--json"]);
    let run = json_run(&o);
    assert_eq!(run["token_ids"], serde_json::json!([byte_token]), "{run}");
    // transformers: tokenizer.decode([168]) == '\ufffd' (PreTrainedTokenizerFast on this tokenizer.json).
    assert_eq!(run["text"], "\u{FFFD}", "{run}");
    let o = generate(&model, &["--messages", msgs.to_str().unwrap(), "--max-new-tokens", "1"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "\u{FFFD}\n");
}

#[test]
fn a_huge_prompt_is_refused_by_its_length_before_it_is_tokenized() {
    let tmp = tempfile::tempdir().unwrap();
    let model = oracle_model(tmp.path());
    let messages = tmp.path().join("big.json");
    let content = "가나다라 ".repeat(100_000);
    std::fs::write(&messages, serde_json::json!([{"role": "user", "content": content}]).to_string()).unwrap();
    let started = std::time::Instant::now();
    let o = generate(&model, &["--messages", messages.to_str().unwrap(), "--max-new-tokens", "4"]);
    assert_error_snapshot!(&o);
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
}

/// Runs `chat` on `model` with `input` piped in.
fn chat_piped(model: &Path, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chatvec"))
        .args(["chat", "--model", model.to_str().unwrap(), "--greedy", "--max-new-tokens", "3"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    o
}

#[test]
fn piped_chat_skips_a_line_too_long_or_not_text_answers_the_rest_and_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let model = oracle_model(tmp.path());
    let mut input = "가".repeat(5_000_000).into_bytes();
    input.extend(b"\nhi\n\xff\xfe\nhello\n");
    let o = chat_piped(&model, &input);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(out.lines().count(), 2, "two answers expected: {out:?}");
    assert!(err.contains("error: line 1: 15000001 bytes, more than the model's context can hold; skipped"), "{err}");
    assert!(err.contains("error: line 3: not UTF-8 text; skipped"), "{err}");
    assert!(err.contains("2 line(s) could not be answered"), "{err}");
    // Without bad lines, exit 0.
    let o = chat_piped(&model, b"hi\nhello\n");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn control_characters_in_a_gguf_architecture_name_are_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("m.gguf");
    let o = chatvec(&["export", "gguf", "--model", fixture("target").to_str().unwrap(), "-o", gguf.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // general.architecture = "llama" (a string, type 8, of 5 bytes) becomes ESC [ 2 J BEL.
    let mut bytes = std::fs::read(&gguf).unwrap();
    let key = [&b"general.architecture"[..], &8u32.to_le_bytes(), &5u64.to_le_bytes(), b"llama"].concat();
    let at = bytes.windows(key.len()).position(|w| w == key).expect("the architecture key") + key.len() - 5;
    bytes[at..at + 5].copy_from_slice(b"\x1b[2J\x07");
    std::fs::write(&gguf, bytes).unwrap();
    let tok = fixture("tokenizer");
    let o = chatvec(&[
        "generate",
        "--model",
        gguf.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    let err = assert_error_snapshot!(&o);
    assert!(!err.contains(['\u{1b}', '\u{7}']), "{err:?}");
}
