//! Results: one [`Metric`] per measured quantity, with a value per run,
//! printed as a table and as JSON lines.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// One measured quantity over the runs of a workload.
#[derive(Clone, Debug)]
pub struct Metric {
    pub workload: String,
    pub name: String,
    pub unit: String,
    /// One value per run.
    pub values: Vec<f64>,
    /// The target, as text, when the issue sets one.
    pub target: Option<String>,
}

impl Metric {
    pub fn new(workload: &str, name: &str, unit: &str) -> Self {
        Metric {
            workload: workload.into(),
            name: name.into(),
            unit: unit.into(),
            values: Vec::new(),
            target: None,
        }
    }

    pub fn target(mut self, target: &str) -> Self {
        self.target = Some(target.into());
        self
    }

    pub fn with(mut self, value: f64) -> Self {
        self.values.push(value);
        self
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median of the runs (the mean of the middle two for an even count).
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if !n.is_multiple_of(2) => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// One JSON object (a line of the machine-readable output).
    pub fn json(&self) -> String {
        serde_json::json!({
            "workload": self.workload,
            "metric": self.name,
            "unit": self.unit,
            "median": finite(self.median()),
            "min": finite(self.min()),
            "max": finite(self.max()),
            "runs": self.values.iter().map(|v| finite(*v)).collect::<Vec<_>>(),
            "target": self.target,
        })
        .to_string()
    }
}

fn finite(v: f64) -> serde_json::Value {
    if v.is_finite() {
        serde_json::json!((v * 1000.0).round() / 1000.0)
    } else {
        serde_json::Value::Null
    }
}

/// A value for humans: thousands separated, few decimals.
pub fn human(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    if v.abs() >= 100.0 {
        let n = v.round() as i64;
        let digits = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 {
            out.insert(0, '-');
        }
        out
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The table of every metric.
pub fn table(metrics: &[Metric]) -> String {
    let header = [
        "workload", "metric", "median", "min", "max", "unit", "runs", "target",
    ];
    let rows: Vec<[String; 8]> = metrics
        .iter()
        .map(|m| {
            [
                m.workload.clone(),
                m.name.clone(),
                human(m.median()),
                human(m.min()),
                human(m.max()),
                m.unit.clone(),
                m.values.len().to_string(),
                m.target.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let numeric = (2..=4).contains(&i);
            if numeric {
                let _ = write!(out, "{cell:>w$}  ");
            } else {
                let _ = write!(out, "{cell:<w$}  ");
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    line(&mut out, &header.map(String::from));
    for row in &rows {
        line(&mut out, row);
    }
    out
}

/// A latency histogram in microseconds (1 µs to 100 s, 3 digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// A quantile of a microsecond histogram, in milliseconds.
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spreads() {
        let m = Metric::new("w", "m", "u").with(3.0).with(1.0).with(2.0);
        assert_eq!((m.median(), m.min(), m.max()), (2.0, 1.0, 3.0));
        let m = m.with(10.0);
        assert_eq!(m.median(), 2.5);
        assert!(m.json().contains("\"median\":2.5"));
        assert_eq!(human(1234567.0), "1,234,567");
        assert_eq!(human(12.345), "12.3");
        assert!(table(&[m]).contains("2.50"));
    }
}
