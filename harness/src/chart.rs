//! Resident memory over time as an SVG line chart (plotters), shared by the
//! main job and the burst benchmark.
#![allow(dead_code)]

use std::path::Path;

/// Draws one line per series of `(seconds, MiB)` points into `path`.
pub fn draw(
    path: &Path,
    caption: &str,
    x_desc: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let max_x = series
        .iter()
        .filter_map(|(_, points)| points.last())
        .map(|p| p.0)
        .fold(1.0, f64::max);
    let max_y = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y * 1.1)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("RSS (MiB)")
        .draw()?;
    for ((name, points), color) in series.iter().zip([RED, BLUE, GREEN]) {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
