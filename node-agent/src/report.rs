//! `node-agent run --report FILE.html|FILE.svg`: one self-contained picture
//! of a run, for people who would rather look than read. Top: a heatmap of
//! the program's objects by temperature over time (one column per look, one
//! row per histogram bucket, hottest on top). Bottom: the heap's bytes on
//! DRAM and on CXL (or where they would be). The numbers drawn are embedded
//! as JSON (`<script id="pytier-data">` in HTML, `<metadata>` in SVG), so a
//! script, or a test, reads what the picture shows.

use std::fmt::Write;

use pytier_contract::stats::HISTOGRAM_UPPER_BOUNDS;

use crate::outlook::Outlook;

const WIDTH: f64 = 760.0;
const LEFT: f64 = 70.0;
const CHART: f64 = WIDTH - LEFT - 20.0;
const ROW: f64 = 18.0;
const HEAT_TOP: f64 = 50.0;
const BARS_HEIGHT: f64 = 140.0;

/// The report as HTML (an SVG inside) or, when `svg` is set, as SVG alone.
pub fn render(title: &str, looks: &[Outlook], summary: &str, svg: bool) -> String {
    let data = serde_json::to_string(looks).unwrap_or_else(|_| "[]".into()).replace("</", "<\\/");
    let picture = picture(title, looks, svg.then_some(&data));
    if svg {
        return picture;
    }
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\n\
         <style>body{{font-family:sans-serif;margin:20px}} pre{{font-size:13px}}</style></head>\n\
         <body>\n{picture}\n<pre>{summary}</pre>\n\
         <script type=\"application/json\" id=\"pytier-data\">{data}</script>\n</body></html>\n",
        title = escape(title),
        summary = escape(summary),
    )
}

fn picture(title: &str, looks: &[Outlook], metadata: Option<&String>) -> String {
    let rows = HISTOGRAM_UPPER_BOUNDS.len() + 1;
    let heat_bottom = HEAT_TOP + rows as f64 * ROW;
    let bars_top = heat_bottom + 60.0;
    let height = bars_top + BARS_HEIGHT + 45.0;
    let column = CHART / looks.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    if let Some(data) = metadata {
        let _ = writeln!(s, "<metadata id=\"pytier-data\">{}</metadata>", escape(data));
    }
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>"#, escape(title));
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="40">Objects by temperature (uses seen, decayed) over time: darker is more objects (log scale)</text>"#
    );

    // Heatmap: the hottest bucket on top.
    for (x, look) in looks.iter().enumerate() {
        let total: u64 = look.histogram.iter().sum();
        for (bucket, &n) in look.histogram.iter().enumerate() {
            let y = HEAT_TOP + (rows - 1 - bucket) as f64 * ROW;
            let share = if total == 0 { 0.0 } else { n as f64 / total as f64 };
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{y}" width="{:.1}" height="{ROW}" fill="{}"><title>{:.1} s: {n} objects</title></rect>"#,
                LEFT + x as f64 * column,
                column.max(1.0),
                heat_colour(share),
                look.seconds,
            );
        }
    }
    for bucket in 0..rows {
        let label = match bucket {
            0 => format!("< {}", HISTOGRAM_UPPER_BOUNDS[0]),
            b if b == rows - 1 => format!("≥ {}", HISTOGRAM_UPPER_BOUNDS[b - 1]),
            b => format!("{}–{}", HISTOGRAM_UPPER_BOUNDS[b - 1], HISTOGRAM_UPPER_BOUNDS[b]),
        };
        let y = HEAT_TOP + (rows - 1 - bucket) as f64 * ROW + ROW * 0.7;
        let _ = writeln!(s, r#"<text x="{}" y="{y}" text-anchor="end">{}</text>"#, LEFT - 6.0, escape(&label));
    }
    time_axis(&mut s, looks, column, heat_bottom);

    // Bytes per tier.
    let measured = looks.iter().any(|l| l.measured);
    let what = if measured { "where the kernel has them" } else { "with CXL behind the DRAM budget" };
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{}">Heap MiB on DRAM (blue) and CXL (orange), {what}</text>"#,
        bars_top - 12.0
    );
    let most = looks.iter().map(|l| l.dram_bytes + l.cxl_bytes).max().unwrap_or(0).max(1) as f64;
    let scale = BARS_HEIGHT / most;
    let bottom = bars_top + BARS_HEIGHT;
    for (x, look) in looks.iter().enumerate() {
        let left = LEFT + x as f64 * column;
        let width = (column * 0.8).max(1.0);
        let dram = look.dram_bytes as f64 * scale;
        let cxl = look.cxl_bytes as f64 * scale;
        let _ = writeln!(
            s,
            r##"<rect x="{left:.1}" y="{:.1}" width="{width:.1}" height="{dram:.1}" fill="#3b6fb6"/><rect x="{left:.1}" y="{:.1}" width="{width:.1}" height="{cxl:.1}" fill="#e8891c"/>"##,
            bottom - dram,
            bottom - dram - cxl,
        );
    }
    // The share of accesses DRAM serves, on the same height (0 to 100%).
    let points: Vec<String> = looks
        .iter()
        .enumerate()
        .filter_map(|(x, look)| {
            let share = look.dram_share?;
            Some(format!("{:.1},{:.1}", LEFT + (x as f64 + 0.4) * column, bottom - share * BARS_HEIGHT))
        })
        .collect();
    let _ =
        writeln!(s, r##"<polyline points="{}" fill="none" stroke="#1a9850" stroke-width="2.5"/>"##, points.join(" "));
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="{}" fill="#1a9850">Green: share of heap accesses DRAM serves (top: 100%){}</text>"##,
        bottom + 30.0,
        looks.last().and_then(|l| l.dram_share).map_or(String::new(), |s| format!(", last {:.1}%", 100.0 * s)),
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">{:.1}</text>"#,
        LEFT - 6.0,
        bars_top + 4.0,
        most / (1u64 << 20) as f64
    );
    let _ = writeln!(s, r#"<text x="{}" y="{bottom}" text-anchor="end">0</text>"#, LEFT - 6.0);
    time_axis(&mut s, looks, column, bottom);
    s.push_str("</svg>\n");
    s
}

/// Seconds under a chart, at about every sixth column.
fn time_axis(s: &mut String, looks: &[Outlook], column: f64, y: f64) {
    let every = looks.len().div_ceil(6).max(1);
    for (x, look) in looks.iter().enumerate().step_by(every) {
        let _ =
            writeln!(s, r#"<text x="{:.1}" y="{}">{:.0} s</text>"#, LEFT + x as f64 * column, y + 14.0, look.seconds);
    }
}

/// White for no objects, through yellow to dark red for all of them, on a
/// log scale (one object in a million is the palest).
fn heat_colour(share: f64) -> String {
    if share <= 0.0 {
        return "#f4f4f4".into();
    }
    let level = (1.0 + share.log10() / 6.0).clamp(0.0, 1.0);
    let (r, g, b) = (255.0 - 115.0 * level, 235.0 * (1.0 - level), 150.0 * (1.0 - level));
    format!("#{:02x}{:02x}{:02x}", r as u8, g as u8, b as u8)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use pytier_contract::stats::ByClass;

    fn look(seconds: f64) -> Outlook {
        Outlook {
            seconds,
            objects: ByClass::default(),
            bytes: ByClass::default(),
            coverage: 1.0,
            histogram: [10, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            scanner_cpu: 0.01,
            measured: false,
            heap_bytes: 4 << 20,
            budget_bytes: 1 << 20,
            dram_bytes: 1 << 20,
            cxl_bytes: 3 << 20,
            dram_share: Some(0.9),
            extra_ns_per_access: Some(8.0),
            moved_pages: 0,
            coldest_types: vec![("dict</script>".into(), 1)],
        }
    }

    #[test]
    fn the_html_embeds_what_it_draws() {
        let html = render("demo <1>", &[look(2.0), look(4.0)], "a & b", false);
        let data = html.split("id=\"pytier-data\">").nth(1).unwrap().split("</script>").next().unwrap();
        let parsed: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(parsed.as_array().unwrap().len(), 2);
        assert_eq!(parsed[1]["cxlBytes"], 3 << 20);
        assert!(html.contains("demo &lt;1&gt;") && html.contains("a &amp; b"));
        // One cell per look and bucket.
        assert_eq!(html.matches("objects</title>").count(), 2 * 10);
    }

    #[test]
    fn an_svg_report_is_svg_alone() {
        let svg = render("demo", &[look(2.0)], "", true);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("<metadata id=\"pytier-data\">"));
    }
}
