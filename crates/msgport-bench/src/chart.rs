//! Draws the figures as an SVG bar chart: one bar per comparison, its length the factor by which
//! msgport is ahead (right of the 1× line) or behind (left), on a log scale; then, when the run
//! had one, the payload-size sweep as GB/s against size (log–log), one panel per placement.

use std::fmt::Write;

use crate::measure::{Better, Figure, SweepPoint};

/// msgport's advantage over the rival: > 1 means msgport is better, whatever the unit.
fn advantage(f: &Figure, rival_value: f64) -> f64 {
    match f.better {
        Better::Lower => rival_value / f.msgport,
        Better::Higher => f.msgport / rival_value,
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Only contests are drawn: figures without a rival are listed in the text output.
pub(crate) fn svg(all: &[Figure], sweep: &[SweepPoint]) -> String {
    let figures: Vec<&Figure> = all.iter().filter(|f| f.rival_value.is_some()).collect();
    let row = 22.0;
    let label_w = 620.0;
    let bar_w = 420.0;
    let width = label_w + bar_w + 80.0;
    let bars_height = 60.0 + row * figures.len() as f64;
    let placements: Vec<&str> = sweep.iter().fold(Vec::new(), |mut v, p| {
        if !v.contains(&p.placement) {
            v.push(p.placement);
        }
        v
    });
    let panel_h = 300.0;
    let height = bars_height + placements.len() as f64 * (panel_h + 40.0);
    let center = label_w + bar_w / 2.0;
    // ±32× fills half the bar area.
    let scale = (bar_w / 2.0) / 5.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">msgport against its rivals (right of the line: msgport ahead; log scale, ±32× at the edges)</text>"#
    );
    for (i, f) in figures.iter().enumerate() {
        let y = 40.0 + row * i as f64;
        let adv = advantage(f, f.rival_value.unwrap_or(f.msgport));
        let len = (adv.log2().clamp(-5.0, 5.0)) * scale;
        let (x, w, color) = if len >= 0.0 {
            (center, len, "#2e8b57")
        } else {
            (center + len, -len, "#c0392b")
        };
        let _ = write!(
            s,
            r#"<text x="10" y="{}">{} — vs {}</text>"#,
            y + 14.0,
            escape(&f.name),
            escape(f.rival.as_deref().unwrap_or(""))
        );
        let _ = write!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{color}"/>"#,
            y + 3.0,
            row - 6.0
        );
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}">{adv:.2}×{}</text>"#,
            label_w + bar_w + 8.0,
            y + 14.0,
            if f.within_noise { " ~" } else { "" }
        );
    }
    let _ = write!(
        s,
        r##"<line x1="{center}" y1="32" x2="{center}" y2="{bars_height}" stroke="#333" stroke-width="1"/>"##
    );
    for (i, placement) in placements.iter().enumerate() {
        let top = bars_height + 20.0 + i as f64 * (panel_h + 40.0);
        let points: Vec<&SweepPoint> = sweep.iter().filter(|p| p.placement == *placement).collect();
        sweep_panel(&mut s, &points, placement, top, width, panel_h);
    }
    s.push_str("</svg>");
    s
}

const COLORS: [&str; 4] = ["#2e8b57", "#c0392b", "#2c6fbb", "#8e44ad"];

/// GB/s against payload size, both on log scales: one line per side.
fn sweep_panel(
    s: &mut String,
    points: &[&SweepPoint],
    placement: &str,
    top: f64,
    width: f64,
    h: f64,
) {
    let Some(first) = points.first() else { return };
    let (left, right) = (80.0, width - 220.0);
    let (plot_top, bottom) = (top + 30.0, top + h - 30.0);
    let sizes: Vec<f64> = points.iter().map(|p| (p.size as f64).log2()).collect();
    let (x0, x1) = (sizes[0], sizes[sizes.len() - 1].max(sizes[0] + 1.0));
    let values = points.iter().flat_map(|p| p.series.iter().map(|(_, v)| *v));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (y0, y1) = (
        lo.max(1e-4).log10().floor(),
        hi.max(1e-3).log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let x = |size: f64| left + (size - x0) / (x1 - x0) * (right - left);
    let y = |gbps: f64| bottom - (gbps.max(1e-4).log10() - y0) / (y1 - y0) * (bottom - plot_top);
    let _ = write!(
        s,
        r#"<text x="10" y="{}" font-size="14" font-weight="bold">One-way throughput (GB/s) against payload size, {}</text>"#,
        top + 14.0,
        escape(placement)
    );
    for decade in y0 as i32..=y1 as i32 {
        let v = 10f64.powi(decade);
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{right}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v}</text>"##,
            left - 6.0,
            y(v) + 4.0,
            yy = y(v)
        );
    }
    let mut last_label = f64::NEG_INFINITY;
    for p in points {
        let xx = x((p.size as f64).log2());
        let _ = write!(
            s,
            r##"<line x1="{xx:.1}" y1="{plot_top}" x2="{xx:.1}" y2="{bottom}" stroke="#eee"/>"##
        );
        // Sizes closer than a label's width (64 B and 65 B) share the first one's label.
        if xx - last_label >= 28.0 {
            last_label = xx;
            let _ = write!(
                s,
                r#"<text x="{xx:.1}" y="{}" text-anchor="middle">{}</text>"#,
                bottom + 16.0,
                escape(&size_text(p.size))
            );
        }
    }
    for (k, (name, _)) in first.series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .filter_map(|p| p.series.get(k))
            .zip(&sizes)
            .map(|((_, v), size)| format!("{:.1},{:.1}", x(*size), y(*v)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="{:.1}" fill="{color}">{}</text>"#,
            right + 12.0,
            plot_top + 16.0 * k as f64,
            escape(name)
        );
    }
}

fn size_text(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{}M", s >> 20),
        s if s >= 1 << 10 => format!("{}K", s >> 10),
        s => format!("{s}"),
    }
}
