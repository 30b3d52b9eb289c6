//! The ROC plot and the certified-accuracy curve: the only file that
//! touches plotters. SVG, so no font or
//! image libraries are needed on the machine that runs the evaluation.

use std::path::Path;

use plotters::prelude::*;

/// One curve: a legend label and its points.
pub struct Curve {
    /// Legend text.
    pub label: String,
    /// (x, y) points: (FPR, TPR) from (0, 0) to (1, 1) on a ROC plot.
    pub points: Vec<(f64, f64)>,
}

/// Draws ROC curves into an SVG file at `path`.
pub fn roc_svg(path: &Path, title: &str, curves: &[Curve]) -> anyhow::Result<()> {
    let axes = Axes {
        x_desc: "false-positive rate on clean test images",
        y_desc: "detection rate (attacks that flipped the model)",
        x_max: 1.0,
        diagonal: true,
    };
    lines_svg(path, title, &axes, curves)
}

/// Draws certified accuracy against the radius in `norm` into an SVG file
/// at `path`: one curve per measure, x from 0 to `max_radius`.
pub fn certified_svg(
    path: &Path,
    title: &str,
    norm: medguard_certify::Norm,
    max_radius: f64,
    curves: &[Curve],
) -> anyhow::Result<()> {
    let axes = Axes {
        x_desc: match norm {
            medguard_certify::Norm::L2 => "L2 radius (input units, 784 pixels in [0, 1])",
            medguard_certify::Norm::LInf => "L-infinity radius (input units, pixels in [0, 1])",
        },
        y_desc: "certified accuracy on clean test images",
        x_max: max_radius,
        diagonal: false,
    };
    lines_svg(path, title, &axes, curves)
}

struct Axes {
    x_desc: &'static str,
    y_desc: &'static str,
    x_max: f64,
    diagonal: bool,
}

fn lines_svg(path: &Path, title: &str, axes: &Axes, curves: &[Curve]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..axes.x_max, 0.0..1.0)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(axes.x_desc)
        .y_desc(axes.y_desc)
        .draw()
        .map_err(plot_error)?;
    if axes.diagonal {
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
            .map_err(plot_error)?;
    }
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
        .position(if axes.diagonal {
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperRight
        })
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e}")
}
