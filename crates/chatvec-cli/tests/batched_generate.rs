//! `chatvec generate` with several prompts and temperatures answers them as one batch; each
//! answer is the one `generate` gives for that prompt and temperature alone.

mod common;

use common::{chatvec, fixture};

fn runs(args: &[&str]) -> Vec<serde_json::Value> {
    let model = fixture("chat");
    let mut all =
        vec!["generate", "--model", model.to_str().unwrap(), "--seed", "5", "--max-new-tokens", "9", "--json"];
    all.extend_from_slice(args);
    let o = chatvec(&all);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["runs"].as_array().unwrap().clone()
}

#[test]
fn several_prompts_and_temperatures_answer_as_each_alone() {
    let prompts = ["안녕하세요", "대한민국의 수도는 어디인가요? 짧게 답하세요."];
    let batched =
        runs(&["--prompt", prompts[0], "--prompt", prompts[1], "--temperature", "0,0.8", "--batch-size", "3"]);
    assert_eq!(batched.len(), 4);
    for (i, run) in batched.iter().enumerate() {
        let (prompt, temperature) = (prompts[i / 2], ["0", "0.8"][i % 2]);
        let alone = runs(&["--prompt", prompt, "--temperature", temperature]);
        assert_eq!(run["prompt_index"], (i / 2) as u64);
        for key in ["token_ids", "text", "stop", "new_tokens"] {
            assert_eq!(run[key], alone[0][key], "prompt {}, temperature {temperature}: {key}", i / 2);
        }
    }
}
