//! The ROC plot: the only file that touches plotters. SVG, so no font or
//! image libraries are needed on the machine that runs the evaluation.

use std::path::Path;

use plotters::prelude::*;

/// One curve: a legend label and its (FPR, TPR) points.
pub struct Curve {
    /// Legend text.
    pub label: String,
    /// Points from (0, 0) to (1, 1).
    pub points: Vec<(f64, f64)>,
}

/// Draws ROC curves into an SVG file at `path`.
pub fn roc_svg(path: &Path, title: &str, curves: &[Curve]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("false-positive rate on clean test images")
        .y_desc("detection rate (attacks that flipped the model)")
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
        .map_err(plot_error)?;
    for (i, curve) in curves.iter().enumerate() {
        let color = Palette99::pick(i).stroke_width(2);
        chart
            .draw_series(LineSeries::new(curve.points.iter().copied(), color))
            .map_err(plot_error)?
            .label(curve.label.clone())
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], Palette99::pick(i).stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the ROC plot: {e}")
}
