//! Line and column of each value in a YAML file, by dotted path (`app.env.MODEL_DIR`),
//! so that validation errors can point into the user's config file.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based (line, column) of each scalar value and each mapping key's value.
pub fn positions(text: &str) -> HashMap<String, (usize, usize)> {
    let mut collector = Collector::default();
    let mut parser = Parser::new_from_str(text);
    // A syntax error was already reported by the deserializer; positions are best effort.
    let _ = parser.load(&mut collector, false);
    collector.found
}

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

#[derive(Default)]
struct Collector {
    stack: Vec<Frame>,
    path: Vec<String>,
    found: HashMap<String, (usize, usize)>,
}

impl Collector {
    /// Called for each node that is a value (not a mapping key): records it and
    /// returns the path it sits at.
    fn value_path(&mut self) -> Option<String> {
        match self.stack.last_mut()? {
            Frame::Map { key } => key.take().map(|k| {
                self.path
                    .iter()
                    .cloned()
                    .chain([k])
                    .collect::<Vec<_>>()
                    .join(".")
            }),
            Frame::Seq { index } => {
                let i = *index;
                *index += 1;
                Some(
                    self.path
                        .iter()
                        .cloned()
                        .chain([i.to_string()])
                        .collect::<Vec<_>>()
                        .join("."),
                )
            }
        }
    }

    fn is_key_position(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None }))
    }
}

impl MarkedEventReceiver for Collector {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(value, ..) => {
                if self.is_key_position() {
                    if let Some(Frame::Map { key }) = self.stack.last_mut() {
                        *key = Some(value);
                    }
                } else if let Some(path) = self.value_path() {
                    self.found.insert(path, pos);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let container = if self.stack.is_empty() {
                    Some(String::new())
                } else {
                    self.value_path()
                };
                if let Some(path) = container {
                    if !path.is_empty() {
                        self.found.insert(path.clone(), pos);
                        self.path = path.split('.').map(str::to_owned).collect();
                    }
                }
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { key: None }
                } else {
                    Frame::Seq { index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.path.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_values() {
        let text = "domain: a.example.com\napp:\n  env:\n    MODEL_DIR: x\n  port: 80\nadmin:\n  ssh-keys:\n    - k1\n    - k2\n";
        let p = positions(text);
        assert_eq!(p["domain"], (1, 9));
        assert_eq!(p["app.env.MODEL_DIR"], (4, 16));
        assert_eq!(p["app.port"], (5, 9));
        assert_eq!(p["admin.ssh-keys.1"], (9, 7));
    }
}
