//! Grouped bar chart with error bars: one group per task (or task × probe), one bar per
//! series (metric or model), mean ± sd.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{colour, draw_err, Figure, FAMILY};

/// One series of bars: a value (mean, sd) per group, or none where it does not apply.
#[derive(Debug, Clone)]
pub struct BarSeries {
    /// Legend label.
    pub name: String,
    /// (mean, sd) per group, in the chart's group order.
    pub values: Vec<Option<(f64, f64)>>,
}

/// Grouped bars with error bars (± one standard deviation).
#[derive(Debug, Clone)]
pub struct BarChart {
    /// Title above the chart.
    pub title: String,
    /// Y axis label.
    pub y_label: String,
    /// Group labels along the x axis.
    pub groups: Vec<String>,
    /// Bars within each group.
    pub series: Vec<BarSeries>,
    /// Upper end of the y axis (default: the largest mean + sd, with headroom).
    pub y_max: Option<f64>,
}

const BAR_PX: u32 = 26;
const LEFT_PX: u32 = 64;

impl BarChart {
    /// The legend column: wide enough for the longest series name.
    fn legend_px(&self) -> u32 {
        let longest = self
            .series
            .iter()
            .map(|s| s.name.chars().count())
            .max()
            .unwrap_or(0) as u32;
        (longest * 8 + 44).max(150)
    }

    fn group_px(&self) -> u32 {
        let bars = self.series.len().max(1) as u32 * BAR_PX + 28;
        let label = self
            .groups
            .iter()
            .map(|g| g.chars().count())
            .max()
            .unwrap_or(0) as u32
            * 8
            + 16;
        bars.max(label)
    }

    fn top(&self) -> f64 {
        self.y_max.unwrap_or_else(|| {
            let m = self
                .series
                .iter()
                .flat_map(|s| s.values.iter().flatten())
                .map(|(m, sd)| m + sd.max(0.0))
                .filter(|v| v.is_finite())
                .fold(0.0f64, f64::max);
            if m > 0.0 {
                m * 1.1
            } else {
                1.0
            }
        })
    }
}

impl Figure for BarChart {
    fn size(&self) -> (u32, u32) {
        let plot = (LEFT_PX + 30 + self.groups.len().max(1) as u32 * self.group_px())
            .max(self.title.chars().count() as u32 * 10 + 30);
        ((plot + self.legend_px()).max(520), 420)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let (w, _) = self.size();
        let (plot_area, legend_area) = root.split_horizontally(w - self.legend_px());
        let n = self.groups.len().max(1) as f64;
        let top = self.top();
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(&self.title, (FAMILY, 17))
            .margin(12)
            .x_label_area_size(34)
            .y_label_area_size(LEFT_PX)
            .build_cartesian_2d(0f64..n, 0f64..top)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(self.y_label.as_str())
            .label_style((FAMILY, 12))
            .axis_desc_style((FAMILY, 13))
            .draw()
            .map_err(draw_err)?;
        let k = self.series.len().max(1) as f64;
        // Bars fill 80% of a group's width.
        let bar_w = 0.8 / k;
        for (si, s) in self.series.iter().enumerate() {
            let c = colour(si);
            let x0 = |g: usize| g as f64 + 0.1 + si as f64 * bar_w;
            chart
                .draw_series(s.values.iter().enumerate().filter_map(|(g, v)| {
                    let (m, _) = (*v)?;
                    m.is_finite().then(|| {
                        Rectangle::new([(x0(g), 0.0), (x0(g) + bar_w * 0.92, m)], c.filled())
                    })
                }))
                .map_err(draw_err)?;
            chart
                .draw_series(s.values.iter().enumerate().filter_map(|(g, v)| {
                    let (m, sd) = (*v)?;
                    (m.is_finite() && sd.is_finite() && sd > 0.0).then(|| {
                        ErrorBar::new_vertical(
                            x0(g) + bar_w * 0.46,
                            (m - sd).max(0.0),
                            m,
                            m + sd,
                            BLACK.stroke_width(1),
                            8,
                        )
                    })
                }))
                .map_err(draw_err)?;
        }
        // Group labels under the axis, centred on their group.
        let label_style = TextStyle::from((FAMILY, 13).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        for (g, name) in self.groups.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
            root.draw(&Text::new(name.clone(), (x, y + 8), label_style.clone()))
                .map_err(draw_err)?;
        }
        // Legend in its own column, so it never hides a bar.
        let entry_style = TextStyle::from((FAMILY, 13).into_font()).color(&BLACK);
        for (si, s) in self.series.iter().enumerate() {
            let y = 50 + si as i32 * 22;
            legend_area
                .draw(&Rectangle::new([(8, y), (22, y + 14)], colour(si).filled()))
                .map_err(draw_err)?;
            legend_area
                .draw(&Text::new(s.name.clone(), (30, y), entry_style.clone()))
                .map_err(draw_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> BarChart {
        BarChart {
            title: "held-out tasks".into(),
            y_label: "balanced accuracy".into(),
            groups: vec!["lymphoma".into(), "lc25000-lung".into()],
            series: vec![
                BarSeries {
                    name: "multi-task".into(),
                    values: vec![Some((0.62, 0.05)), Some((0.9, 0.01))],
                },
                BarSeries {
                    name: "random init".into(),
                    values: vec![Some((0.41, 0.08)), None],
                },
            ],
            y_max: Some(1.0),
        }
    }

    #[test]
    fn svg_has_every_label_and_one_bar_per_value() {
        let svg = super::super::render_svg(&chart()).unwrap();
        for label in [
            "held-out tasks",
            "balanced accuracy",
            "lymphoma",
            "lc25000-lung",
            "multi-task",
            "random init",
        ] {
            assert!(svg.contains(label), "{label} missing");
        }
        // Bars are filled rectangles in the series colours; three values → three bars (the
        // legend adds one swatch per series).
        let blue = svg.matches("fill=\"#1F77B4\"").count();
        let orange = svg.matches("fill=\"#FF7F0E\"").count();
        assert_eq!((blue, orange), (2 + 1, 1 + 1), "{svg}");
    }

    #[test]
    fn png_draws_bars_in_the_series_colours_and_text() {
        let img = super::super::render_rgb(&chart()).unwrap();
        let (w, h) = chart().size();
        assert_eq!(img.dimensions(), (w, h));
        let count = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
        assert!(count([31, 119, 180]) > 1000, "blue bars missing");
        assert!(count([255, 127, 14]) > 500, "orange bar missing");
        // Text is antialiased grey-to-black glyphs: some dark pixels that are not the axes.
        let dark = img
            .pixels()
            .filter(|p| p.0.iter().all(|&v| v < 100))
            .count();
        assert!(dark > 2000, "no text rendered ({dark} dark pixels)");
    }
}
