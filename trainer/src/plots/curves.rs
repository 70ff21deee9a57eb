//! Line charts in stacked panels, and the training curves of a run from its metrics.jsonl:
//! training loss (all tasks and per task), validation balanced accuracy per task, learning rate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{colour, draw_err, Figure, FAMILY};

/// One line chart.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Title above the panel.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Named (x, y) series; each drawn as a line with points.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// Fixed y range (default: the data's, padded).
    pub y_range: Option<(f64, f64)>,
}

/// Panels stacked vertically.
#[derive(Debug, Clone)]
pub struct Curves {
    /// The panels, top to bottom.
    pub panels: Vec<Panel>,
}

const PANEL_H: u32 = 300;
const LEGEND_PX: u32 = 160;

impl Panel {
    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let pts = || {
            self.series
                .iter()
                .flat_map(|(_, p)| p.iter())
                .filter(|(x, y)| x.is_finite() && y.is_finite())
        };
        let (mut x0, mut x1) = pts().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| {
            (a.min(*x), b.max(*x))
        });
        if x0 > x1 {
            (x0, x1) = (0.0, 1.0);
        } else if x0 == x1 {
            x1 = x0 + 1.0;
        }
        let y = self.y_range.unwrap_or_else(|| {
            let (lo, hi) = pts().fold((f64::MAX, f64::MIN), |(a, b), (_, y)| {
                (a.min(*y), b.max(*y))
            });
            if lo > hi {
                (0.0, 1.0)
            } else {
                let pad = ((hi - lo) * 0.05).max(1e-9);
                (
                    (lo - pad).min(if lo >= 0.0 { 0.0 } else { lo - pad }),
                    hi + pad,
                )
            }
        });
        ((x0, x1), y)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let ((x0, x1), (y0, y1)) = self.ranges();
        let (w, _) = area.dim_in_pixel();
        let (area, legend) = area.split_horizontally(w.saturating_sub(LEGEND_PX));
        let integer_x = x1 - x0 >= 10.0;
        let mut chart = ChartBuilder::on(&area)
            .caption(&self.title, (FAMILY, 16))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .x_label_formatter(&|x| {
                if integer_x {
                    format!("{x:.0}")
                } else {
                    format!("{x}")
                }
            })
            .y_desc(self.y_label.as_str())
            .label_style((FAMILY, 12))
            .axis_desc_style((FAMILY, 13))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(draw_err)?;
        for (i, (_, points)) in self.series.iter().enumerate() {
            let c = colour(i);
            let finite: Vec<(f64, f64)> = points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(finite.clone(), c.stroke_width(2)))
                .map_err(draw_err)?;
            if finite.len() <= 40 {
                chart
                    .draw_series(finite.iter().map(|&p| Circle::new(p, 3, c.filled())))
                    .map_err(draw_err)?;
            }
        }
        // Legend in its own column, so it never hides a curve.
        let style = TextStyle::from((FAMILY, 12).into_font()).color(&BLACK);
        for (i, (name, _)) in self.series.iter().enumerate() {
            let y = 44 + i as i32 * 18;
            legend
                .draw(&PathElement::new(
                    vec![(6, y + 6), (24, y + 6)],
                    colour(i).stroke_width(3),
                ))
                .map_err(draw_err)?;
            legend
                .draw(&Text::new(name.clone(), (30, y), style.clone()))
                .map_err(draw_err)?;
        }
        Ok(())
    }
}

impl Figure for Curves {
    fn size(&self) -> (u32, u32) {
        (860, PANEL_H * self.panels.len().max(1) as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let areas = root.split_evenly((self.panels.len().max(1), 1));
        for (panel, area) in self.panels.iter().zip(&areas) {
            panel.draw(area)?;
        }
        Ok(())
    }
}

/// The curves of a run's metrics.jsonl (train rows: loss overall and per task, learning rate;
/// validation rows: balanced accuracy per task and their mean).
pub fn curves_from_metrics(jsonl: &str) -> Result<Curves> {
    let mut loss: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut val: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut lr = Vec::new();
    let mut wait = Vec::new();
    for (i, line) in jsonl.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("line {}: not JSON", i + 1))?;
        let Some(iter) = row["iter"].as_f64() else {
            continue;
        };
        match row["kind"].as_str() {
            Some("train") => {
                if let Some(l) = row["loss"].as_f64() {
                    loss.entry(" all tasks".into()).or_default().push((iter, l));
                }
                if let Some(v) = row["lr"].as_f64() {
                    lr.push((iter, v));
                }
                if let Some(v) = row["data_wait_fraction"].as_f64() {
                    wait.push((iter, v));
                }
                if let Some(tasks) = row["tasks"].as_object() {
                    for (name, t) in tasks {
                        if let Some(l) = t["loss"].as_f64() {
                            loss.entry(name.clone()).or_default().push((iter, l));
                        }
                    }
                }
            }
            Some("val") => {
                if let Some(m) = row["mean_balanced_accuracy"].as_f64() {
                    val.entry(" mean".into()).or_default().push((iter, m));
                }
                for t in row["tasks"].as_array().into_iter().flatten() {
                    if let (Some(name), Some(b)) =
                        (t["task"].as_str(), t["balanced_accuracy"].as_f64())
                    {
                        val.entry(name.to_string()).or_default().push((iter, b));
                    }
                }
            }
            _ => {}
        }
    }
    let trim = |m: BTreeMap<String, Vec<(f64, f64)>>| -> Vec<(String, Vec<(f64, f64)>)> {
        m.into_iter()
            .map(|(k, v)| (k.trim().to_string(), v))
            .collect()
    };
    let mut panels = vec![Panel {
        title: "training loss (cross-entropy, per logging interval)".into(),
        x_label: "iteration".into(),
        y_label: "loss".into(),
        series: trim(loss),
        y_range: None,
    }];
    if !val.is_empty() {
        panels.push(Panel {
            title: "validation balanced accuracy".into(),
            x_label: "iteration".into(),
            y_label: "balanced accuracy".into(),
            series: trim(val),
            y_range: Some((0.0, 1.0)),
        });
    }
    if !lr.is_empty() {
        panels.push(Panel {
            title: "learning rate (trunk)".into(),
            x_label: "iteration".into(),
            y_label: "learning rate".into(),
            series: vec![("lr".into(), lr)],
            y_range: None,
        });
    }
    if !wait.is_empty() {
        panels.push(Panel {
            title: "time waiting for data (share of each logging interval; 0 = compute-bound)"
                .into(),
            x_label: "iteration".into(),
            y_label: "waiting share".into(),
            series: vec![("data wait".into(), wait)],
            y_range: Some((0.0, 1.0)),
        });
    }
    Ok(Curves { panels })
}

/// Draw a run directory's training curves to `RUN/plots/training.{svg,png}`.
pub fn training_curves(run: &Path) -> Result<[PathBuf; 2]> {
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read the run's metrics", path.display()))?;
    let curves = curves_from_metrics(&text).with_context(|| format!("{}", path.display()))?;
    super::save(&curves, &run.join("plots").join("training"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"{"iter":10,"kind":"train","loss":1.4,"lr":0.01,"data_wait_fraction":0.1,"tasks":{"a":{"loss":0.8},"b":{"loss":2.0}}}
{"iter":20,"kind":"train","loss":1.1,"lr":0.02,"tasks":{"a":{"loss":0.6},"b":{"loss":1.6}}}
{"iter":20,"kind":"val","mean_balanced_accuracy":0.55,"tasks":[{"task":"a","balanced_accuracy":0.6},{"task":"b","balanced_accuracy":0.5},{"task":"c","balanced_accuracy":null}]}
"#;

    #[test]
    fn metrics_become_loss_validation_and_lr_panels() {
        let c = curves_from_metrics(METRICS).unwrap();
        assert_eq!(c.panels.len(), 4);
        assert_eq!(c.panels[3].series[0].1, vec![(10.0, 0.1)]);
        let loss = &c.panels[0].series;
        assert_eq!(
            loss[0],
            ("all tasks".to_string(), vec![(10.0, 1.4), (20.0, 1.1)])
        );
        assert_eq!(loss[1].0, "a");
        let val = &c.panels[1].series;
        assert_eq!(val[0], ("mean".to_string(), vec![(20.0, 0.55)]));
        // A task without validation scores gets no line.
        assert!(val.iter().all(|(n, _)| n != "c"));
        assert_eq!(c.panels[2].series[0].1, vec![(10.0, 0.01), (20.0, 0.02)]);
    }

    #[test]
    fn bad_metrics_line_is_an_error_with_its_number() {
        let e = curves_from_metrics("{\"iter\":1}\nnot json\n").unwrap_err();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
    }

    #[test]
    fn training_curves_are_written_as_svg_and_png() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("metrics.jsonl"), METRICS).unwrap();
        let [svg, png] = training_curves(dir.path()).unwrap();
        let text = std::fs::read_to_string(svg).unwrap();
        assert!(text.contains("validation balanced accuracy") && text.contains("<polyline"));
        let img = image::open(png).unwrap();
        assert_eq!(img.width(), 860);
        assert_eq!(img.height(), 1200);
    }
}
