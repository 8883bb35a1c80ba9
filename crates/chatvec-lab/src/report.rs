//! The results table (mean ± spread over seeds) and the metric-vs-ratio plot.

use std::fmt::Write as _;
use std::path::Path;

use crate::{Error, Result};
use plotters::prelude::*;

use crate::data::Task;
use crate::eval::{entries, RunScores, Scores};

/// Mean and sample standard deviation.
pub fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n.max(1.0);
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

type Metric = (&'static str, fn(&Scores) -> f64, bool);

/// A plotted line: name, colour and the value it takes from a model's scores.
type Series = (&'static str, RGBColor, Box<dyn Fn(&Scores) -> f64>);

fn metrics() -> Vec<Metric> {
    vec![
        ("ko task accuracy", |s| s.ko_accuracy, true),
        ("ko stop rate", |s| s.ko_stop, true),
        ("ko exact + stop", |s| s.ko_exact, true),
        ("ko Hangul ratio", |s| s.ko_korean_ratio, true),
        ("ko perplexity", |s| s.ko_perplexity, false),
        ("en task accuracy", |s| s.en_accuracy, true),
        ("en stop rate", |s| s.en_stop, true),
        ("ko copy (prose)", |s| s.ko_copy, true),
        ("en copy (prose)", |s| s.en_copy, true),
    ]
}

fn values(runs: &[RunScores], label: &str, f: fn(&Scores) -> f64) -> Vec<f64> {
    runs.iter().filter_map(|r| r.models.iter().find(|(l, _)| l == label).map(|(_, s)| f(s))).collect()
}

fn cell(xs: &[f64], percent: bool) -> String {
    let (m, sd) = mean_sd(xs);
    if percent {
        format!("{:.0} ± {:.0}", m * 100.0, sd * 100.0)
    } else {
        format!("{m:.2} ± {sd:.2}")
    }
}

/// The Markdown table: one row per model, mean ± sd over the runs (rates in %).
pub fn table(runs: &[RunScores]) -> String {
    let ms = metrics();
    let mut s = String::from("| model |");
    for (name, _, pct) in &ms {
        write!(s, " {name}{} |", if *pct { " %" } else { "" }).unwrap();
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(ms.len()));
    s.push('\n');
    for e in entries() {
        write!(s, "| {} |", e.label).unwrap();
        for (_, f, pct) in &ms {
            write!(s, " {} |", cell(&values(runs, &e.label, *f), *pct)).unwrap();
        }
        s.push('\n');
    }
    s
}

/// Korean-content accuracy per task (mean over runs, %).
pub fn task_table(runs: &[RunScores]) -> String {
    let mut s = String::from("| model |");
    for t in Task::ALL {
        write!(s, " {t:?} |").unwrap();
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(Task::ALL.len()));
    s.push('\n');
    for e in entries() {
        write!(s, "| {} |", e.label).unwrap();
        for i in 0..Task::ALL.len() {
            let xs: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.models.iter().find(|(l, _)| *l == e.label))
                .map(|(_, sc)| sc.ko_accuracy_by_task.get(i).copied().unwrap_or(0.0))
                .collect();
            write!(s, " {} |", cell(&xs, true)).unwrap();
        }
        s.push('\n');
    }
    s
}

/// Plots Korean-dialog accuracy, stop rate, Hangul ratio and the target's perplexity over the model's
/// against the ratio (0 = target, then the plain merges), mean over runs with sd error bars.
pub fn plot(runs: &[RunScores], path: &Path) -> Result<()> {
    chatvec_eval::plots::register_fonts();
    let failed = |e: &dyn std::fmt::Display| Error::Plot { path: path.to_path_buf(), message: e.to_string() };
    let points: Vec<(f64, &str)> = vec![(0.0, "target"), (0.5, "merge 0.5"), (1.0, "merge 1.0")];
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("chat vector on Korean-content dialogs (lab, mean ± sd over seeds)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.05f64..1.05f64, 0f64..1.2f64)
        .map_err(|e| failed(&e))?;
    chart
        .configure_mesh()
        .x_desc("ratio of (chat - base) added to the target")
        .y_desc("rate; Korean perplexity kept (target's / model's)")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| failed(&e))?;
    let target_ppl = mean_sd(&values(runs, "target", |s| s.ko_perplexity)).0;
    let series: Vec<Series> = vec![
        ("task accuracy", RGBColor(31, 119, 180), Box::new(|s: &Scores| s.ko_accuracy)),
        ("stop rate", RGBColor(255, 127, 14), Box::new(|s: &Scores| s.ko_stop)),
        ("Hangul ratio", RGBColor(44, 160, 44), Box::new(|s: &Scores| s.ko_korean_ratio)),
        (
            "target perplexity / perplexity",
            RGBColor(214, 39, 40),
            Box::new(move |s: &Scores| target_ppl / s.ko_perplexity),
        ),
    ];
    for (name, color, f) in &series {
        let pts: Vec<(f64, f64, f64)> = points
            .iter()
            .map(|(x, label)| {
                let xs: Vec<f64> =
                    runs.iter().filter_map(|r| r.models.iter().find(|(l, _)| l == label).map(|(_, s)| f(s))).collect();
                let (m, sd) = mean_sd(&xs);
                (*x, m, sd)
            })
            .collect();
        let c = *color;
        chart
            .draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), c.stroke_width(2)))
            .map_err(|e| failed(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|p| ErrorBar::new_vertical(p.0, p.1 - p.2, p.1, p.1 + p.2, c.filled(), 8)))
            .map_err(|e| failed(&e))?;
        chart.draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 4, c.filled()))).map_err(|e| failed(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| failed(&e))?;
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_sample_standard_deviation() {
        assert_eq!(mean_sd(&[1.0, 2.0, 3.0]), (2.0, 1.0));
        assert_eq!(mean_sd(&[5.0]), (5.0, 0.0));
    }
}
