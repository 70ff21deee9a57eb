//! Confusion matrix as a heat map: rows are true classes, columns predicted ones; a cell's
//! shade is its share of the row (the class's recall on the diagonal), its text the count.

use anyhow::{bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{draw_err, Figure, FAMILY};

/// A confusion matrix to draw.
#[derive(Debug, Clone)]
pub struct ConfusionPlot {
    /// Title above the matrix.
    pub title: String,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// counts[true][predicted].
    pub counts: Vec<Vec<u64>>,
}

const TITLE_PX: i32 = 44;

impl ConfusionPlot {
    /// A checked matrix: square, one row per class.
    pub fn new(title: String, classes: Vec<String>, counts: Vec<Vec<u64>>) -> Result<Self> {
        if counts.len() != classes.len() || counts.iter().any(|r| r.len() != classes.len()) {
            bail!(
                "confusion matrix for {title}: {} classes but a {}-row matrix",
                classes.len(),
                counts.len()
            );
        }
        Ok(Self {
            title,
            classes,
            counts,
        })
    }

    fn cell_px(&self) -> i32 {
        (440 / self.classes.len().max(1) as i32).clamp(26, 90)
    }

    fn label_px(&self) -> i32 {
        self.classes
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(1) as i32
            * 8
            + 36
    }
}

/// White → dark blue by `t` in [0, 1].
fn shade(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}

impl Figure for ConfusionPlot {
    fn size(&self) -> (u32, u32) {
        let n = self.classes.len() as i32;
        let side = n * self.cell_px();
        let w = self.label_px() + side + 30;
        let h = TITLE_PX + side + self.label_px();
        (
            (w.max(self.title.chars().count() as i32 * 9 + 20)) as u32,
            h as u32,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let n = self.classes.len();
        let cell = self.cell_px();
        let left = self.label_px();
        let top = TITLE_PX;
        let title = TextStyle::from((FAMILY, 16).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Top));
        root.draw(&Text::new(self.title.clone(), (10, 10), title))
            .map_err(draw_err)?;
        let centred = |size: f64, on_dark: bool| {
            TextStyle::from((FAMILY, size).into_font())
                .color(if on_dark { &WHITE } else { &BLACK })
                .pos(Pos::new(HPos::Center, VPos::Center))
        };
        let count_size = (cell as f64 * 0.32).clamp(9.0, 15.0);
        for (r, row) in self.counts.iter().enumerate() {
            let total: u64 = row.iter().sum();
            for (c, &v) in row.iter().enumerate() {
                let share = if total > 0 {
                    v as f64 / total as f64
                } else {
                    0.0
                };
                let x0 = left + c as i32 * cell;
                let y0 = top + r as i32 * cell;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell, y0 + cell)],
                    shade(share).filled(),
                ))
                .map_err(draw_err)?;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell, y0 + cell)],
                    RGBColor(200, 200, 200).stroke_width(1),
                ))
                .map_err(draw_err)?;
                let on_dark = share > 0.5;
                root.draw(&Text::new(
                    v.to_string(),
                    (x0 + cell / 2, y0 + cell / 2),
                    centred(count_size, on_dark),
                ))
                .map_err(draw_err)?;
            }
        }
        // Class names: true classes left of their rows, predicted ones under their columns
        // (turned, so long names fit any number of classes).
        let row_label = TextStyle::from((FAMILY, 12).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Right, VPos::Center));
        let col_label = TextStyle::from((FAMILY, 12).into_font())
            .color(&BLACK)
            .transform(FontTransform::Rotate270)
            .pos(Pos::new(HPos::Right, VPos::Center));
        for (i, name) in self.classes.iter().enumerate() {
            let mid = i as i32 * cell + cell / 2;
            root.draw(&Text::new(
                name.clone(),
                (left - 6, top + mid),
                row_label.clone(),
            ))
            .map_err(draw_err)?;
            root.draw(&Text::new(
                name.clone(),
                (left + mid, top + n as i32 * cell + 6),
                col_label.clone(),
            ))
            .map_err(draw_err)?;
        }
        let axis = TextStyle::from((FAMILY, 12).into_font()).color(&RGBColor(90, 90, 90));
        root.draw(&Text::new(
            "rows: true class · columns: predicted · shade: share of the row".to_string(),
            (10, 28),
            axis,
        ))
        .map_err(draw_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_a_matrix_that_does_not_match_the_classes() {
        assert!(ConfusionPlot::new("t".into(), vec!["a".into()], vec![vec![1, 2]]).is_err());
    }

    #[test]
    fn every_count_and_class_is_drawn_and_the_diagonal_is_darkest() {
        let plot = ConfusionPlot::new(
            "lymphoma".into(),
            vec!["CLL".into(), "FL".into(), "MCL".into()],
            vec![vec![17, 2, 1], vec![3, 12, 5], vec![0, 4, 16]],
        )
        .unwrap();
        let svg = super::super::render_svg(&plot).unwrap();
        for s in ["17", "12", "16", "CLL", "FL", "MCL", "lymphoma"] {
            // plotters writes each text on its own line inside <text>.
            assert!(svg.contains(&format!(">\n{s}\n<")), "{s} missing");
        }
        let img = super::super::render_rgb(&plot).unwrap();
        let cell = plot.cell_px();
        let at = |r: i32, c: i32| {
            // A corner of the cell, away from its text.
            let x = plot.label_px() + c * cell + 3;
            let y = TITLE_PX + r * cell + 3;
            img.get_pixel(x as u32, y as u32).0
        };
        // Row 0: 17/20 on the diagonal is darker than 2/20 off it.
        assert!(at(0, 0)[0] < at(0, 1)[0]);
        let s = shade(17.0 / 20.0);
        assert_eq!(at(0, 0), [s.0, s.1, s.2]);
    }
}
