//! File-name templates, as in the manual's command files: `$TEMPL:(Year)` or
//! `${TEMPL:(Year)}` is replaced by its value when a run starts.

use chrono::{DateTime, Datelike as _, TimeZone, Timelike as _};

/// The parameters (names compared without case).
pub const NAMES: [&str; 10] = [
    "ComputerName",
    "UserName",
    "Year",
    "Month",
    "Day",
    "Hour",
    "Minute",
    "Second",
    "Weekday",
    "WeekNumber",
];

/// What a template is filled with.
pub struct Vars<'a, Tz: TimeZone> {
    pub computer: &'a str,
    pub user: &'a str,
    pub at: DateTime<Tz>,
}

/// A value made safe for a file name: anything but letters, digits, `.`, `_` and `-`
/// becomes `_`.
fn safe(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn value<Tz: TimeZone>(name: &str, v: &Vars<'_, Tz>) -> Option<String> {
    let at = &v.at;
    Some(match name.to_ascii_lowercase().as_str() {
        "computername" => safe(v.computer),
        "username" => safe(v.user),
        "year" => format!("{:04}", at.year()),
        "month" => format!("{:02}", at.month()),
        "day" => format!("{:02}", at.day()),
        "hour" => format!("{:02}", at.hour()),
        "minute" => format!("{:02}", at.minute()),
        "second" => format!("{:02}", at.second()),
        "weekday" => at.weekday().to_string(),
        "weeknumber" => format!("{:02}", at.iso_week().week()),
        _ => return None,
    })
}

/// Fill `template`; an unknown parameter or an unsafe result is an error saying which.
pub fn render<Tz: TimeZone>(template: &str, v: &Vars<'_, Tz>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (body, braced) = if let Some(b) = tail.strip_prefix("${TEMPL:(") {
            (b, true)
        } else if let Some(b) = tail.strip_prefix("$TEMPL:(") {
            (b, false)
        } else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let close = if braced { ")}" } else { ")" };
        let end = body
            .find(close)
            .ok_or_else(|| format!("'{tail}' is not closed with '{close}'"))?;
        let name = &body[..end];
        let val = value(name, v).ok_or_else(|| {
            format!(
                "unknown template parameter '{name}' (known: {})",
                NAMES.join(", ")
            )
        })?;
        out.push_str(&val);
        rest = &body[end + close.len()..];
    }
    out.push_str(rest);
    if out.split('/').any(|p| p == "..") || out.starts_with('/') || out.contains('\\') {
        return Err(format!(
            "'{out}' must be a relative name without '..' or '\\'"
        ));
    }
    Ok(out)
}

/// The image's name under its target: `folder` and `file` filled, joined by one `/` (no
/// folder: the file alone).
pub fn image_name<Tz: TimeZone>(
    folder: &str,
    file: &str,
    v: &Vars<'_, Tz>,
) -> Result<String, String> {
    let folder = render(folder, v)?;
    let file = render(file, v)?;
    Ok(match folder.trim_matches('/') {
        "" => file,
        f => format!("{f}/{file}"),
    })
}

/// Check `template` by filling it with sample values.
pub fn check(template: &str) -> Result<(), String> {
    let at = chrono::Utc
        .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
        .single()
        .ok_or("clock")?;
    render(
        template,
        &Vars {
            computer: "host",
            user: "root",
            at,
        },
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_parameter_in_both_spellings() {
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 11, 22, 3, 4, 5)
            .single()
            .expect("date");
        let v = Vars {
            computer: "web 01/a",
            user: "root",
            at,
        };
        assert_eq!(
            render(
                "$TEMPL:(ComputerName)/${TEMPL:(Year)}-$TEMPL:(month)-$TEMPL:(Day)_$TEMPL:(Hour)$TEMPL:(Minute)$TEMPL:(Second)_$TEMPL:(Weekday)_w$TEMPL:(WeekNumber)_$TEMPL:(UserName).hfi",
                &v
            )
            .expect("render"),
            "web_01_a/2026-11-22_030405_Sun_w47_root.hfi"
        );
        assert_eq!(render("cost $5.hfi", &v).expect("plain $"), "cost $5.hfi");
        // Folder and file join with one slash; no folder, the file alone.
        for (folder, want) in [
            ("$TEMPL:(Year)/", "2026/x.hfi"),
            ("a/b", "a/b/x.hfi"),
            ("", "x.hfi"),
        ] {
            assert_eq!(image_name(folder, "x.hfi", &v).expect("name"), want);
        }
    }

    #[test]
    fn refuses_unknown_unclosed_and_escaping_names() {
        assert!(check("$TEMPL:(Nope).hfi")
            .expect_err("unknown")
            .contains("Nope"));
        assert!(check("$TEMPL:(Year.hfi")
            .expect_err("unclosed")
            .contains("not closed"));
        assert!(check("../x.hfi").is_err());
        assert!(check("/abs.hfi").is_err());
        assert!(check("a/b-$TEMPL:(Year).hfi").is_ok());
    }
}
