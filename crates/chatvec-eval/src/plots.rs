//! Pictures drawn with plotters in pure Rust: the layer × module-kind heatmap and the sweep's
//! line plot, each as PNG and SVG.
//!
//! Text is rendered with ab_glyph from an embedded DejaVu Sans, so no system font is needed.
//! DejaVu Sans: Bitstream Vera licence (free to use, copy and redistribute; see
//! `assets/DejaVuSans-LICENSE.txt`); DejaVu's own changes are in the public domain.

use std::path::Path;
use std::sync::Once;

use crate::error::{EvalError, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Registers the embedded font as plotters' `sans-serif` (once per process).
pub fn register_fonts() {
    REGISTER.call_once(|| {
        // The embedded font is a valid TTF (checked by a test), so registering cannot fail.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Image size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl Size {
    /// The default size of both plots: 960 × 720.
    pub const DEFAULT: Size = Size { width: 960, height: 720 };

    /// Parses `960x720`.
    pub fn parse(s: &str) -> Result<Size, String> {
        let (w, h) = s.split_once(['x', 'X']).ok_or_else(|| format!("{s}: expected WIDTHxHEIGHT, e.g. 960x720"))?;
        let p = |v: &str| v.trim().parse::<u32>().ok().filter(|&n| (200..=8000).contains(&n));
        match (p(w), p(h)) {
            (Some(width), Some(height)) => Ok(Size { width, height }),
            _ => Err(format!("{s}: width and height must be 200..8000 pixels")),
        }
    }
}

/// A matrix of values to colour, with its labels.
#[derive(Debug, Clone)]
pub struct Heatmap {
    /// Title above the plot.
    pub title: String,
    /// What the colour means (colour bar caption).
    pub value_label: String,
    /// Row labels, top to bottom.
    pub rows: Vec<String>,
    /// Column labels, left to right.
    pub cols: Vec<String>,
    /// `values[row][col]`; `None` cells are drawn grey.
    pub values: Vec<Vec<Option<f64>>>,
}

/// Viridis, sampled at five points and interpolated linearly (close enough for a colour bar).
pub fn viridis(t: f64) -> RGBColor {
    const P: [(f64, f64, f64); 5] =
        [(68.0, 1.0, 84.0), (59.0, 82.0, 139.0), (33.0, 145.0, 140.0), (94.0, 201.0, 98.0), (253.0, 231.0, 37.0)];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 } * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f64;
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    RGBColor(mix(P[i].0, P[i + 1].0), mix(P[i].1, P[i + 1].1), mix(P[i].2, P[i + 1].2))
}

/// Colour of cells without a value.
pub const MISSING: RGBColor = RGBColor(225, 225, 225);

/// The drawing library's error as text; the caller names the image.
fn err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> String {
    e.to_string()
}

fn fmt_value(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if (0.01..1000.0).contains(&v.abs()) {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

/// Writes `path.png` and `path.svg` (any extension of `path` is replaced).
pub fn write_heatmap(h: &Heatmap, path: &Path, size: Size) -> Result<()> {
    register_fonts();
    let png = path.with_extension("png");
    let svg = path.with_extension("svg");
    draw_heatmap(BitMapBackend::new(&png, (size.width, size.height)).into_drawing_area(), h)
        .map_err(|message| EvalError::Plot { path: png.clone(), message })?;
    draw_heatmap(SVGBackend::new(&svg, (size.width, size.height)).into_drawing_area(), h)
        .map_err(|message| EvalError::Plot { path: svg.clone(), message })?;
    Ok(())
}

fn draw_heatmap<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, h: &Heatmap) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let (w, _) = root.dim_in_pixel();
    let (main, bar) = root.split_horizontally(w.saturating_sub(130));
    let finite = h.values.iter().flatten().flatten().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    // The colour scale spans the data, so differences between layers show; the bar gives the values.
    let (lo, hi) = match (lo.is_finite(), hi > lo) {
        (false, _) => (0.0, 1.0),
        (true, true) => (lo, hi),
        (true, false) => (lo - lo.abs().max(1e-12) * 0.5, hi + hi.abs().max(1e-12) * 0.5),
    };
    let (nr, nc) = (h.rows.len().max(1) as i32, h.cols.len().max(1) as i32);
    let mut chart = ChartBuilder::on(&main)
        .caption(&h.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        // A segmented 0..n has n + 1 segments (the end is included).
        .build_cartesian_2d((0..nc - 1).into_segmented(), (0..nr - 1).into_segmented())
        .map_err(err)?;
    let rows = h.rows.clone();
    let cols = h.cols.clone();
    let ylab = move |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => rows.get((nr - 1 - i) as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    let xlab = move |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => cols.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(nc as usize + 1)
        .y_labels(nr as usize + 1)
        .x_label_formatter(&xlab)
        .y_label_formatter(&ylab)
        .x_desc("module kind")
        .y_desc("layer")
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    let cell_h = chart.plotting_area().dim_in_pixel().1 as f64 / nr as f64;
    let cell_w = chart.plotting_area().dim_in_pixel().0 as f64 / nc as f64;
    let show_text = cell_h >= 14.0 && cell_w >= 48.0;
    let text_size = (cell_h * 0.5).clamp(9.0, 14.0);
    for (ri, row) in h.values.iter().enumerate() {
        let y = nr - 1 - ri as i32;
        for (ci, v) in row.iter().enumerate() {
            let c = ci as i32;
            let color = match v {
                Some(v) if v.is_finite() => viridis((v - lo) / (hi - lo)),
                _ => MISSING,
            };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [
                        (SegmentValue::Exact(c), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(c + 1), SegmentValue::Exact(y + 1)),
                    ],
                    color.filled(),
                )))
                .map_err(err)?;
            if let (true, Some(v)) = (show_text, v) {
                let dark = (color.0 as f64 * 0.299 + color.1 as f64 * 0.587 + color.2 as f64 * 0.114) < 140.0;
                let style = TextStyle::from(("sans-serif", text_size).into_font())
                    .color(if dark { &WHITE } else { &BLACK })
                    .pos(plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Center,
                    ));
                chart
                    .draw_series(std::iter::once(Text::new(
                        fmt_value(*v),
                        (SegmentValue::CenterOf(c), SegmentValue::CenterOf(y)),
                        style,
                    )))
                    .map_err(err)?;
            }
        }
    }
    // The colour bar.
    let mut cb = ChartBuilder::on(&bar)
        .margin_top(44)
        .margin_bottom(52)
        .margin_right(12)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..1.0, lo..hi)
        .map_err(err)?;
    cb.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .y_label_formatter(&|v| fmt_value(*v))
        .y_desc(h.value_label.as_str())
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    let steps = 100;
    cb.draw_series((0..steps).map(|i| {
        let a = lo + (hi - lo) * i as f64 / steps as f64;
        let b = lo + (hi - lo) * (i + 1) as f64 / steps as f64;
        Rectangle::new([(0.0, a), (1.0, b)], viridis((i as f64 + 0.5) / steps as f64).filled())
    }))
    .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One line of a line plot.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend entry.
    pub label: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
}

/// The sweep's picture: perplexity over the ratio on top, the rates in [0, 1] below.
#[derive(Debug, Clone)]
pub struct SweepPlot {
    /// Title.
    pub title: String,
    /// Perplexity per ratio.
    pub perplexity: Series,
    /// The target's perplexity, drawn as a horizontal reference line.
    pub target_perplexity: Option<f64>,
    /// Rates (stop rate, Korean ratio, repetition) per ratio.
    pub rates: Vec<Series>,
    /// The ratio marked best.
    pub best: Option<f64>,
}

/// Writes `path.png` and `path.svg` (any extension of `path` is replaced).
pub fn write_sweep_plot(p: &SweepPlot, path: &Path, size: Size) -> Result<()> {
    register_fonts();
    let png = path.with_extension("png");
    let svg = path.with_extension("svg");
    draw_sweep(BitMapBackend::new(&png, (size.width, size.height)).into_drawing_area(), p)
        .map_err(|message| EvalError::Plot { path: png.clone(), message })?;
    draw_sweep(SVGBackend::new(&svg, (size.width, size.height)).into_drawing_area(), p)
        .map_err(|message| EvalError::Plot { path: svg.clone(), message })?;
    Ok(())
}

const LINE_COLORS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];

fn x_range(p: &SweepPlot) -> (f64, f64) {
    let xs = p.perplexity.points.iter().chain(p.rates.iter().flat_map(|s| &s.points)).map(|&(x, _)| x);
    let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(0.05);
    (lo - pad, hi + pad)
}

fn draw_sweep<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, p: &SweepPlot) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(&p.title, ("sans-serif", 20)).map_err(err)?;
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 / 2);
    let (x0, x1) = x_range(p);
    let ys = p.perplexity.points.iter().map(|&(_, y)| y).chain(p.target_perplexity).filter(|y| y.is_finite());
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.01).max(1e-6);
    let mut c = ChartBuilder::on(&top)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, (lo - pad)..(hi + pad))
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("ratio")
        .y_desc("perplexity")
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    if let Some(t) = p.target_perplexity {
        c.draw_series(LineSeries::new([(x0, t), (x1, t)], RGBColor(150, 150, 150).stroke_width(1)))
            .map_err(err)?
            .label("target")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], RGBColor(150, 150, 150)));
    }
    let ppl_color = LINE_COLORS[0];
    c.draw_series(LineSeries::new(p.perplexity.points.clone(), ppl_color.stroke_width(2)))
        .map_err(err)?
        .label(p.perplexity.label.as_str())
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], ppl_color.stroke_width(2)));
    c.draw_series(p.perplexity.points.iter().map(|&pt| Circle::new(pt, 4, ppl_color.filled()))).map_err(err)?;
    if let Some(b) = p.best {
        c.draw_series(LineSeries::new([(b, lo - pad), (b, hi + pad)], RED.stroke_width(1)))
            .map_err(err)?
            .label("best")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], RED));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;

    let mut c = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0.0..1.05)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("ratio")
        .y_desc("rate")
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    for (i, s) in p.rates.iter().enumerate() {
        let color = LINE_COLORS[(i + 1) % LINE_COLORS.len()];
        c.draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        c.draw_series(s.points.iter().map(|&pt| Circle::new(pt, 4, color.filled()))).map_err(err)?;
    }
    if let Some(b) = p.best {
        c.draw_series(LineSeries::new([(b, 0.0), (b, 1.05)], RED.stroke_width(1))).map_err(err)?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
