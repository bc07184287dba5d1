//! The VM program (`guest/`, Python) as one executable file: a zip of its modules with a
//! `#!/usr/bin/python3` line in front, which python3 runs as it would a script. Stored
//! (not compressed: the user-data gzips it), sorted, with fixed times, so the same
//! sources give the same bytes. Comments and docstrings are left out ([`minify`]): the
//! user-data has to fit providers' 16 KB limits, and the source is in the repository.

use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "guest/"]
#[include = "__main__.py"]
#[include = "imgforge_vm/*.py"]
#[include = "imgforge_vm/*.json"]
struct Sources;

const SHEBANG: &[u8] = b"#!/usr/bin/python3\n";
/// 1980-01-01 00:00, the earliest time a zip can hold.
const DOS_DATE: u16 = (1 << 5) | 1;

/// The program's file names, sorted.
pub fn files() -> Vec<String> {
    let mut names: Vec<String> = Sources::iter().map(|n| n.into_owned()).collect();
    names.sort();
    names
}

/// One source file as shipped: `.py` files minified.
pub fn shipped(name: &str) -> Vec<u8> {
    let data = Sources::get(name)
        .map(|f| f.data.into_owned())
        .unwrap_or_default();
    match std::str::from_utf8(&data) {
        Ok(text) if name.ends_with(".py") => minify(text).into_bytes(),
        Ok(text) if name.ends_with(".json") => compact_json(text).into_bytes(),
        _ => data,
    }
}

/// JSON without the whitespace between tokens (strings and key order as they are).
fn compact_json(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in src.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// Drops blank lines, comments and docstrings (a docstring that is a block's only
/// statement becomes `pass`), joins the lines of a bracketed expression into one, and
/// indents by one space a level instead of four. Relies on the program's conventions,
/// checked by tests: triple quotes appear only where a docstring starts and ends, and
/// blocks are indented by four spaces.
pub fn minify(src: &str) -> String {
    let lines: Vec<&str> = src.lines().collect();
    let mut out = String::with_capacity(src.len());
    // An unfinished logical line (open brackets or a trailing backslash): the next
    // physical line joins it.
    let mut pending: Option<String> = None;
    let mut depth = 0i32;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let code = line.trim_start_matches(' ');
        let level = (line.len() - code.len()) / 4;
        if pending.is_none() {
            if code.trim().is_empty() || code.starts_with('#') {
                continue;
            }
            if let Some(rest) = code.strip_prefix("\"\"\"") {
                if !rest.contains("\"\"\"") {
                    while i < lines.len() && !lines[i].contains("\"\"\"") {
                        i += 1;
                    }
                    i += 1;
                }
                // Only a block with nothing else in it needs a statement in its place.
                let next = lines[i.min(lines.len())..]
                    .iter()
                    .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
                let alone =
                    next.is_none_or(|l| (l.len() - l.trim_start_matches(' ').len()) / 4 < level);
                if alone {
                    out.push_str(&" ".repeat(level));
                    out.push_str("pass\n");
                }
                continue;
            }
        }
        let (code, opened, continued) = scan(code);
        depth += opened;
        let text = match pending.take() {
            Some(mut joined) => {
                joined.push(' ');
                joined.push_str(code.trim());
                joined
            }
            None => format!("{}{}", " ".repeat(level), code.trim_end()),
        };
        if depth > 0 || continued {
            pending = Some(text);
        } else {
            push_squeezed(&mut out, &text);
        }
    }
    if let Some(text) = pending {
        push_squeezed(&mut out, &text);
    }
    out
}

/// Pushes a logical line without the spaces Python does not need: those next to an
/// operator or a bracket, outside strings (the indentation stays).
fn push_squeezed(out: &mut String, line: &str) {
    let code = line.trim_start_matches(' ');
    out.push_str(&line[..line.len() - code.len()]);
    let punct = |c: Option<char>| c.is_some_and(|c| ",()[]{}=:+-*/%<>!|&^~;".contains(c));
    let chars: Vec<char> = code.chars().collect();
    let mut quote = None;
    let mut last = None;
    let mut k = 0;
    while k < chars.len() {
        let c = chars[k];
        match quote {
            Some(_) if c == '\\' => {
                out.push(c);
                k += 1;
                if let Some(&n) = chars.get(k) {
                    out.push(n);
                }
                k += 1;
                continue;
            }
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == ' ' && (punct(last) || punct(chars.get(k + 1).copied())) => {
                k += 1;
                continue;
            }
            None => {}
        }
        out.push(c);
        last = Some(c);
        k += 1;
    }
    out.push('\n');
}

/// One physical line's code without its comment, how many brackets it leaves open, and
/// whether it ends with a backslash that continues it. Strings are skipped whole (the
/// program keeps each string on one line).
fn scan(line: &str) -> (&str, i32, bool) {
    let bytes = line.as_bytes();
    let (mut depth, mut quote, mut end) = (0i32, None::<u8>, line.len());
    let mut j = 0;
    while j < bytes.len() {
        let c = bytes[j];
        match quote {
            Some(_) if c == b'\\' => j += 1,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                b'\'' | b'"' => quote = Some(c),
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth -= 1,
                b'#' => {
                    end = j;
                    break;
                }
                _ => {}
            },
        }
        j += 1;
    }
    let code = line[..end].trim_end();
    match code.strip_suffix('\\') {
        Some(head) => (head, depth, true),
        None => (code, depth, false),
    }
}

/// Modules a deployment may leave out when it does not use them: the user-data carries
/// only what its VM runs.
/// What a VM's program needs beyond its core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// Registers its address with a DNS provider.
    pub dns: bool,
    /// Runs a provisioning boot (`imgforge build --provision`).
    pub provision: bool,
    /// Serves day two (deploy, rollback, status): `install-program` brings it later.
    pub day_two: bool,
    /// Gets its app's image as a bundle (from a URL, the seed disk or the image).
    pub bundle: bool,
    /// Backs up to a BorgBackup repository.
    pub borg: bool,
    /// Is a node of a Docker Swarm cluster.
    pub cluster: bool,
}

impl Needs {
    /// No optional part: what every VM runs.
    pub const CORE: Needs = Needs {
        dns: false,
        provision: false,
        day_two: false,
        bundle: false,
        borg: false,
        cluster: false,
    };
    /// Every optional part: the program `install-program` sends on day two.
    pub const ALL: Needs = Needs {
        dns: true,
        provision: true,
        day_two: true,
        bundle: true,
        borg: true,
        cluster: true,
    };
}

type Uses = fn(Needs) -> bool;
const OPTIONAL: &[(&str, Uses)] = &[
    ("imgforge_vm/dns.py", |n| n.dns),
    ("imgforge_vm/provision.py", |n| n.provision),
    ("imgforge_vm/remote.py", |n| n.day_two),
    ("imgforge_vm/logs.py", |n| n.day_two),
    ("imgforge_vm/restore.py", |n| n.day_two),
    ("imgforge_vm/bundle.py", |n| n.bundle),
    ("imgforge_vm/borg.py", |n| n.borg),
    ("imgforge_vm/swarm.py", |n| n.cluster),
    ("imgforge_vm/registry.py", |n| n.cluster),
];

/// The program with every module.
pub fn zipapp() -> Vec<u8> {
    zip(&files(), Needs::ALL)
}

/// The program without the optional modules the VM does not need.
pub fn zipapp_for(needs: Needs) -> Vec<u8> {
    zip(&files_for(needs), needs)
}

/// A file of the program a VM with `needs` runs: [`shipped`], and layout.json with only
/// the entries the VM's modules name (the others are the rendered files' or the modules'
/// the VM does not get: user-data is limited in size), `generalize` only with provision.py.
pub fn shipped_for(name: &str, needs: Needs) -> Vec<u8> {
    let data = shipped(name);
    if name != "imgforge_vm/layout.json" {
        return data;
    }
    let sources: Vec<String> = files_for(needs)
        .iter()
        .filter(|n| n.ends_with(".py"))
        .map(|n| String::from_utf8_lossy(&shipped(n)).into_owned())
        .collect();
    let mut layout: serde_json::Value =
        serde_json::from_slice(&data).expect("the shipped layout.json is JSON");
    if let Some(map) = layout.as_object_mut() {
        map.retain(|key, _| sources.iter().any(|src| names(src, key)));
        // Also a command's name: what a provisioning boot clears goes with provision.py.
        if !needs.provision {
            map.remove("generalize");
        }
    }
    serde_json::to_vec(&layout).expect("JSON serializes")
}

/// Whether Python source `src` names `key`: as a whole word (`paths.key`, `"key"`).
fn names(src: &str, key: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    src.match_indices(key).any(|(at, _)| {
        !word(src[..at].chars().next_back()) && !word(src[at + key.len()..].chars().next())
    })
}

/// The files of the program a VM with `needs` runs.
pub fn files_for(needs: Needs) -> Vec<String> {
    files()
        .into_iter()
        .filter(|n| OPTIONAL.iter().all(|(name, used)| n != name || used(needs)))
        .collect()
}

/// The shebang line, then a zip of `names` as a VM with `needs` runs them.
fn zip(names: &[String], needs: Needs) -> Vec<u8> {
    let mut out = SHEBANG.to_vec();
    let mut central = Vec::new();
    for name in names {
        let data = shipped_for(name, needs);
        let crc = crc32fast::hash(&data);
        let offset = out.len() as u32;
        // Local file header.
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes()); // version needed
        out.extend_from_slice(&0u16.to_le_bytes()); // flags
        out.extend_from_slice(&0u16.to_le_bytes()); // stored
        out.extend_from_slice(&0u16.to_le_bytes()); // time
        out.extend_from_slice(&DOS_DATE.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // extra
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&data);
        // Its central directory entry.
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&((3u16 << 8) | 20).to_le_bytes()); // made by: Unix
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes());
        central.extend_from_slice(&DOS_DATE.to_le_bytes());
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 6]); // extra, comment, disk number
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        central.extend_from_slice(&((0o100644u32) << 16).to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let central_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // disk numbers
    out.extend_from_slice(&(names.len() as u16).to_le_bytes());
    out.extend_from_slice(&(names.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&central_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_holds_its_entry_point_modules_and_layout_but_no_tests() {
        let names = files();
        assert!(names.contains(&"__main__.py".to_string()), "{names:?}");
        assert!(
            names.contains(&"imgforge_vm/cli.py".to_string()),
            "{names:?}"
        );
        assert!(names.contains(&"imgforge_vm/layout.json".to_string()));
        assert!(names.iter().all(|n| !n.starts_with("tests/")), "{names:?}");
    }

    #[test]
    fn a_vms_layout_has_the_entries_its_modules_name_and_no_other() {
        let core = Needs::CORE;
        let of = |needs| -> serde_json::Value {
            serde_json::from_slice(&shipped_for("imgforge_vm/layout.json", needs)).unwrap()
        };
        let (all, core) = (of(Needs::ALL), of(core));
        // Only the rendered files name these; provisioning's and day two's modules these.
        for key in ["docker_daemon", "units_dir", "journald_conf"] {
            assert!(all.get(key).is_none(), "{key}");
        }
        for key in ["generalize", "nginx_access_log", "jobs_dir"] {
            assert!(all.get(key).is_some() && core.get(key).is_none(), "{key}");
        }
        for key in ["program", "slots", "units", "status", "backup_state"] {
            assert!(core.get(key).is_some(), "{key}");
        }
        assert!(names("x = paths.log_dir\n", "log_dir"));
        assert!(!names("x = paths.log_dir_old\n", "log_dir"));
        assert!(!names("catalog_dir", "log_dir"));
    }

    #[test]
    fn shipped_json_is_compact_and_the_same_document() {
        let src = Sources::get("imgforge_vm/layout.json").unwrap().data;
        let shipped = shipped("imgforge_vm/layout.json");
        assert!(shipped.len() < src.len() && !shipped.contains(&b'\n'));
        let a: serde_json::Value = serde_json::from_slice(&src).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&shipped).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            compact_json(r#"{ "a b": "x \" y" }"#),
            r#"{"a b":"x \" y"}"#
        );
    }

    #[test]
    fn minify_keeps_code_and_turns_docstrings_into_pass() {
        let src = "\"\"\"Module.\n\nMore.\n\"\"\"\n# comment\nimport os\n\n\nclass E(Exception):\n    \"\"\"Only a docstring.\"\"\"\n\n\ndef f():\n    \"\"\"Doc.\n    more\n    \"\"\"\n    return '#not a comment'  # trailing\n";
        assert_eq!(
            minify(src),
            "import os\nclass E(Exception):\n pass\ndef f():\n return '#not a comment'\n"
        );
    }

    #[test]
    fn minify_joins_bracketed_lines_and_drops_trailing_comments() {
        let src = "x = f(a,  # why\n      \"b)#\",\n      c)\ny = [1,\n     2] + \\\n    [3]\nz = '\\'' # q\n";
        assert_eq!(minify(src), "x=f(a,\"b)#\",c)\ny=[1,2]+[3]\nz='\\''\n");
    }

    #[test]
    fn triple_quotes_appear_only_as_docstrings() {
        // minify's one assumption about the program's source.
        for name in files().iter().filter(|n| n.ends_with(".py")) {
            let text = String::from_utf8(Sources::get(name).unwrap().data.into_owned()).unwrap();
            let mut in_docstring = false;
            for (i, line) in text.lines().enumerate() {
                let code = line.trim_start();
                let quotes = line.matches("\"\"\"").count();
                if in_docstring {
                    in_docstring = quotes == 0;
                    continue;
                }
                if quotes > 0 {
                    assert!(
                        code.starts_with("\"\"\""),
                        "{name}:{}: triple quotes that do not start a docstring",
                        i + 1
                    );
                    in_docstring = quotes == 1;
                }
            }
        }
    }

    #[test]
    fn the_same_sources_give_the_same_bytes() {
        assert_eq!(zipapp(), zipapp());
        assert!(zipapp().starts_with(SHEBANG));
    }
}
