//! The report on the fixture models: its files, and a headless-Chromium screenshot that must
//! show the tables and the heatmap.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use chatvec_eval::chat_eval::{bundled_prompts, ChatOptions};
use chatvec_eval::perplexity::{Window, BUNDLED_TEXT};
use chatvec_eval::report::{build_report, ReportJob, ReportModel};
use chatvec_gen::LoadOptions;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/llama-tiny");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

/// The ratio-1.0 merge, with the chat template carried over, as `chatvec merge` writes it.
fn merged(dir: &Path) -> PathBuf {
    let out = dir.join("merged");
    let job = chatvec_merge::MergeJob {
        base: chatvec_hub::resolve_model(fixture("base").to_str().unwrap(), None).unwrap(),
        chat: chatvec_hub::resolve_model(fixture("chat").to_str().unwrap(), None).unwrap(),
        target: chatvec_hub::resolve_model(fixture("target").to_str().unwrap(), None).unwrap(),
        ratio: 1.0,
        plan: Default::default(),
        output: chatvec_merge::OutputOptions { path: out.clone(), force: false, shard_size: 1 << 40, dry_run: false },
    };
    chatvec_merge::ops::merge(&job, &chatvec_format::NoProgress, &AtomicBool::new(false)).unwrap();
    out
}

fn decode_png(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let ch = info.color_type.samples();
    let px = buf[..info.buffer_size()].chunks(ch).map(|c| [c[0], c[1], c[2]]).collect();
    (info.width, info.height, px)
}

fn near(p: [u8; 3], q: [u8; 3], tol: i32) -> bool {
    p.iter().zip(q).all(|(a, b)| (*a as i32 - b as i32).abs() <= tol)
}

/// Builds the fixtures' report in `tmp/report` and checks what it wrote.
fn written_report(tmp: &Path) -> PathBuf {
    let merged = merged(tmp);
    let prompts: Vec<_> = bundled_prompts().into_iter().take(3).collect();
    let job = ReportJob {
        models: vec![
            ReportModel::local("target", fixture("target")),
            ReportModel::local("merged", merged),
            ReportModel::local("chat", fixture("chat")),
            ReportModel::local("base", fixture("base")),
        ],
        text: (BUNDLED_TEXT, "bundled".into()),
        window: Window::new(256, 128).unwrap(),
        max_tokens: Some(300),
        prompts: &prompts,
        chat_options: ChatOptions { max_new_tokens: 8, ..ChatOptions::default() },
        load: LoadOptions::default(),
        samples: 3,
    };
    let out = tmp.join("report");
    let r = build_report(&job, &out, &AtomicBool::new(false), &mut |_| {}, &mut |_, _, _| {}).unwrap();
    assert_eq!(r.models.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(), ["target", "merged", "chat", "base"]);
    for m in &r.models {
        let c = m.chat.as_ref().unwrap();
        assert_eq!(c.results.len(), 3);
        assert!(m.perplexity.as_ref().unwrap().perplexity.is_finite());
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<table id=\"summary\">") && html.contains("src=\"data:image/png;base64,"));
    // Self-contained: nothing is fetched.
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("src=\"file"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["models"].as_array().unwrap().len(), 4);
    let (w, h, _) = decode_png(&out.join("heatmap.png"));
    assert_eq!((w, h), (960, 720));
    out
}

#[test]
fn report_is_written_self_contained() {
    let tmp = tempfile::tempdir().unwrap();
    written_report(tmp.path());
}

#[test]
#[cfg_attr(not(have_chromium), ignore = "needs Chromium on PATH")]
fn report_renders_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let out = written_report(tmp.path());
    let chromium = chatvec_testkit::chromium().expect("chromium on PATH");
    let shot = tmp.path().join("shot.png");
    let status = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", tmp.path().join("profile").display()),
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,2000",
            &format!("file://{}", out.join("report.html").display()),
        ])
        .output()
        .unwrap();
    assert!(status.status.success() && shot.is_file(), "{}", String::from_utf8_lossy(&status.stderr));
    let (w, h, px) = decode_png(&shot);
    assert_eq!((w, h), (1200, 2000));
    let count = |c: [u8; 3], tol: i32| px.iter().filter(|p| near(**p, c, tol)).count();
    // The table headers' blue (#1f4e79) and the heatmap's viridis ends: dark purple and yellow.
    let header = count([0x1f, 0x4e, 0x79], 2);
    let purple = count([68, 1, 84], 12);
    let yellow = count([253, 231, 37], 12);
    let white = count([255, 255, 255], 0);
    assert!(header > 5_000, "table header pixels: {header}");
    assert!(purple > 1_000 && yellow > 1_000, "heatmap pixels: purple {purple}, yellow {yellow}");
    assert!(white < px.len() * 95 / 100, "the page is almost blank");
}
