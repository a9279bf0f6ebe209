//! Reports as XML (downloadable beside JSON, for admins whose tools read XML).

use std::fmt::Write as _;

use holdfast_proto::RunReport;

use crate::store::jobs::RunRow;

/// Text safe inside an element or attribute.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A Unix time as RFC 3339 (UTC).
pub fn time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// The run and its report as one XML document.
pub fn render(run: &RunRow, report: Option<&RunReport>) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let job = run.job_id.map(|j| j.to_string()).unwrap_or_default();
    let _ = writeln!(
        x,
        "<report id=\"{}\" job_id=\"{}\" agent_id=\"{}\">",
        run.id, job, run.agent_id
    );
    let _ = writeln!(x, "  <name>{}</name>", esc(&run.name));
    if let Some(r) = report.filter(|r| !r.host.is_empty()) {
        let _ = writeln!(x, "  <host>{}</host>", esc(&r.host));
    }
    let _ = writeln!(x, "  <status>{}</status>", run.state.as_str());
    let _ = writeln!(x, "  <cause>{}</cause>", esc(&run.cause));
    if let Some(t) = run.started_at {
        let _ = writeln!(x, "  <start>{}</start>", time(t));
    }
    if let Some(t) = run.ended_at {
        let _ = writeln!(x, "  <end>{}</end>", time(t));
    }
    let _ = writeln!(x, "  <bytes_read>{}</bytes_read>", run.bytes_read);
    let _ = writeln!(x, "  <bytes_written>{}</bytes_written>", run.bytes_written);
    if let Some(r) = report {
        x.push_str("  <images>\n");
        for i in &r.images {
            let _ = writeln!(
                x,
                "    <image name=\"{}\" method=\"{}\" base=\"{}\" image_id=\"{}\" bytes=\"{}\" parts=\"{}\" verified=\"{}\">",
                esc(&i.name),
                i.method.as_str(),
                esc(i.base.as_deref().unwrap_or("")),
                esc(&i.image_id),
                i.bytes,
                i.parts,
                i.verified.map(|v| v.to_string()).unwrap_or_default()
            );
            let _ = writeln!(
                x,
                "      <source kind=\"{}\" filesystem=\"{}\">{}</source>",
                esc(&i.source_kind),
                esc(i.filesystem.as_deref().unwrap_or("")),
                esc(&i.source)
            );
            let _ = writeln!(x, "      <target>{}</target>", esc(&i.target));
            let _ = writeln!(
                x,
                "      <coverage>{}</coverage>",
                i.coverage.map_or("", |c| c.as_str())
            );
            let _ = writeln!(
                x,
                "      <consistency>{}</consistency>",
                esc(&i.consistency)
            );
            for w in &i.warnings {
                let _ = writeln!(x, "      <warning>{}</warning>", esc(w));
            }
            x.push_str("    </image>\n");
        }
        x.push_str("  </images>\n  <deleted>\n");
        for d in &r.deleted {
            let _ = writeln!(x, "    <image name=\"{}\"/>", esc(d));
        }
        x.push_str("  </deleted>\n  <steps>\n");
        for s in &r.steps {
            let _ = writeln!(
                x,
                "    <step time=\"{}\" status=\"{}\">\n      <title>{}</title>\n      <detail>{}</detail>\n    </step>",
                time(s.at),
                format!("{:?}", s.status).to_lowercase(),
                esc(&s.title),
                esc(&s.detail)
            );
        }
        x.push_str("  </steps>\n");
    }
    x.push_str("</report>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_control_characters() {
        assert_eq!(
            esc("a<b>&\"c'\u{1}"),
            "a&lt;b&gt;&amp;&quot;c&apos;\u{FFFD}"
        );
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
    }
}
