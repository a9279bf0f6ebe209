//! File-name templates in the syntax of O&O DiskImage command files (so names admins
//! already use keep working): `$TEMPL:(Year)` or `${TEMPL:(Year)}` is replaced by its
//! value when a run starts.

use chrono::{DateTime, Datelike as _, TimeZone, Timelike as _};

/// The parameters (names compared without case).
pub const NAMES: [&str; 11] = [
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
    "RunId",
];

/// What `RunId` shows in a preview, where no run exists yet.
pub const RUN_ID_PREVIEW: &str = "{run}";

/// What a template is filled with.
pub struct Vars<'a, Tz: TimeZone> {
    pub computer: &'a str,
    pub user: &'a str,
    pub at: DateTime<Tz>,
    /// The run's id (none in a preview).
    pub run_id: Option<i64>,
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
        "runid" => v
            .run_id
            .map_or_else(|| RUN_ID_PREVIEW.to_owned(), |id| id.to_string()),
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

/// `name` made unique among `taken` (the names of the job's images on this agent) by the run
/// id before the extension: `pc-0300.hfi` → `pc-0300-r42.hfi`. A template that fills to the
/// same name twice (two runs in one second, or a template without the time) never makes a
/// run overwrite an earlier image, its own base included.
pub fn unique_name(name: String, run_id: i64, taken: &[&str]) -> String {
    if !taken.contains(&name.as_str()) {
        return name;
    }
    with_suffix(&name, &format!("-r{run_id}"))
}

/// `name` with `suffix` before the extension of its file: `a/pc.hfi` → `a/pc-x.hfi`.
fn with_suffix(name: &str, suffix: &str) -> String {
    let (dir, file) = name.rsplit_once('/').map_or(("", name), |(d, f)| (d, f));
    let (stem, ext) = match file.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s, format!(".{e}")),
        _ => (file, String::new()),
    };
    let file = format!("{stem}{suffix}{ext}");
    if dir.is_empty() {
        file
    } else {
        format!("{dir}/{file}")
    }
}

/// The image name of one source of a job that images several: the source's device name
/// before the extension, so each source's images and chains stay apart
/// (`pc-0300.hfi`, `/dev/sda` → `pc-0300-sda.hfi`; `/dev/vg0/root` → `…-vg0_root.hfi`;
/// `/dev/disk/by-uuid/ab-12` → `…-ab-12.hfi`).
pub fn source_name(name: &str, source: &str) -> String {
    let path = source.trim_start_matches("/dev/");
    let path = match path.strip_prefix("disk/") {
        Some(by) => by.split_once('/').map_or(by, |(_, rest)| rest),
        None => path,
    };
    let tag: String = path
        .trim_matches('/')
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' => c,
            _ => '_',
        })
        .collect();
    with_suffix(name, &format!("-{}", tag.trim_start_matches('.')))
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
            run_id: Some(1),
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
            run_id: Some(42),
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
        assert_eq!(
            render("r$TEMPL:(RunId).hfi", &v).expect("run id"),
            "r42.hfi"
        );
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
    fn a_name_the_job_already_has_gets_the_run_id() {
        let taken = ["pc/vol-0300.hfi", "pc/vol-0300", "x.hfi"];
        assert_eq!(
            unique_name("pc/vol-0301.hfi".into(), 7, &taken),
            "pc/vol-0301.hfi"
        );
        assert_eq!(
            unique_name("pc/vol-0300.hfi".into(), 7, &taken),
            "pc/vol-0300-r7.hfi"
        );
        assert_eq!(
            unique_name("pc/vol-0300".into(), 7, &taken),
            "pc/vol-0300-r7"
        );
        assert_eq!(unique_name("x.hfi".into(), 9, &taken), "x-r9.hfi");
    }

    #[test]
    fn each_source_of_a_machine_job_gets_its_device_in_the_name() {
        assert_eq!(
            source_name("pc/m-0300.hfi", "/dev/sda"),
            "pc/m-0300-sda.hfi"
        );
        assert_eq!(source_name("m.hfi", "/dev/vg0/root"), "m-vg0_root.hfi");
        assert_eq!(
            source_name("m.hfi", "/dev/disk/by-uuid/ab-12"),
            "m-ab-12.hfi"
        );
        assert_eq!(source_name("m", "/srv/disk.img"), "m-srv_disk.img");
        assert_eq!(source_name("m.hfi", "/dev/../x"), "m-_x.hfi");
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
