//! Job files as XML: the same document as the JSON export, one element per field. Strings
//! are plain text; other values say their type (`type="number"`, `"bool"`, `"null"`,
//! `"object"`, `"array"` with `<item>` children), so a file reads back to exactly what was
//! written, and an admin can edit it by hand.
//!
//! Files come from users: reading one is bounded — nesting depth, elements and attributes
//! per element — so no file can exhaust the stack (values are built and dropped
//! recursively) or the processor (attributes are not checked for duplicates pairwise).

use std::fmt::Write as _;

use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::{Map, Value};

use super::report_xml::esc;

fn element(out: &mut String, name: &str, v: &Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match v {
        Value::Null => {
            let _ = writeln!(out, "{pad}<{name} type=\"null\"/>");
        }
        Value::Bool(b) => {
            let _ = writeln!(out, "{pad}<{name} type=\"bool\">{b}</{name}>");
        }
        Value::Number(n) => {
            let _ = writeln!(out, "{pad}<{name} type=\"number\">{n}</{name}>");
        }
        Value::String(s) => {
            let _ = writeln!(out, "{pad}<{name}>{}</{name}>", esc(s));
        }
        Value::Array(items) => {
            let _ = writeln!(out, "{pad}<{name} type=\"array\">");
            for i in items {
                element(out, "item", i, depth + 1);
            }
            let _ = writeln!(out, "{pad}</{name}>");
        }
        Value::Object(fields) => {
            let _ = writeln!(out, "{pad}<{name} type=\"object\">");
            for (k, v) in fields {
                element(out, k, v, depth + 1);
            }
            let _ = writeln!(out, "{pad}</{name}>");
        }
    }
}

/// `v` (an object) as an XML document with root element `root`.
pub fn to_xml(root: &str, v: &Value) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    element(&mut out, root, v, 0);
    out
}

/// Deepest nesting a job file may have (a job is at most five levels deep).
pub const MAX_DEPTH: usize = 32;
/// Elements a job file may have.
pub const MAX_ELEMENTS: usize = 20_000;
/// Attributes an element may have (only `type` means anything).
pub const MAX_ATTRIBUTES: usize = 8;

/// One element being read: its name, type and what it holds so far.
struct Open {
    name: String,
    kind: String,
    text: String,
    children: Vec<(String, Value)>,
}

impl Open {
    fn finish(self) -> Result<Value, String> {
        let text = self.text.trim();
        let at = &self.name;
        Ok(match self.kind.as_str() {
            "" | "string" => Value::String(self.text),
            "null" => Value::Null,
            "bool" => Value::Bool(
                text.parse()
                    .map_err(|_| format!("<{at}>: '{text}' is not true or false"))?,
            ),
            "number" => Value::Number(
                text.parse::<serde_json::Number>()
                    .map_err(|_| format!("<{at}>: '{text}' is not a number"))?,
            ),
            "array" => Value::Array(self.children.into_iter().map(|(_, v)| v).collect()),
            "object" => Value::Object(self.children.into_iter().collect::<Map<_, _>>()),
            other => return Err(format!("<{at}>: unknown type '{other}'")),
        })
    }
}

/// Read a document written by [`to_xml`] (or by hand in its form) back to a value; the
/// root element's name is checked.
pub fn from_xml(root: &str, text: &str) -> Result<Value, String> {
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Open> = Vec::new();
    let mut done: Option<Value> = None;
    let mut elements = 0usize;
    let mut open = |e: &quick_xml::events::BytesStart<'_>, depth: usize| -> Result<Open, String> {
        let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
        elements += 1;
        if elements > MAX_ELEMENTS {
            return Err(format!("more than {MAX_ELEMENTS} elements: not a job file"));
        }
        if depth > MAX_DEPTH {
            return Err(format!(
                "<{name}> is nested deeper than {MAX_DEPTH} levels: not a job file"
            ));
        }
        let mut kind = String::new();
        // Checking attributes for duplicates compares each with every other: a job's
        // elements have one, so the count is bounded instead.
        for (i, a) in e.attributes().with_checks(false).enumerate() {
            if i >= MAX_ATTRIBUTES {
                return Err(format!(
                    "<{name}> has more than {MAX_ATTRIBUTES} attributes"
                ));
            }
            let a = a.map_err(|err| format!("<{name}>: {err}"))?;
            if a.key.as_ref() == b"type" {
                kind = a
                    .unescape_value()
                    .map_err(|err| format!("<{name}>: {err}"))?
                    .into_owned();
            }
        }
        Ok(Open {
            name,
            kind,
            text: String::new(),
            children: Vec::new(),
        })
    };
    let mut close = |stack: &mut Vec<Open>, node: Open| -> Result<(), String> {
        let name = node.name.clone();
        let value = node.finish()?;
        match stack.last_mut() {
            Some(parent) => parent.children.push((name, value)),
            None => {
                if name != root {
                    return Err(format!("the document is a <{name}>, not a <{root}>"));
                }
                done = Some(value);
            }
        }
        Ok(())
    };
    loop {
        let pos = reader.buffer_position();
        match reader.read_event() {
            Err(e) => return Err(format!("not valid XML near byte {pos}: {e}")),
            Ok(Event::Eof) => break,
            Ok(Event::Start(e)) => {
                let node = open(&e, stack.len() + 1)?;
                stack.push(node);
            }
            Ok(Event::Empty(e)) => {
                let node = open(&e, stack.len() + 1)?;
                close(&mut stack, node)?;
            }
            Ok(Event::Text(t)) => {
                if let Some(top) = stack.last_mut() {
                    let s = t.decode().map_err(|e| format!("<{}>: {e}", top.name))?;
                    top.text.push_str(&s);
                }
            }
            // `&amp;`, `&#38;` and the like arrive on their own.
            Ok(Event::GeneralRef(r)) => {
                if let Some(top) = stack.last_mut() {
                    let c = match r.resolve_char_ref() {
                        Ok(Some(c)) => c,
                        Ok(None) => match r.decode().as_deref() {
                            Ok("amp") => '&',
                            Ok("lt") => '<',
                            Ok("gt") => '>',
                            Ok("quot") => '"',
                            Ok("apos") => '\'',
                            _ => return Err(format!("<{}>: unknown entity", top.name)),
                        },
                        Err(e) => return Err(format!("<{}>: {e}", top.name)),
                    };
                    top.text.push(c);
                }
            }
            Ok(Event::CData(t)) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Ok(Event::End(_)) => {
                let node = stack.pop().ok_or("an element is closed twice")?;
                close(&mut stack, node)?;
            }
            Ok(_) => {}
        }
    }
    if let Some(open) = stack.last() {
        return Err(format!("<{}> is not closed", open.name));
    }
    done.ok_or_else(|| format!("no <{root}> element"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_as_written() {
        let v = serde_json::json!({
            "name": "nightly <& \"x\">",
            "enabled": true,
            "spec": {"agents": [1, 2], "source": "/dev/sda", "encryption": null,
                     "schedule": {"kind": "daily", "time": "03:00"}, "empty": "", "list": []},
        });
        let xml = to_xml("job", &v);
        assert!(xml.contains("<source>/dev/sda</source>"), "{xml}");
        assert_eq!(from_xml("job", &xml).expect("read"), v);
    }

    #[test]
    fn hostile_files_are_refused_quickly() {
        // 20,000 levels deep: refused at the limit, not a stack overflow.
        let deep = "<a>".repeat(20_000) + &"</a>".repeat(20_000);
        let e = from_xml("job", &format!("<job>{deep}</job>")).expect_err("deep");
        assert!(e.contains("nested deeper than 32"), "{e}");
        // 150,000 attributes on one element: refused after a few, not parsed quadratically.
        let attrs: String = (0..150_000).map(|i| format!(" a{i}=\"x\"")).collect();
        let started = std::time::Instant::now();
        let e = from_xml("job", &format!("<job{attrs}/>")).expect_err("attributes");
        assert!(e.contains("more than 8 attributes"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let wide = "<i/>".repeat(MAX_ELEMENTS + 1);
        let e = from_xml("job", &format!("<job>{wide}</job>")).expect_err("wide");
        assert!(e.contains("more than 20000 elements"), "{e}");
        // A real job still reads.
        let ok = "<job type=\"object\"><a type=\"object\"><b type=\"number\">1</b></a></job>";
        assert!(from_xml("job", ok).is_ok());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert!(from_xml("job", "<report/>")
            .expect_err("root")
            .contains("<report>"));
        assert!(from_xml("job", "<job><a type=\"number\">x</a></job>")
            .expect_err("number")
            .contains("not a number"));
        assert!(from_xml("job", "<job><a>")
            .expect_err("open")
            .contains("not closed"));
        assert!(from_xml("job", "<job><a type=\"weird\"/></job>")
            .expect_err("type")
            .contains("unknown type"));
    }
}
