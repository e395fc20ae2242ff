//! Renders diagnostics with miette, and formats numbers for people.

use miette::{GraphicalReportHandler, GraphicalTheme, NamedSource};
use modelc_compiler::{Located, Sources};

/// Renders one diagnostic against its file's text. `width` is the wrap width.
pub fn diagnostic(sources: &Sources, d: &Located, color: bool, width: usize) -> String {
    let file = sources.file(d.file);
    let theme = if color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(width).with_links(false);
    let report =
        miette::Report::new(d.error.clone()).with_source_code(NamedSource::new(file.name.clone(), file.text.clone()));
    let mut out = String::new();
    if handler.render_report(&mut out, report.as_ref()).is_err() {
        out = format!("{}\n", d.error);
    }
    out
}

/// Renders every diagnostic, then a count.
pub fn diagnostics(sources: &Sources, ds: &[Located], color: bool, width: usize) -> String {
    let mut out = String::new();
    for d in ds {
        out.push_str(&diagnostic(sources, d, color, width));
        out.push('\n');
    }
    out
}

/// `101770` → `101,770`
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `407080` → `397.5 KiB`
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1024.0 && u < UNITS.len() - 1 {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

/// `3723264` → `3.72 M`
pub fn si(n: u64) -> String {
    let x = n as f64;
    if x >= 1e9 {
        format!("{:.2} G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} K", x / 1e3)
    } else {
        format!("{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(101770), "101,770");
        assert_eq!(thousands(44426), "44,426");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(bytes(407080), "397.5 KiB");
        assert_eq!(bytes(12), "12 B");
        assert_eq!(si(3_723_264), "3.72 M");
    }
}
