//! A validation report: every problem in the input at once, each with a path,
//! the bad value, what to do and, for the config file, line and column.

use std::fmt;
use std::path::PathBuf;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag, e.g. `--domain`.
    Flag(&'static str),
    /// A key in the config file, with its position when known (1-based).
    File {
        file: PathBuf,
        path: String,
        line: Option<usize>,
        column: Option<usize>,
    },
    /// A default imgforge filled in.
    Default(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub severity: Severity,
    pub origin: Origin,
    /// The bad value as the user gave it, quoted and escaped; `None` when it must
    /// not be shown (private keys).
    pub value: Option<String>,
    pub message: String,
    pub help: String,
}

/// Problems with the user's input. Its source, [`crate::exit::BadInput`], makes it exit
/// code 2, printed as is.
#[derive(Debug, Default, thiserror::Error)]
pub struct Problems {
    pub entries: Vec<Entry>,
    #[source]
    bad_input: crate::exit::BadInput,
}

impl Problems {
    pub fn single(entry: Entry) -> Problems {
        Problems {
            entries: vec![entry],
            bad_input: crate::exit::BadInput,
        }
    }

    pub fn push(&mut self, entry: Entry) {
        self.entries.push(entry);
    }

    pub fn error(
        &mut self,
        origin: Origin,
        value: Option<&str>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.push(Entry {
            severity: Severity::Error,
            origin,
            value: value.map(|v| format!("{v:?}")),
            message: message.into(),
            help: help.into(),
        });
    }

    pub fn has_errors(&self) -> bool {
        self.entries.iter().any(|e| e.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| e.severity == Severity::Warning)
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let name = match &self.origin {
            Origin::Flag(flag) => (*flag).to_string(),
            Origin::File { path, .. } => path.clone(),
            Origin::Default(what) => format!("default {what}"),
        };
        write!(f, "{severity}[{name}]: {}", self.message)?;
        if let Some(value) = &self.value {
            // A long value is shown by its start: enough to find it.
            const SHOWN: usize = 200;
            match value.char_indices().nth(SHOWN) {
                Some((end, _)) => write!(
                    f,
                    "\n  value: {}… ({} bytes in all)",
                    &value[..end],
                    value.len()
                )?,
                None => write!(f, "\n  value: {value}")?,
            }
        }
        if let Origin::File {
            file, line, column, ..
        } = &self.origin
        {
            match (line, column) {
                (Some(l), Some(c)) => write!(f, "\n  --> {}:{l}:{c}", file.display())?,
                _ => write!(f, "\n  --> {}", file.display())?,
            }
        }
        if !self.help.is_empty() {
            write!(f, "\n  = help: {}", self.help)?;
        }
        Ok(())
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for entry in &self.entries {
            writeln!(f, "{entry}")?;
        }
        let errors = self
            .entries
            .iter()
            .filter(|e| e.severity == Severity::Error)
            .count();
        if errors > 0 {
            writeln!(f, "{errors} error(s) in the input; nothing was written")?;
        }
        Ok(())
    }
}

/// The YAML library's message about a file, without the values it quotes from it (a
/// value in the wrong place may be a secret: a private key or a token passed as the
/// file), and in the file's terms rather than the program's type names.
pub fn parse_message(msg: &str) -> String {
    // The position is shown apart from the message.
    let msg = msg.split(" at line ").next().unwrap_or(msg);
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("string \"") {
        out.push_str(&rest[..i]);
        out.push_str("a string");
        let quoted = &rest[i + "string \"".len()..];
        let mut end = quoted.len();
        let mut escaped = false;
        for (j, c) in quoted.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = j + 1;
                    break;
                }
                _ => escaped = false,
            }
        }
        rest = &quoted[end..];
    }
    out.push_str(rest);
    let mut out = match (out.find("unknown variant `"), out.find("`, expected")) {
        (Some(a), Some(b)) if a < b => format!("{}unknown value{}", &out[..a], &out[b + 1..]),
        _ => out,
    };
    while let Some(i) = out.find("struct ") {
        let name_end = out[i + 7..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(out.len(), |e| i + 7 + e);
        out.replace_range(i..name_end, "a mapping of keys");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_message;

    #[test]
    fn parse_messages_quote_no_value_and_name_no_type() {
        let secret = "-----BEGIN OPENSSH PRIVATE KEY----- b3BlbnNzaC1rZXk \\\"x\\\" end";
        let msg = format!(
            "invalid type: string \"{secret}\", expected struct Settings at line 1 column 1"
        );
        let shown = parse_message(&msg);
        assert_eq!(shown, "invalid type: a string, expected a mapping of keys");
        let shown = parse_message("domain: unknown variant `hunter2`, expected `a` or `b`");
        assert_eq!(shown, "domain: unknown value, expected `a` or `b`");
        assert!(!parse_message("invalid value: string \"SECRET\", expected x").contains("SECRET"));
        assert_eq!(
            parse_message("unknown field `foo`, expected one of `bar`"),
            "unknown field `foo`, expected one of `bar`"
        );
    }
}
