//! Draws the figures as an SVG bar chart: one bar per comparison, its length the factor by which
//! msgport is ahead (right of the 1× line) or behind (left), on a log scale.

use std::fmt::Write;

use crate::measure::{Better, Figure};

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
pub(crate) fn svg(all: &[Figure]) -> String {
    let figures: Vec<&Figure> = all.iter().filter(|f| f.rival_value.is_some()).collect();
    let row = 22.0;
    let label_w = 620.0;
    let bar_w = 420.0;
    let width = label_w + bar_w + 80.0;
    let height = 60.0 + row * figures.len() as f64;
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
        r##"<line x1="{center}" y1="32" x2="{center}" y2="{height}" stroke="#333" stroke-width="1"/></svg>"##
    );
    s
}
