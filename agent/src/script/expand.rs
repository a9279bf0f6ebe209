//! What a command file's values become at run time: `$ENV:(NAME)` is the environment
//! variable NAME, `$TEMPL:(Key)` one of the manual's template values (date and time parts,
//! the computer's and the user's name, the default path), and a `CONDITION` is a comparison
//! of two such values (`==`, `!=`, `>`, `<`; as numbers when both sides are numbers).

use chrono::{Datelike as _, Timelike as _};

/// The template keys (`$TEMPL:(Key)`, compared without case).
pub const TEMPLATE_KEYS: [&str; 11] = [
    "ComputerName",
    "UserName",
    "DefaultPath",
    "Day",
    "Month",
    "Year",
    "Hour",
    "Minute",
    "Second",
    "Weekday",
    "WeekNumber",
];

/// Looks up an environment variable.
pub type Env = Box<dyn Fn(&str) -> Option<String>>;

/// Where values come from: the environment, the clock and the machine.
pub struct Context {
    pub now: chrono::DateTime<chrono::Local>,
    pub env: Env,
    pub computer: String,
    pub user: String,
    /// Where images go when a command names none: `HOLDFAST_DEFAULT_PATH`, else
    /// `/var/backups/holdfast`.
    pub default_path: String,
}

impl Context {
    /// The running machine's.
    pub fn here() -> Self {
        Self {
            now: chrono::Local::now(),
            env: Box::new(|name| std::env::var(name).ok()),
            computer: crate::device::hostname(),
            user: nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map_or_else(|| nix::unistd::geteuid().to_string(), |u| u.name),
            default_path: std::env::var("HOLDFAST_DEFAULT_PATH")
                .unwrap_or_else(|_| "/var/backups/holdfast".into()),
        }
    }

    fn template(&self, key: &str) -> Option<String> {
        let n = &self.now;
        Some(match key.to_ascii_lowercase().as_str() {
            "computername" => self.computer.clone(),
            "username" => self.user.clone(),
            "defaultpath" => self.default_path.clone(),
            "day" => format!("{:02}", n.day()),
            "month" => format!("{:02}", n.month()),
            "year" => format!("{:04}", n.year()),
            "hour" => format!("{:02}", n.hour()),
            "minute" => format!("{:02}", n.minute()),
            "second" => format!("{:02}", n.second()),
            "weekday" => n.format("%A").to_string(),
            "weeknumber" => format!("{:02}", n.iso_week().week()),
            _ => return None,
        })
    }

    /// `text` with every `$ENV:(…)` and `$TEMPL:(…)` replaced. An unset environment
    /// variable becomes empty (as in the manual's conditions on optional variables); an
    /// unknown template key or an unclosed reference is an error.
    pub fn expand(&self, text: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            // `${TEMPL:(Year)}`, as the manual's own examples write it, is the same.
            let braced = tail.starts_with("${");
            let body = if braced { &tail[2..] } else { &tail[1..] };
            let (kind, after) = if starts_with_ignore_case(body, "ENV:(") {
                ("env", &body[5..])
            } else if starts_with_ignore_case(body, "TEMPL:(") {
                ("templ", &body[7..])
            } else {
                out.push('$');
                rest = &tail[1..];
                continue;
            };
            let Some(end) = after.find(')') else {
                return Err(format!(
                    "'{}' is not closed with ')'",
                    &tail[..tail.len().min(40)]
                ));
            };
            let name = after[..end].trim();
            if kind == "env" {
                out.push_str(&(self.env)(name).unwrap_or_default());
            } else {
                out.push_str(&self.template(name).ok_or_else(|| {
                    format!(
                        "unknown template value '$TEMPL:({name})' (known: {})",
                        TEMPLATE_KEYS.join(", ")
                    )
                })?);
            }
            rest = &after[end + 1..];
            if braced {
                rest = rest.strip_prefix('}').ok_or_else(|| {
                    format!("'{}' is not closed with '}}'", &tail[..tail.len().min(40)])
                })?;
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Whether a `CONDITION` holds.
    pub fn holds(&self, condition: &str) -> Result<bool, String> {
        let c = self.expand(condition)?;
        let (op, at) = ["==", "!=", ">", "<"]
            .iter()
            .find_map(|op| c.find(op).map(|at| (*op, at)))
            .ok_or_else(|| format!("condition '{condition}' has no ==, !=, > or <"))?;
        let (left, right) = (c[..at].trim(), c[at + op.len()..].trim());
        let order = match (left.parse::<f64>(), right.parse::<f64>()) {
            (Ok(l), Ok(r)) => l.partial_cmp(&r),
            _ => Some(left.cmp(right)),
        };
        Ok(match op {
            "==" => order == Some(std::cmp::Ordering::Equal),
            "!=" => order != Some(std::cmp::Ordering::Equal),
            ">" => order == Some(std::cmp::Ordering::Greater),
            _ => order == Some(std::cmp::Ordering::Less),
        })
    }
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn context() -> Context {
        Context {
            now: chrono::Local
                .with_ymd_and_hms(2099, 2, 26, 7, 5, 9)
                .single()
                .expect("a local time"),
            env: Box::new(|n| match n {
                "image_name" => Some("/backup/a.hfi".into()),
                "ImageStep" => Some("2".into()),
                _ => None,
            }),
            computer: "pc1".into(),
            user: "root".into(),
            default_path: "/var/backups/holdfast".into(),
        }
    }

    #[test]
    fn expands_environment_and_templates() {
        let c = context();
        assert_eq!(
            c.expand("/b/Image$TEMPL:(Year)$TEMPL:(month)$TEMPL:(Day).hfi")
                .expect("expand"),
            "/b/Image20990226.hfi"
        );
        assert_eq!(c.expand("$ENV:(image_name)").expect("env"), "/backup/a.hfi");
        assert_eq!(c.expand("x$ENV:(unset)y").expect("unset"), "xy");
        assert_eq!(
            c.expand("$TEMPL:(ComputerName)-$TEMPL:(Weekday)-$TEMPL:(WeekNumber)-$TEMPL:(Hour)$TEMPL:(Minute)$TEMPL:(Second)")
                .expect("more"),
            "pc1-Thursday-09-070509"
        );
        assert_eq!(c.expand("cost: $5").expect("dollar"), "cost: $5");
        assert_eq!(
            c.expand("i_${TEMPL:(Year)}${TEMPL:(Month)}_${ENV:(ImageStep)}")
                .expect("braced"),
            "i_209902_2"
        );
        assert!(c
            .expand("$TEMPL:(Moon)")
            .expect_err("unknown")
            .contains("unknown template"));
        assert!(c
            .expand("$ENV:(open")
            .expect_err("open")
            .contains("not closed"));
    }

    #[test]
    fn conditions_compare_numbers_and_text() {
        let c = context();
        assert!(c.holds(" $ENV:(ImageStep)==2").expect("eq"));
        assert!(!c.holds("$ENV:(ImageStep)!=2").expect("ne"));
        assert!(c.holds("$ENV:(ImageStep) > 10").is_ok_and(|b| !b));
        assert!(c.holds("$ENV:(ImageStep)<10").expect("lt"));
        assert!(c.holds("$TEMPL:(Year)>2098").expect("year"));
        assert!(c.holds("$ENV:(unset)==").expect("empty"));
        assert!(c.holds("abc<abd").expect("text"));
        assert!(c.holds("no operator").is_err());
    }
}
