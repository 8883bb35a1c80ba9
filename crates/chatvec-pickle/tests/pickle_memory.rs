//! A pickle that reuses a memoised list to build ever more containers must be refused within a
//! memory budget, not only a work budget (issue 12, item 7). Alone in its test binary so the
//! process's peak RSS is this test's.

use std::io::Write;

/// A `pytorch_model.bin` whose `data.pkl` memoises a list of `pairs` distinct (key, 1) tuples,
/// then calls `OrderedDict(list)` `calls` times: each call copies the list into a new dict.
fn memo_reuse_bomb(pairs: usize, calls: usize) -> Vec<u8> {
    let mut pkl = b"\x80\x02]q\x00(".to_vec();
    for i in 0..pairs {
        let key = format!("k{i:07}");
        pkl.push(b'X');
        pkl.extend_from_slice(&(key.len() as u32).to_le_bytes());
        pkl.extend_from_slice(key.as_bytes());
        pkl.extend_from_slice(b"K\x01\x86");
    }
    pkl.extend_from_slice(b"eccollections\nOrderedDict\nq\x01");
    for _ in 0..calls {
        pkl.extend_from_slice(b"h\x01h\x00\x85R0");
    }
    pkl.extend_from_slice(b"}.");
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(&pkl).unwrap();
    zip.finish().unwrap().into_inner()
}

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn memo_reuse_bomb_is_refused_with_peak_rss_under_1_gb() {
    // 20,000 pairs (about 300 kB), then 700,000 copies of them (about 4.2 MB): 4.4 MB in all,
    // 14 billion dict items if nothing stopped it.
    let file = memo_reuse_bomb(20_000, 700_000);
    eprintln!("data.pkl bomb: {:.1} MB", file.len() as f64 / 1e6);
    let t0 = std::time::Instant::now();
    let err = chatvec_pickle::read_torch_zip(std::path::Path::new("bomb.bin"), &file).unwrap_err().to_string();
    let peak = peak_rss_bytes();
    eprintln!("refused after {:.2} s, peak RSS {:.0} MB: {err}", t0.elapsed().as_secs_f64(), peak as f64 / 1e6);
    assert!(err.contains("bomb.bin") && err.contains("too much memory"), "{err}");
    assert!(peak < 1_000_000_000, "peak RSS {peak} bytes");
}
