//! Aligned two-column output for people.
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

/// Milliseconds with one decimal.
pub fn ms(d: std::time::Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns() {
        let mut t = Table::default();
        t.row("a", "1").row("long label", "2");
        assert_eq!(t.render(), "  a           1\n  long label  2\n");
    }
}
