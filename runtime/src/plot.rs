//! Pictures of a run, as SVG (the `plotters` crate): the training curves of
//! a log (`modelc plot`) and the learning rate of every parameter group over
//! a run's steps (`modelc schedule`). Stage boundaries of a finetune are
//! marked with dashed lines and the stage's name.

use std::path::Path;

use plotters::prelude::*;

/// One line of a chart: its name and (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A vertical marker: where a stage starts, and its name.
pub struct Marker {
    pub x: f64,
    pub label: String,
}

/// One panel: a title, an axis name for x, the series and the markers.
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
    /// Log scale on y (learning rates).
    pub log_y: bool,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn bounds(panel: &Panel) -> ((f64, f64), (f64, f64)) {
    let pts = panel.series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in pts {
        if panel.log_y && *y <= 0.0 {
            continue;
        }
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if !x0.is_finite() {
        return ((0.0, 1.0), (0.0, 1.0));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        let pad = if y0 == 0.0 { 1.0 } else { y0.abs() * 0.1 };
        y0 -= pad;
        y1 += pad;
    }
    if panel.log_y {
        y0 /= 1.5;
        y1 *= 1.5;
    } else {
        let pad = (y1 - y0) * 0.05;
        y0 -= pad;
        y1 += pad;
    }
    ((x0, x1), (y0, y1))
}

/// A tick label: short, in scientific notation far from 1.
fn tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() < 1e-2 || v.abs() >= 1e4 {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Draws `panels` stacked, into the SVG file `path`.
pub fn svg(path: &Path, panels: &[Panel]) -> Result<(), String> {
    let err = |e: String| format!("cannot draw {}: {e}", path.display());
    let height = 320 * panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (800, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let areas = root.split_evenly((panels.len().max(1), 1));
    for (panel, area) in panels.iter().zip(&areas) {
        draw(panel, area).map_err(err)?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

fn draw(panel: &Panel, area: &DrawingArea<SVGBackend, plotters::coord::Shift>) -> Result<(), String> {
    let ((x0, x1), (y0, y1)) = bounds(panel);
    let mut builder = ChartBuilder::on(area);
    builder.caption(&panel.title, ("sans-serif", 18)).margin(12).x_label_area_size(36).y_label_area_size(64);
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(panel.x_label.as_str())
                .y_label_formatter(&|v: &f64| tick(*v))
                .draw()
                .map_err(|e| e.to_string())?;
            for m in &panel.markers {
                let style = ShapeStyle { color: BLACK.mix(0.4), filled: false, stroke_width: 1 };
                let dashes = (0..40).map(|i| {
                    let f = |k: f64| y0 + (y1 - y0) * k / 40.0;
                    PathElement::new(vec![(m.x, f(i as f64)), (m.x, f(i as f64 + 0.5))], style)
                });
                chart.draw_series(dashes).map_err(|e| e.to_string())?;
                chart
                    .draw_series(std::iter::once(Text::new(
                        m.label.clone(),
                        (m.x, y1),
                        ("sans-serif", 13).into_font().color(&BLACK.mix(0.6)),
                    )))
                    .map_err(|e| e.to_string())?;
            }
            for (i, s) in panel.series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                let pts: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite() && (!panel.log_y || *y > 0.0))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(s.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .draw()
                .map_err(|e| e.to_string())?;
        }};
    }
    if panel.log_y {
        body!(builder.build_cartesian_2d(x0..x1, (y0..y1).log_scale()).map_err(|e| e.to_string())?);
    } else {
        body!(builder.build_cartesian_2d(x0..x1, y0..y1).map_err(|e| e.to_string())?);
    }
    Ok(())
}

/// The panels of a JSONL training log: losses, then accuracy and every
/// other metric the log holds, per epoch; stage starts marked.
pub fn log_panels(text: &str, source: &Path) -> Result<Vec<Panel>, String> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("{}:{}: not a JSON line of a modelc log: {e}", source.display(), i + 1))?;
        if v["epoch"].as_u64().is_none() {
            return Err(format!("{}:{}: a log line without an `epoch`", source.display(), i + 1));
        }
        rows.push(v);
    }
    if rows.is_empty() {
        return Err(format!("{}: the log has no epochs yet", source.display()));
    }
    let series = |keys: &[&str]| -> Vec<Series> {
        keys.iter()
            .filter_map(|k| {
                let points: Vec<(f64, f64)> =
                    rows.iter().filter_map(|r| Some((r["epoch"].as_f64()?, r.get(*k)?.as_f64()?))).collect();
                (!points.is_empty()).then(|| Series { name: k.replace('_', " "), points })
            })
            .collect()
    };
    let mut markers = Vec::new();
    let mut last_stage: Option<&str> = None;
    for r in &rows {
        if let Some(s) = r["stage"].as_str() {
            if last_stage != Some(s) {
                let epoch = r["epoch"].as_f64().unwrap_or(1.0);
                markers.push(Marker { x: epoch - 1.0, label: format!("stage {s}") });
                last_stage = Some(s);
            }
        }
    }
    let mut metric_keys: Vec<String> = vec!["train_accuracy".into(), "val_accuracy".into(), "test_accuracy".into()];
    for r in &rows {
        if let Some(o) = r.as_object() {
            for (k, v) in o {
                let declared = (k.starts_with("val_") || k.starts_with("test_"))
                    && !k.ends_with("_loss")
                    && !k.ends_with("_accuracy")
                    && !k.ends_with("_prf")
                    && v.is_number();
                if declared && !metric_keys.contains(k) {
                    metric_keys.push(k.clone());
                }
            }
        }
    }
    let keys: Vec<&str> = metric_keys.iter().map(String::as_str).collect();
    let mut panels = vec![Panel {
        title: "loss".into(),
        x_label: "epoch".into(),
        series: series(&["train_loss", "val_loss", "test_loss"]),
        markers,
        log_y: false,
    }];
    let metrics = series(&keys);
    if !metrics.is_empty() {
        let markers = panels[0].markers.iter().map(|m| Marker { x: m.x, label: m.label.clone() }).collect();
        panels.push(Panel { title: "metrics".into(), x_label: "epoch".into(), series: metrics, markers, log_y: false });
    }
    Ok(panels)
}
