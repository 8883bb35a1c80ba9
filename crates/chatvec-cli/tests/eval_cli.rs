//! `chatvec inspect|eval|report|sweep` as users run them: outputs, image files of the stated
//! size, the perplexity oracle end to end, and one-line errors on bad input.

use std::path::{Path, PathBuf};

mod common;

use common::chatvec;

/// A fixture model's path as an argument.
fn fixture(name: &str) -> String {
    common::fixture(name).display().to_string()
}

fn ok(args: &[&str]) -> String {
    let o = chatvec(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// A failure with exactly one line on stderr containing every needle.
fn fails(args: &[&str], needles: &[&str]) {
    let o = chatvec(args);
    assert!(!o.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for n in needles {
        assert!(err.contains(n), "{err} lacks {n}");
    }
}

/// Width and height from a PNG's IHDR chunk, after checking the signature.
fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
    assert_eq!(&b[12..16], b"IHDR");
    assert_eq!(&b[b.len() - 8..b.len() - 4], b"IEND", "{} is truncated", path.display());
    (u32::from_be_bytes(b[16..20].try_into().unwrap()), u32::from_be_bytes(b[20..24].try_into().unwrap()))
}

fn svg_size(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap();
    assert!(s.trim_end().ends_with("</svg>"), "{} is not a complete SVG", path.display());
    s.lines().next().unwrap().to_string()
}

#[test]
fn inspect_writes_table_json_csv_and_images_of_the_stated_size() {
    let tmp = tempfile::tempdir().unwrap();
    let hm = tmp.path().join("vec");
    let csv = tmp.path().join("vec.csv");
    let (base, chat, target) = (fixture("base"), fixture("chat"), fixture("target"));
    let table = ok(&["inspect", "--base", &base, "--chat", &chat, "-q", "--heatmap", hm.to_str().unwrap()]);
    assert!(table.contains("relative norm") && table.contains("lm_head") && table.contains("model"), "{table}");
    assert_eq!(png_size(&hm.with_extension("png")), (960, 720));
    assert!(svg_size(&hm.with_extension("svg")).starts_with("<svg width=\"960\" height=\"720\""));

    let json = ok(&[
        "inspect",
        "--base",
        &base,
        "--chat",
        &chat,
        "--compare-chat",
        &target,
        "--json",
        "--csv",
        csv.to_str().unwrap(),
        "--heatmap",
        hm.to_str().unwrap(),
        "--plot-size",
        "640x480",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["tensors"].as_array().unwrap().len(), 30);
    assert_eq!(v["layers"].as_array().unwrap().len(), 4);
    let cos = v["layers"][0]["cosine"].as_f64().unwrap();
    assert!((-1.0..=1.0).contains(&cos));
    assert_eq!(png_size(&hm.with_extension("png")), (640, 480));
    assert_eq!(png_size(&tmp.path().join("vec_cosine.png")), (640, 480));
    let csv = std::fs::read_to_string(csv).unwrap();
    assert_eq!(csv.lines().count(), 31);
    assert!(csv.starts_with("name,layer,kind,shape,numel,delta_norm,weight_norm,relative_norm"));

    fails(&["inspect", "--base", &base, "--chat", "/no/such/model"], &["/no/such/model"]);
    fails(&["inspect", "--base", &base], &["--chat", "--vector"]);
    fails(&["inspect", "--base", &base, "--chat", &chat, "--heatmap", "/no/such/dir/h", "-q"], &["/no/such/dir/h.png"]);
}

#[test]
fn eval_ppl_matches_the_oracle_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let oracle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected/perplexity_oracle.json")).unwrap()).unwrap();
    // The oracle scored the first 200 tokens of the first 600 characters (CRLF → LF).
    let text: String =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/korean/constitution.txt"))
            .unwrap()
            .replace("\r\n", "\n")
            .chars()
            .take(600)
            .collect();
    let file = tmp.path().join("ko.txt");
    std::fs::write(&file, text).unwrap();
    let out = ok(&[
        "eval",
        "ppl",
        "--model",
        &fixture("target"),
        "--text",
        file.to_str().unwrap(),
        "--context",
        "256",
        "--max-tokens",
        "200",
        "--quantize",
        "none",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let want = oracle["target_mean_nll"].as_f64().unwrap();
    assert!((v["mean_nll"].as_f64().unwrap() - want).abs() < 1e-4, "{out}");
    assert_eq!(v["scored"], 199);
    let human = ok(&["eval", "ppl", "--model", &fixture("target"), "--text", file.to_str().unwrap()]);
    assert!(human.starts_with("perplexity "), "{human}");

    fails(&["eval", "ppl", "--model", &fixture("target"), "--text", "/no/such.txt"], &["/no/such.txt"]);
    // A window longer than the model's 256 positions is refused, naming both numbers.
    fails(
        &["eval", "ppl", "--model", &fixture("target"), "--text", file.to_str().unwrap(), "--context", "1024"],
        &["--context 1024 is beyond the model's 256 positions", "--context 256 or less"],
    );
    fails(
        &[
            "eval",
            "ppl",
            "--model",
            &fixture("target"),
            "--text",
            file.to_str().unwrap(),
            "--context",
            "8",
            "--stride",
            "9",
        ],
        &["--stride"],
    );
}

#[test]
fn eval_chat_runs_the_bundled_prompts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("chat.json");
    let json = ok(&[
        "eval",
        "chat",
        "--model",
        &fixture("chat"),
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
        "--json",
        "-o",
        out.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
    assert_eq!(v["summary"]["prompts"], 2);
    assert!(v["results"][0]["eot_probability"].as_f64().unwrap() > 0.0);
    assert_eq!(std::fs::read_to_string(out).unwrap(), json.trim_end());
    let table = ok(&["eval", "chat", "--model", &fixture("chat"), "--limit", "1", "--max-new-tokens", "2"]);
    assert!(table.contains("stop rate") && table.contains("q01"), "{table}");

    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"id\": 1}\n").unwrap();
    fails(&["eval", "chat", "--model", &fixture("chat"), "--prompts", bad.to_str().unwrap()], &["bad.jsonl:1"]);
    fails(&["eval", "chat", "--model", &fixture("target"), "--limit", "1"], &["no chat template"]);
}

#[test]
fn report_and_sweep_write_their_files() {
    let tmp = tempfile::tempdir().unwrap();
    let merged = tmp.path().join("merged");
    ok(&[
        "merge",
        "--base",
        &fixture("base"),
        "--chat",
        &fixture("chat"),
        "--target",
        &fixture("target"),
        "-o",
        merged.to_str().unwrap(),
        "-q",
    ]);
    let rep: PathBuf = tmp.path().join("report");
    let args = [
        "report",
        "--target",
        &fixture("target"),
        "--merged",
        merged.to_str().unwrap(),
        "-o",
        rep.to_str().unwrap(),
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
        "--context",
        "128",
        "--stride",
        "64",
        "--max-tokens",
        "200",
    ];
    let out = ok(&args);
    assert!(out.contains("merged") && out.contains("report.html"), "{out}");
    let html = std::fs::read_to_string(rep.join("report.html")).unwrap();
    assert!(html.contains("MERGED − TARGET") && html.contains("data:image/png;base64,"));
    assert_eq!(png_size(&rep.join("heatmap.png")), (960, 720));
    fails(&args, &["--force"]);

    let sw = tmp.path().join("sweep");
    let out = ok(&[
        "sweep",
        "--base",
        &fixture("base"),
        "--chat",
        &fixture("chat"),
        "--target",
        &fixture("target"),
        "--ratios",
        "0.5,1.0",
        "-o",
        sw.to_str().unwrap(),
        "--limit",
        "1",
        "--max-new-tokens",
        "4",
        "--context",
        "128",
        "--stride",
        "64",
        "--max-tokens",
        "200",
        "--plot-size",
        "800x600",
    ]);
    assert!(out.contains("best = highest stop rate × Korean ratio"), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with('*')).count(), 2, "one row marked, plus the rule: {out}");
    let csv = std::fs::read_to_string(sw.join("sweep.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.lines().nth(1).unwrap().starts_with("target,"));
    assert_eq!(png_size(&sw.join("sweep.png")), (800, 600));
    assert!(svg_size(&sw.join("sweep.svg")).starts_with("<svg width=\"800\" height=\"600\""));
    // Merged models were temporary.
    let left: Vec<_> = std::fs::read_dir(&sw).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 4, "{left:?}");
    fails(
        &[
            "sweep",
            "--base",
            &fixture("base"),
            "--chat",
            &fixture("chat"),
            "--target",
            &fixture("target"),
            "--ratios",
            "nan",
            "-o",
            sw.to_str().unwrap(),
        ],
        &["--ratios", "a ratio must be a finite number"],
    );
}
