//! Real chat templates (Llama-3/3.1/3.2, Mistral v0.3, Qwen2.5, Gemma-2, EXAONE-3.5, SOLAR)
//! rendered byte for byte as transformers' `apply_chat_template` renders them, with system
//! prompts, several turns, tools, tool calls, and with and without the generation prompt.
//! The expected outputs come from `scripts/make_template_fixtures.py`.

use std::path::PathBuf;

use chatvec_gen::template::TemplateSource;
use chatvec_gen::{ChatTemplate, TokenizerConfig};

fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/chat-templates"))
}

fn template(name: &str, special: &serde_json::Value, now: i64) -> ChatTemplate {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("tokenizer_config.json"), special.to_string()).unwrap();
    let tokenizer = TokenizerConfig::load(tmp.path()).unwrap();
    let path = dir().join(format!("{name}.jinja"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut t = ChatTemplate::compile(text, &tokenizer, TemplateSource::File(path)).unwrap();
    t.set_clock(now);
    t
}

#[test]
fn real_templates_render_as_transformers_renders_them() {
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap();
    let now = fixture["now_unix"].as_i64().unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 96);
    let mut failures = vec![];
    for case in cases {
        let name = case["template"].as_str().unwrap();
        let mut t = template(name, &case["special_tokens"], now);
        let tools = Some(&case["tools"]).filter(|v| !v.is_null());
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let got = t.render_with_tools(&case["messages"], tools, gen);
        let label = format!("{name} / {} / add_generation_prompt={gen}", case["conversation"]);
        match (case.get("output").and_then(|o| o.as_str()), got) {
            (Some(want), Ok(got)) if got == want => {}
            (Some(want), got) => failures.push(format!("{label}:\n  want {want:?}\n  got  {got:?}")),
            (None, Err(e)) => {
                let want = case["error"].as_str().unwrap();
                if !e.to_string().contains(want) {
                    failures.push(format!("{label}: error {e} lacks {want:?}"));
                }
            }
            (None, Ok(got)) => failures.push(format!("{label}: rendered {got:?}, transformers refused")),
        }
    }
    assert!(failures.is_empty(), "{} of {} differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
