//! Reading a command file: XML, bounded, with the line of everything kept for messages.
//!
//! The document's root is `DiskImage`, `Job` or `DiskImageJob` (these may also wrap one
//! another); inside, `<command name="…">` elements whose children are parameters, and
//! parameters outside any command that set how the file runs (`stop_at_error`, `logfile`).
//! A parameter (or a command) may carry a `<CONDITION>`. Names are compared without case.
//! Limits: the file's size, nesting depth, element and attribute counts, a value's length;
//! no document type declaration, so no entity can be declared or fetched.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// The largest command file read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Deepest nesting (root, a wrapper, command, parameter, condition).
const MAX_DEPTH: usize = 8;
/// Elements in a file.
const MAX_ELEMENTS: usize = 10_000;
/// Attributes of an element (only `name` means anything).
const MAX_ATTRIBUTES: usize = 4;
/// Characters of one value.
const MAX_VALUE: usize = 4096;

/// The elements a command file may be wrapped in (`BackupJob`, as the manual's own backup
/// example writes it, too).
const WRAPPERS: [&str; 4] = ["diskimage", "job", "diskimagejob", "backupjob"];

/// A name and its value, with the line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Lower case.
    pub name: String,
    /// As written (not yet expanded), trimmed.
    pub value: String,
    pub line: usize,
    /// Applies only when this holds.
    pub condition: Option<String>,
}

/// One `<command>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Lower case, single spaces.
    pub name: String,
    pub line: usize,
    pub params: Vec<Param>,
    /// Runs only when this holds.
    pub condition: Option<String>,
}

/// A parsed command file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Script {
    /// Parameters outside any command.
    pub settings: Vec<Param>,
    pub commands: Vec<Command>,
}

/// What is wrong with a file, and on which line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// An element being read.
enum Open {
    Wrapper,
    Command(Command),
    /// A parameter of a command (or a setting), and its text so far.
    Param(Param),
    /// A condition; of the element below it on the stack.
    Condition(String, usize),
}

fn lower(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_ascii_lowercase()
}

/// Read `text` as a command file.
pub fn parse(text: &str) -> Result<Script, ParseError> {
    let line_of = |pos: u64| {
        let pos = (pos as usize).min(text.len());
        text.as_bytes()[..pos]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    };
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Open> = Vec::new();
    let mut script = Script::default();
    let mut elements = 0usize;
    let mut rooted = false;
    loop {
        let pos = reader.buffer_position();
        let fail = |reason: String| ParseError {
            line: line_of(pos),
            reason,
        };
        let event = reader
            .read_event()
            .map_err(|e| fail(format!("not valid XML: {e}")))?;
        match event {
            Event::Eof => break,
            Event::DocType(_) => {
                return Err(fail(
                    "a document type declaration is not allowed (no entities can be declared)"
                        .into(),
                ))
            }
            Event::Start(e) | Event::Empty(e) if stack.len() >= MAX_DEPTH => {
                return Err(fail(format!(
                    "<{}> is nested deeper than {MAX_DEPTH} levels",
                    lower(e.name().as_ref())
                )))
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                elements += 1;
                if elements > MAX_ELEMENTS {
                    return Err(fail(format!("more than {MAX_ELEMENTS} elements")));
                }
                let empty = matches!(event, Event::Empty(_));
                let line = line_of(pos);
                let open = open(e, &stack, rooted, line).map_err(fail)?;
                rooted = true;
                if empty {
                    close(open, &mut stack, &mut script).map_err(fail)?;
                } else {
                    stack.push(open);
                }
            }
            Event::End(_) => {
                let top = stack
                    .pop()
                    .ok_or_else(|| fail("an element is closed twice".into()))?;
                close(top, &mut stack, &mut script).map_err(fail)?;
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| fail(format!("{e}")))?;
                push_text(&mut stack, &s).map_err(fail)?;
            }
            Event::CData(t) => {
                let s = String::from_utf8_lossy(&t).into_owned();
                push_text(&mut stack, &s).map_err(fail)?;
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => match r.decode().as_deref() {
                        Ok("amp") => '&',
                        Ok("lt") => '<',
                        Ok("gt") => '>',
                        Ok("quot") => '"',
                        Ok("apos") => '\'',
                        Ok(other) => {
                            return Err(fail(format!(
                                "entity '&{other};' is not allowed (only &amp; &lt; &gt; &quot; &apos; and character references)"
                            )))
                        }
                        Err(e) => return Err(fail(format!("{e}"))),
                    },
                    Err(e) => return Err(fail(format!("{e}"))),
                };
                push_text(&mut stack, &c.to_string()).map_err(fail)?;
            }
            // The declaration, comments and processing instructions say nothing to us.
            _ => {}
        }
    }
    if let Some(open) = stack.last() {
        let what = match open {
            Open::Wrapper => "the document's root".to_owned(),
            Open::Command(c) => format!("<command name=\"{}\"> (line {})", c.name, c.line),
            Open::Param(p) => format!("<{}> (line {})", p.name, p.line),
            Open::Condition(_, line) => format!("<condition> (line {line})"),
        };
        return Err(ParseError {
            line: line_of(text.len() as u64),
            reason: format!("the file ends before {what} is closed: it is truncated"),
        });
    }
    if !rooted {
        return Err(ParseError {
            line: 1,
            reason: "no <DiskImage>, <Job> or <DiskImageJob> element: not a command file".into(),
        });
    }
    Ok(script)
}

/// The element `e` opened inside `stack`.
fn open(e: &BytesStart<'_>, stack: &[Open], rooted: bool, line: usize) -> Result<Open, String> {
    let name = lower(e.name().as_ref());
    let mut command_name = None;
    // Counted, not checked pairwise for duplicates: a file cannot make this slow.
    for (i, a) in e.attributes().with_checks(false).enumerate() {
        if i >= MAX_ATTRIBUTES {
            return Err(format!(
                "<{name}> has more than {MAX_ATTRIBUTES} attributes"
            ));
        }
        let a = a.map_err(|err| format!("<{name}>: {err}"))?;
        if a.key.as_ref().eq_ignore_ascii_case(b"name") {
            let v = a
                .unescape_value()
                .map_err(|err| format!("<{name}>: {err}"))?;
            command_name = Some(
                v.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_ascii_lowercase(),
            );
        }
    }
    match stack.last() {
        None if rooted => Err(format!("<{name}> follows the root element: one root only")),
        None if WRAPPERS.contains(&name.as_str()) => Ok(Open::Wrapper),
        None => Err(format!(
            "the root element is <{name}>, not <DiskImage>, <Job> or <DiskImageJob>: not a command file"
        )),
        Some(Open::Wrapper) if WRAPPERS.contains(&name.as_str()) => Ok(Open::Wrapper),
        Some(Open::Wrapper) if name == "command" => {
            let name = command_name
                .filter(|n| !n.is_empty())
                .ok_or("a <command> needs a name: <command name=\"create image\">")?;
            Ok(Open::Command(Command {
                name,
                line,
                params: Vec::new(),
                condition: None,
            }))
        }
        Some(Open::Wrapper | Open::Command(_) | Open::Param(_)) if name == "condition" => {
            Ok(Open::Condition(String::new(), line))
        }
        // A command's parameter, or a setting of the whole file.
        Some(Open::Command(_) | Open::Wrapper) => Ok(Open::Param(Param {
            name,
            value: String::new(),
            line,
            condition: None,
        })),
        Some(Open::Param(p)) => Err(format!(
            "<{name}> inside the parameter <{}> (line {}): a parameter holds a value",
            p.name, p.line
        )),
        Some(Open::Condition(..)) => Err(format!("<{name}> inside a <CONDITION>")),
    }
}

fn push_text(stack: &mut [Open], s: &str) -> Result<(), String> {
    let (text, what) = match stack.last_mut() {
        Some(Open::Param(p)) => (&mut p.value, p.name.clone()),
        Some(Open::Condition(c, _)) => (c, "condition".to_owned()),
        // Whitespace between elements; anything else is text where none belongs.
        _ if s.trim().is_empty() => return Ok(()),
        Some(Open::Command(c)) => {
            return Err(format!(
                "text '{}' directly inside <command name=\"{}\">: parameters are elements",
                s.trim(),
                c.name
            ))
        }
        _ => return Err(format!("text '{}' outside any parameter", s.trim())),
    };
    if text.len() + s.len() > MAX_VALUE {
        return Err(format!(
            "the value of <{what}> is longer than {MAX_VALUE} characters"
        ));
    }
    text.push_str(s);
    Ok(())
}

/// `top`, complete, handed to the element below it.
fn close(top: Open, stack: &mut [Open], script: &mut Script) -> Result<(), String> {
    match top {
        Open::Wrapper => Ok(()),
        Open::Command(c) => {
            script.commands.push(c);
            Ok(())
        }
        Open::Param(mut p) => {
            p.value = p.value.trim().to_owned();
            match stack.last_mut() {
                Some(Open::Command(c)) => c.params.push(p),
                _ => script.settings.push(p),
            }
            Ok(())
        }
        Open::Condition(text, line) => {
            let text = text.trim().to_owned();
            let slot = match stack.last_mut() {
                Some(Open::Command(c)) => &mut c.condition,
                Some(Open::Param(p)) => &mut p.condition,
                _ => return Err("a <CONDITION> outside a command or parameter".into()),
            };
            if slot.is_some() {
                return Err(format!("a second <CONDITION> (line {line})"));
            }
            *slot = Some(text);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_commands_parameters_conditions_and_lines() {
        let s = parse(
            "<?xml version=\"1.0\"?>\n<DiskImage>\n<stop_at_error>no</stop_at_error>\n\
             <!-- a comment -->\n<Command name=\"Create  Image\">\n<CONDITION> $ENV:(Step)==2</CONDITION>\n\
             <Image_Name>/b/x &amp; y.hfi</Image_Name>\n<devicename><![CDATA[/dev/sdb1]]></devicename>\n\
             <password>p<CONDITION>1==1</CONDITION></password>\n</Command>\n</DiskImage>\n",
        )
        .expect("parse");
        assert_eq!(s.settings.len(), 1);
        assert_eq!(s.settings[0].name, "stop_at_error");
        assert_eq!(s.settings[0].line, 3);
        let c = &s.commands[0];
        assert_eq!(c.name, "create image");
        assert_eq!(c.line, 5);
        assert_eq!(c.condition.as_deref(), Some("$ENV:(Step)==2"));
        assert_eq!(c.params[0].name, "image_name");
        assert_eq!(c.params[0].value, "/b/x & y.hfi");
        assert_eq!(c.params[0].line, 7);
        assert_eq!(c.params[1].value, "/dev/sdb1");
        assert_eq!(c.params[2].condition.as_deref(), Some("1==1"));
        // Wrappers may wrap one another.
        let s = parse("<Job><DiskImageJob><command name=\"validate image\"/></DiskImageJob></Job>")
            .expect("nested");
        assert_eq!(s.commands.len(), 1);
    }

    #[test]
    fn malformed_files_are_refused_with_their_line() {
        let e = parse("<DiskImage>\n<command name=\"create image\">\n<image_name>x</image_name>\n")
            .expect_err("truncated");
        assert!(e.reason.contains("truncated"), "{e}");
        let e = parse("<!DOCTYPE d [<!ENTITY a \"aaaa\"><!ENTITY b \"&a;&a;&a;\">]>\n<DiskImage>&b;</DiskImage>")
            .expect_err("entities");
        assert_eq!(e.line, 1);
        assert!(e.reason.contains("document type declaration"), "{e}");
        let e = parse("<DiskImage>\n<command name=\"x\"><p>&ent;</p></command></DiskImage>")
            .expect_err("entity");
        assert!(e.reason.contains("&ent;"), "{e}");
        assert_eq!(e.line, 2);
        let e = parse("<html/>").expect_err("root");
        assert!(e.reason.contains("not a command file"), "{e}");
        let e = parse("<DiskImage><command>x</command></DiskImage>").expect_err("no name");
        assert!(e.reason.contains("needs a name"), "{e}");
        let e = parse("<DiskImage>\n\n<command name=\"a\"><p><q/></p></command></DiskImage>")
            .expect_err("nested parameter");
        assert_eq!(e.line, 3);
        let e = parse("<DiskImage><command name=\"a\"></DiskImage>").expect_err("mismatch");
        assert!(e.reason.contains("not valid XML"), "{e}");
        let deep = "<Job>".repeat(20_000);
        let e = parse(&format!("<DiskImage>{deep}")).expect_err("deep");
        assert!(e.reason.contains("deeper than"), "{e}");
        let attrs: String = (0..150_000).map(|i| format!(" a{i}=\"x\"")).collect();
        let e = parse(&format!("<DiskImage{attrs}/>")).expect_err("attributes");
        assert!(e.reason.contains("more than 4 attributes"), "{e}");
        let long = "x".repeat(MAX_VALUE + 1);
        let e = parse(&format!(
            "<DiskImage><command name=\"a\"><p>{long}</p></command></DiskImage>"
        ))
        .expect_err("long");
        assert!(e.reason.contains("longer than"), "{e}");
    }
}
