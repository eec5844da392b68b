//! Aligned output for people: label/value pairs ([`Table`]) and tables with a header row
//! ([`columns`]).
//!
//! Owns layout only; callers decide the rows.

/// Rows of (label, value), printed with the values aligned.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<(String, String)>,
}

impl Table {
    pub fn row(&mut self, label: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.rows.push((label.into(), value.into()));
        self
    }

    pub fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        self.rows
            .iter()
            .map(|(l, v)| format!("  {l:<width$}  {v}\n"))
            .collect()
    }
}

/// `header` and `rows` with their columns aligned (two spaces apart), a line each.
pub fn columns<R: AsRef<[String]>>(header: &[&str], rows: &[R]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r.as_ref()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let head: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    std::iter::once(head.as_slice())
        .chain(rows.iter().map(AsRef::as_ref))
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("{}\n", cells.join("  ").trim_end())
        })
        .collect()
}

/// Milliseconds with one decimal.
pub fn ms(d: std::time::Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_under_their_header() {
        let rows = vec![vec!["a".to_owned(), "long value".to_owned()]];
        assert_eq!(
            columns(&["NAME", "VALUE"], &rows),
            "NAME  VALUE\na     long value\n"
        );
    }

    #[test]
    fn aligns() {
        let mut t = Table::default();
        t.row("a", "1").row("long label", "2");
        assert_eq!(t.render(), "  a           1\n  long label  2\n");
    }
}
