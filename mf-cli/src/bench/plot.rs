//! SVG charts: latency CDF per system for each workload and pinning, and
//! throughput against message size for W1 and W2.

use crate::bench::harness::{Key, Pin, Results};
use crate::bench::report::figures;
use crate::bench::systems::System;
use crate::bench::workloads::{Kind, Workload, fmt_size};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const SIZE_PX: (u32, u32) = (820, 500);

fn color(s: System) -> RGBColor {
    match s {
        System::RawStd => RGBColor(0, 0, 0),
        System::RawTokio => RGBColor(120, 120, 120),
        System::MfMio => RGBColor(214, 39, 40),
        System::MfTokio => RGBColor(31, 119, 180),
    }
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Write every chart into `dir`; returns the files written.
pub fn write_all(
    results: &Results,
    pins: &[Pin],
    systems: &[System],
    dir: &Path,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut files = Vec::new();
    for w in Workload::standard() {
        for &pin in pins {
            let path = dir.join(format!("latency-{}-{}.svg", w.kind.id(), pin.name()));
            if latency_cdf(results, &w, pin, systems, &path).map_err(|e| e.to_string())? {
                files.push(path);
            }
        }
    }
    for kind in [Kind::PingPong, Kind::Pipeline] {
        for &pin in pins {
            let path = dir.join(format!("size-{}-{}.svg", kind.id(), pin.name()));
            if size_chart(results, kind, pin, systems, &path).map_err(|e| e.to_string())? {
                files.push(path);
            }
        }
    }
    Ok(files)
}

fn latency_cdf(
    results: &Results,
    w: &Workload,
    pin: Pin,
    systems: &[System],
    path: &Path,
) -> Result<bool, String> {
    let mut curves = Vec::new();
    for &s in systems {
        let Some(series) = results.series.get(&Key { workload: *w, pin, knobs: 0, system: s }) else {
            continue;
        };
        let pts: Vec<(f64, f64)> = (0..=200)
            .map(|i| {
                let q = if i == 200 { 0.9999 } else { i as f64 / 200.0 };
                (series.hist.value_at_quantile(q).max(1) as f64 / 1000.0, q * 100.0)
            })
            .collect();
        curves.push((s, pts));
    }
    if curves.is_empty() {
        return Ok(false);
    }
    let lo = curves.iter().flat_map(|c| c.1.iter().map(|p| p.0)).fold(f64::MAX, f64::min).max(0.1);
    let hi = curves.iter().flat_map(|c| c.1.iter().map(|p| p.0)).fold(0.0, f64::max).max(lo * 2.0);
    let title = format!("{}: latency CDF, pin {}", w.label(), pin.name());
    draw(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((lo * 0.9..hi * 1.1).log_scale(), 0f64..100f64)?;
        chart.configure_mesh().x_desc("latency per call (us, log)").y_desc("percent of calls").draw()?;
        for (s, pts) in &curves {
            let c = color(*s);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
                .label(s.name())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })?;
    Ok(true)
}

fn size_chart(
    results: &Results,
    kind: Kind,
    pin: Pin,
    systems: &[System],
    path: &Path,
) -> Result<bool, String> {
    let mut curves = Vec::new();
    for &s in systems {
        let mut pts: Vec<(f64, f64)> = results
            .series
            .iter()
            .filter(|(k, _)| k.workload.kind == kind && k.pin == pin && k.knobs == 0 && k.system == s)
            .map(|(k, series)| (k.workload.size as f64, figures(series, k.workload.size).mib_per_s.max(1e-3)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if pts.len() >= 2 {
            curves.push((s, pts));
        }
    }
    if curves.is_empty() {
        return Ok(false);
    }
    let all = || curves.iter().flat_map(|c| c.1.iter().copied());
    let (xlo, xhi) = (all().map(|p| p.0).fold(f64::MAX, f64::min), all().map(|p| p.0).fold(0.0, f64::max));
    let (ylo, yhi) = (all().map(|p| p.1).fold(f64::MAX, f64::min), all().map(|p| p.1).fold(0.0, f64::max));
    let title = format!("{} {}: throughput against message size, pin {}", kind.id(), kind.name(), pin.name());
    draw(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((xlo * 0.8..xhi * 1.25).log_scale(), (ylo * 0.7..yhi * 1.4).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("message size (bytes, log)")
            .y_desc("MiB/s, requests + responses (log)")
            .x_label_formatter(&|x| axis_size(*x))
            .draw()?;
        for (s, pts) in &curves {
            let c = color(*s);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
                .label(s.name())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })?;
    Ok(true)
}

fn draw(
    path: &Path,
    f: impl FnOnce(&DrawingArea<SVGBackend, plotters::coord::Shift>) -> PlotResult,
) -> Result<(), String> {
    let root = SVGBackend::new(path, SIZE_PX).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    f(&root).map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// An axis label for a byte count: "64 B", "1.5 KiB", "1 MiB".
fn axis_size(x: f64) -> String {
    let n = x.round().max(0.0) as usize;
    if n == 0 {
        return "0".into();
    }
    let exact = fmt_size(n);
    if !exact.ends_with(" B") || n < 1024 {
        return exact;
    }
    if x >= (1 << 20) as f64 {
        format!("{:.1} MiB", x / (1 << 20) as f64)
    } else {
        format!("{:.1} KiB", x / 1024.0)
    }
}
