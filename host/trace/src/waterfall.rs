//! `husk trace show`: a trace as a terminal waterfall, one line per span in tree order: service,
//! span (indented under its parent), start offset, duration, a bar on the trace's time line, key
//! attributes; failed spans marked (red on a terminal).
//!
//! Owns the layout only. Must never hide a span: one whose parent never arrived is shown at the
//! top level, marked.

use std::collections::{BTreeMap, HashSet};

use crate::model::SpanRecord;

/// Width of the time-line bar.
const BAR: usize = 30;

fn ms(nanos: u64) -> String {
    format!("{:.1} ms", nanos as f64 / 1e6)
}

/// Spans in tree order (depth-first, children by start time), with their depth and whether
/// their parent is missing.
fn tree_order(spans: &[SpanRecord]) -> Vec<(&SpanRecord, usize, bool)> {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: BTreeMap<&str, Vec<&SpanRecord>> = BTreeMap::new();
    let mut roots = Vec::new();
    for s in spans {
        match s.parent_span_id.as_deref() {
            Some(p) if ids.contains(p) && p != s.span_id => children.entry(p).or_default().push(s),
            _ => roots.push(s),
        }
    }
    let by_start =
        |v: &mut Vec<&SpanRecord>| v.sort_by_key(|s| (s.start_unix_nano, s.end_unix_nano));
    by_start(&mut roots);
    children.values_mut().for_each(by_start);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack: Vec<(&SpanRecord, usize)> = roots.iter().rev().map(|s| (*s, 0)).collect();
    while let Some((s, depth)) = stack.pop() {
        if !seen.insert(s.span_id.as_str()) {
            continue;
        }
        let orphan = depth == 0 && s.parent_span_id.is_some();
        out.push((s, depth, orphan));
        if let Some(kids) = children.get(s.span_id.as_str()) {
            stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
        }
    }
    out
}

/// The waterfall of one trace's spans; `color`: mark errors with ANSI red.
pub fn render(trace_id: &str, spans: &[SpanRecord], color: bool) -> String {
    let Some(t0) = spans.iter().map(|s| s.start_unix_nano).min() else {
        return format!("trace {trace_id}: no spans\n");
    };
    let t1 = spans.iter().map(|s| s.end_unix_nano).max().unwrap_or(t0);
    let total = (t1 - t0).max(1);
    let rows: Vec<[String; 6]> = tree_order(spans)
        .into_iter()
        .map(|(s, depth, orphan)| {
            let from = ((s.start_unix_nano - t0) as u128 * BAR as u128 / total as u128) as usize;
            let len = ((s.duration_nanos() as u128 * BAR as u128).div_ceil(total as u128)) as usize;
            let from = from.min(BAR - 1);
            let len = len.clamp(1, BAR - from);
            let bar = format!(
                "{}{}{}",
                " ".repeat(from),
                "█".repeat(len),
                " ".repeat(BAR - from - len)
            );
            let mut name = format!("{}{}", "  ".repeat(depth), s.name);
            if orphan {
                name += " (parent missing)";
            }
            let mut attrs: Vec<String> = s
                .attributes
                .iter()
                .take(4)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if let Some(e) = &s.error {
                attrs.insert(0, format!("ERROR: {e}"));
            }
            [
                s.service.clone(),
                name,
                format!("+{}", ms(s.start_unix_nano - t0)),
                ms(s.duration_nanos()),
                bar,
                attrs.join(" "),
            ]
        })
        .collect();
    let header = ["SERVICE", "SPAN", "START", "DURATION", "", "ATTRIBUTES"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let errors = spans.iter().filter(|s| s.error.is_some()).count();
    let mut out = format!(
        "trace {trace_id}: {} spans, {} services, {}{}\n",
        spans.len(),
        spans
            .iter()
            .map(|s| &s.service)
            .collect::<HashSet<_>>()
            .len(),
        ms(total),
        if errors > 0 {
            format!(", {errors} failed")
        } else {
            String::new()
        }
    );
    for (i, r) in std::iter::once(&header).chain(&rows).enumerate() {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(c, (v, w))| match c {
                2 | 3 => format!("{v:>w$}"),
                _ => format!("{v:<w$}"),
            })
            .collect();
        let line = cells.join("  ").trim_end().to_owned();
        let failed = i > 0 && r[5].starts_with("ERROR:");
        out += &if failed && color {
            format!("\x1b[31m{line}\x1b[0m\n")
        } else {
            format!("{line}\n")
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::records_from_request;
    use crate::model::tests::{request, span};

    #[test]
    fn children_sit_under_their_parents_and_errors_show() {
        let mut req = request(
            "containerd-shim-husk-v2",
            vec![
                span(1, 1, 0, "Create", 0, 10_000_000),
                span(1, 9, 7, "lost", 1, 2),
            ],
        );
        req.resource_spans.extend(
            request(
                "husk-agent",
                vec![span(1, 2, 1, "CreateContainer", 2_000_000, 8_000_000)],
            )
            .resource_spans,
        );
        let mut recs = records_from_request(&req);
        recs[2].error = Some("jail failed".into());
        let text = render(&"01".repeat(16), &recs, false);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("3 spans, 2 services, 10.0 ms, 1 failed"),
            "{text}"
        );
        assert!(lines[1].starts_with("SERVICE"), "{text}");
        assert!(lines[2].contains("Create"), "{text}");
        let child = lines
            .iter()
            .position(|l| l.contains("  CreateContainer"))
            .expect("child");
        let parent = lines
            .iter()
            .position(|l| l.contains("Create "))
            .expect("parent");
        assert!(child > parent, "{text}");
        assert!(
            lines[child].contains("+2.0 ms") && lines[child].contains("ERROR: jail failed"),
            "{text}"
        );
        assert!(text.contains("lost (parent missing)"), "{text}");
        assert!(render("x", &recs, true).contains("\x1b[31m"));
        assert!(render("x", &[], false).contains("no spans"));
    }
}
