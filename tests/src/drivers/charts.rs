//! SVG charts of the bench (plotters, SVG backend): line charts of the
//! scale sweeps, and bars with error bars (median, min–max) per scenario.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One chart: x = size, one line per setup.
pub fn sweep(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<()> {
    let x_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(1.0, f64::max);
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(1.0, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// A measured value: median with its range over the rounds.
#[derive(Clone, Copy, Debug)]
pub struct Ranged {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Grouped bars: one group per scenario, one bar per setup (in `setups`
/// order) at its median, with a whisker from min to max.
pub fn bars(
    path: &Path,
    title: &str,
    y_label: &str,
    setups: &[&str],
    groups: &[(String, Vec<Ranged>)],
) -> Result<()> {
    let y_max = groups
        .iter()
        .flat_map(|(_, v)| v.iter().map(|r| r.max))
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.2;
    let n = setups.len().max(1) as f64;
    let width = 1.0 / (n + 1.0);
    let root = SVGBackend::new(path, (820, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let labels: Vec<String> = groups.iter().map(|(g, _)| g.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..groups.len().max(1) as f64, 0f64..y_max)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len().max(1) * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_label)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (si, setup) in setups.iter().enumerate() {
        let color = Palette99::pick(si).to_rgba();
        let x0 = |gi: usize| gi as f64 + width * (si as f64 + 0.5);
        chart
            .draw_series(groups.iter().enumerate().filter_map(|(gi, (_, v))| {
                let r = v.get(si)?;
                Some(Rectangle::new(
                    [(x0(gi), 0.0), (x0(gi) + width * 0.9, r.median)],
                    color.filled(),
                ))
            }))
            .map_err(|e| anyhow!("{e}"))?
            .label(*setup)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart
            .draw_series(groups.iter().enumerate().filter_map(|(gi, (_, v))| {
                let r = v.get(si)?;
                let mid = x0(gi) + width * 0.45;
                Some(PathElement::new(
                    vec![(mid, r.min), (mid, r.max)],
                    BLACK.stroke_width(2),
                ))
            }))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
