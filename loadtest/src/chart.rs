//! The SVG chart of a run: throughput (top) and latency p50/p99 (bottom) per second.

use plotters::prelude::*;

use crate::stats::Point;

pub fn draw(path: &std::path::Path, title: &str, series: &[Point]) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("chart {}: {e}", path.display());
    let root = SVGBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(330);
    let t_max = series.len().max(2) as u64;
    let warmup_end = series.iter().filter(|p| p.warmup).count() as u64;

    let ok_max = series
        .iter()
        .map(|p| p.ok_per_s.max(p.errors))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let mut c = ChartBuilder::on(&top)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .caption(
            "throughput (requests/s answered, by completion second)",
            ("sans-serif", 15),
        )
        .build_cartesian_2d(0u64..t_max, 0f64..ok_max)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .x_desc("t (s)")
        .y_desc("requests/s")
        .draw()
        .map_err(|e| err(&e))?;
    if warmup_end > 0 {
        c.draw_series(std::iter::once(Rectangle::new(
            [(0, 0.0), (warmup_end, ok_max)],
            RGBColor(235, 235, 235).filled(),
        )))
        .map_err(|e| err(&e))?
        .label("warm-up")
        .legend(|(x, y)| {
            Rectangle::new(
                [(x, y - 5), (x + 15, y + 5)],
                RGBColor(235, 235, 235).filled(),
            )
        });
    }
    c.draw_series(LineSeries::new(
        series.iter().map(|p| (p.t_s, p.ok_per_s as f64)),
        BLUE.stroke_width(2),
    ))
    .map_err(|e| err(&e))?
    .label("ok/s")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLUE.stroke_width(2)));
    c.draw_series(LineSeries::new(
        series.iter().map(|p| (p.t_s, p.errors as f64)),
        RED.stroke_width(2),
    ))
    .map_err(|e| err(&e))?
    .label("errors/s")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED.stroke_width(2)));
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;

    let lat_max = series.iter().map(|p| p.p99_ms).fold(1.0f64, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .caption("latency from intended send time (ms)", ("sans-serif", 15))
        .build_cartesian_2d(0u64..t_max, 0f64..lat_max)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .x_desc("t (s)")
        .y_desc("ms")
        .draw()
        .map_err(|e| err(&e))?;
    c.draw_series(LineSeries::new(
        series.iter().map(|p| (p.t_s, p.p50_ms)),
        GREEN.stroke_width(2),
    ))
    .map_err(|e| err(&e))?
    .label("p50")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], GREEN.stroke_width(2)));
    c.draw_series(LineSeries::new(
        series.iter().map(|p| (p.t_s, p.p99_ms)),
        MAGENTA.stroke_width(2),
    ))
    .map_err(|e| err(&e))?
    .label("p99")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], MAGENTA.stroke_width(2)));
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.svg");
        let series: Vec<Point> = (0..10)
            .map(|t| Point {
                t_s: t,
                warmup: t < 2,
                ok_per_s: 1000 + t * 10,
                errors: u64::from(t == 5),
                p50_ms: 2.0,
                p99_ms: 9.5,
            })
            .collect();
        draw(&path, "test run", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("polyline") || svg.contains("path"));
        assert!(svg.contains("p99"));
    }
}
