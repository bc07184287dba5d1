//! The files imgforge writes onto the VM, from `templates/`: embedded in the binary,
//! overridable file by file from a directory. `*.hbs` files are handlebars templates in
//! strict mode with escaping off; other files are copied as they are.

use std::path::Path;

use anyhow::{Context, Result};
use handlebars::Handlebars;
use serde::Serialize;

#[derive(rust_embed::RustEmbed)]
#[folder = "templates/"]
struct Embedded;

/// The template set: the embedded files, with the user's overrides on top.
pub struct Templates {
    hbs: Handlebars<'static>,
    overrides: std::collections::HashMap<String, String>,
}

impl Templates {
    /// The embedded templates, with each file in `dir` (if given) replacing the
    /// embedded file of the same name.
    pub fn load(dir: Option<&Path>) -> Result<Self> {
        let mut overrides = std::collections::HashMap::new();
        if let Some(dir) = dir {
            for name in Embedded::iter() {
                let path = dir.join(name.as_ref());
                if path.exists() {
                    let text = crate::fsutil::read_small(&path).map_err(|e| {
                        crate::exit::usage(format!("--templates: {}: {e}", path.display()))
                    })?;
                    overrides.insert(name.to_string(), text);
                }
            }
            let known: Vec<String> = Embedded::iter().map(|n| n.to_string()).collect();
            let entries = std::fs::read_dir(dir)
                .map_err(|e| crate::exit::usage(format!("--templates {}: {e}", dir.display())))?;
            for entry in entries {
                let entry = entry
                    .with_context(|| format!("reading template directory {}", dir.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !known.contains(&name) {
                    return Err(crate::exit::usage(format!(
                        "template directory {} has {name:?}, which is not one of imgforge's templates ({})",
                        dir.display(),
                        known.join(", ")
                    )));
                }
            }
        }
        let mut hbs = Handlebars::new();
        hbs.set_strict_mode(true);
        hbs.register_escape_fn(handlebars::no_escape);
        for name in Embedded::iter().filter(|n| n.ends_with(".hbs")) {
            let text = match overrides.get(name.as_ref()) {
                Some(t) => t.clone(),
                None => embedded_text(&name)?,
            };
            let overridden = overrides.contains_key(name.as_ref());
            hbs.register_template_string(&name, text).map_err(|e| {
                if overridden {
                    crate::exit::usage(format!("--templates: {name}: {e}"))
                } else {
                    anyhow::anyhow!("parsing the embedded template {name}: {e}")
                }
            })?;
        }
        Ok(Templates { hbs, overrides })
    }

    /// Renders the template `name` (`*.hbs`) with `data`; a missing variable is an error.
    pub fn render<T: Serialize>(&self, name: &str, data: &T) -> Result<String> {
        self.hbs.render(name, data).map_err(|e| {
            if self.overrides.contains_key(name) {
                crate::exit::usage(format!("--templates: {name}: {}", e.reason()))
            } else {
                anyhow::anyhow!("rendering the embedded template {name}: {e}")
            }
        })
    }

    /// A file that is not a template, as it is.
    pub fn file(&self, name: &str) -> Result<String> {
        match self.overrides.get(name) {
            Some(t) => Ok(t.clone()),
            None => embedded_text(name),
        }
    }
}

fn embedded_text(name: &str) -> Result<String> {
    let file = Embedded::get(name).with_context(|| format!("no embedded template {name}"))?;
    String::from_utf8(file.data.into_owned())
        .with_context(|| format!("template {name} is not UTF-8"))
}
