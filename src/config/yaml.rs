//! YAML for figment, parsed by `serde_norway` (figment's own `yaml` feature pulls in the deprecated `serde_yaml`).
//!
//! Invariant: a syntax error keeps its 1-based line and column. figment flattens a `Format` error into a plain message,
//! so [`YamlError`] renders the position in a fixed `line L column C: ...` form that [`YamlError::decode`] reads back.

use std::fmt;
use std::path::PathBuf;

use figment::providers::Format;
use figment::value::{Dict, Map};
use figment::{Metadata, Profile, Provider};
use serde::de::DeserializeOwned;

/// The figment [`Format`] for YAML: `Yaml::file(path)` or `Yaml::string(text)` is a figment provider.
pub struct Yaml;

impl Format for Yaml {
    type Error = YamlError;

    const NAME: &'static str = "YAML";

    fn from_str<T: DeserializeOwned>(string: &str) -> Result<T, YamlError> {
        if is_blank(string) {
            // An empty or comment-only file is an empty mapping, so the operator hears about missing keys instead of
            // "EOF while parsing a value".
            return serde_norway::from_str("{}").map_err(YamlError::from);
        }
        // Parsed as a YAML value first because that rejects duplicate keys (with their position), which figment's
        // map would otherwise resolve silently, last one winning: two `us-east:` entries must not quietly merge.
        let mut value: serde_norway::Value = serde_norway::from_str(string)?;
        if string.contains("<<") {
            // Merge keys (`<<: *defaults`) are how YAML shares client settings between clusters.
            value.apply_merge()?;
            return serde_norway::from_value(value).map_err(YamlError::from);
        }
        // Otherwise straight from the text, which keeps positions on type errors and YAML's "any scalar can be a
        // string" leniency for keys.
        serde_norway::from_str(string).map_err(YamlError::from)
    }
}

/// Whether a YAML document holds nothing but whitespace, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

/// A YAML parse error with its position (1-based; `0` when the parser reported none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// 1-based line of the error, or 0 if unknown.
    pub line: usize,
    /// 1-based column of the error, or 0 if unknown.
    pub column: usize,
    /// What the parser complained about, without the position.
    pub message: String,
}

impl YamlError {
    /// Recovers a `YamlError` from the text figment kept of it; `None` if `text` was not produced by `Display` here.
    pub fn decode(text: &str) -> Option<YamlError> {
        let rest = text.strip_prefix("line ")?;
        let (line, rest) = rest.split_once(" column ")?;
        let (column, message) = rest.split_once(": ")?;
        Some(YamlError { line: line.parse().ok()?, column: column.parse().ok()?, message: message.to_string() })
    }
}

impl From<serde_norway::Error> for YamlError {
    fn from(e: serde_norway::Error) -> Self {
        let message = e.to_string();
        match e.location() {
            Some(at) => {
                // serde_norway appends the same position to its message; drop that copy (but keep any later
                // "while parsing ... at line N" context, which points somewhere else).
                let suffix = format!(" at line {} column {}", at.line(), at.column());
                YamlError { line: at.line(), column: at.column(), message: message.replacen(&suffix, "", 1) }
            }
            None => YamlError { line: 0, column: 0, message },
        }
    }
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} column {}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for YamlError {}

impl serde::de::Error for YamlError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        YamlError { line: 0, column: 0, message: msg.to_string() }
    }
}

/// A YAML document already read from `path`: figment sees the file name in errors, and the file is read only once
/// (a Kubernetes ConfigMap can be swapped between two reads).
pub(crate) struct YamlFile {
    pub(crate) path: PathBuf,
    pub(crate) content: String,
}

impl Provider for YamlFile {
    fn metadata(&self) -> Metadata {
        Metadata::from(Yaml::NAME, self.path.as_path())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Yaml::string(&self.content).data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Figment;

    #[test]
    fn syntax_error_keeps_position_through_figment() {
        let text = "http:\n  listen: \"0.0.0.0:1\"\n flows: [\n";
        let err = Figment::from(Yaml::string(text)).extract::<Dict>().unwrap_err();
        let figment::error::Kind::Message(message) = &err.kind else {
            panic!("figment wraps format errors as messages: {err:?}");
        };
        let decoded = YamlError::decode(message).expect("position survives");
        assert_eq!((decoded.line, decoded.column), (3, 2), "{decoded:?}");
        assert!(!decoded.message.contains(" at line 3 column 2"), "{decoded:?}");
    }

    #[test]
    fn blank_documents_are_empty_mappings() {
        for text in ["", "\n\n", "# only a comment\n", "---\n# x\n"] {
            let dict = Figment::from(Yaml::string(text)).extract::<Dict>().unwrap();
            assert!(dict.is_empty(), "{text:?}");
        }
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let text = "clusters:\n  a: { bootstrap_servers: x }\n  a: { bootstrap_servers: y }\n";
        let err = Yaml::from_str::<Dict>(text).unwrap_err();
        assert_eq!((err.line, err.column), (2, 3));
        assert_eq!(err.message, "clusters: duplicate entry with key \"a\"");
    }

    #[test]
    fn merge_keys_are_applied() {
        let text = "base: &base { x: 1, y: 2 }\nthing:\n  <<: *base\n  y: 3\n";
        let dict: Dict = Figment::from(Yaml::string(text)).extract().unwrap();
        let thing = dict["thing"].as_dict().unwrap();
        assert_eq!(thing["x"].to_u128(), Some(1));
        assert_eq!(thing["y"].to_u128(), Some(3), "explicit keys win over merged ones");
        assert!(!thing.contains_key("<<"));
    }

    #[test]
    fn decode_rejects_foreign_text() {
        assert_eq!(YamlError::decode("No such file or directory"), None);
        let e = YamlError { line: 2, column: 9, message: "mapping values are not allowed in this context".into() };
        assert_eq!(YamlError::decode(&e.to_string()), Some(e));
    }
}
