//! Config errors, and the translation of figment's errors into problems that name a key path.
//!
//! Invariant: every problem names the key it is about in the operator's own notation (`flows[1].topics.include[0]`,
//! `clusters.us-east.bootstrap_servers`), whether it came from parsing, type checking or semantic validation.

use std::fmt;
use std::io;
use std::path::PathBuf;

use figment::error::Kind;
use figment::providers::Format;

use super::yaml::{Yaml, YamlError};

/// Why a configuration could not be loaded; all variants mean "bad config" (CLI exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read (missing, unreadable, not UTF-8).
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The file is not valid YAML; `line` and `column` are 1-based (0 when the parser gave no position).
    #[error("{}", yaml_error_text(path, *line, *column, message))]
    Yaml {
        /// The file (or `<string>` for inline YAML).
        path: PathBuf,
        /// 1-based line of the error, or 0 if unknown.
        line: usize,
        /// 1-based column of the error, or 0 if unknown.
        column: usize,
        /// The parser's complaint.
        message: String,
    },
    /// The YAML parsed but breaks the config contract: every problem found, one per line when displayed.
    #[error("{}", ProblemLines(.0))]
    Invalid(Vec<ConfigProblem>),
}

impl ConfigError {
    /// The individual problems of an `Invalid` error (empty for the other variants).
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            _ => &[],
        }
    }
}

/// Renders a YAML error the way editors and compilers do: `file:line:column`.
fn yaml_error_text(path: &std::path::Path, line: usize, column: usize, message: &str) -> String {
    if line == 0 {
        format!("invalid YAML in {}: {message}", path.display())
    } else {
        format!("invalid YAML in {} at line {line}, column {column}: {message}", path.display())
    }
}

/// Displays problems one per line.
struct ProblemLines<'a>(&'a [ConfigProblem]);

impl fmt::Display for ProblemLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// One thing wrong with a config, at one key path; displays as `<key path>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where: `flows[1].topics.include[0]`, `clusters.us-east.bootstrap_servers`, `checkpoint.interval`, or empty
    /// for the whole document.
    pub path: String,
    /// What is wrong, and where useful what would be right.
    pub message: String,
}

impl ConfigProblem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigProblem { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Fields that hold sequences, so a numeric path segment after them is an index (`[0]`), not a map key.
const SEQUENCE_FIELDS: &[&str] = &["flows", "throttles", "include", "exclude", "endpoints"];

/// Renders figment's path segments (`["flows", "1", "topics", "include", "0"]`) as `flows[1].topics.include[0]`.
///
/// figment reports sequence indices and map keys alike as strings, so the schema decides: a number is an index only
/// right after a sequence field, and nothing below `client` (librdkafka property names) is schema at all.
pub fn render_path<S: AsRef<str>>(segments: &[S]) -> String {
    let mut out = String::new();
    let mut previous: Option<&str> = None;
    // Whether `previous` was a user-chosen name (a cluster alias or client property) rather than a field name.
    let mut previous_is_name = false;
    let mut in_client = false;
    for segment in segments {
        let segment = segment.as_ref();
        let after_field = !previous_is_name && !in_client;
        let is_index = after_field
            && previous.is_some_and(|p| SEQUENCE_FIELDS.contains(&p))
            && !segment.is_empty()
            && segment.bytes().all(|b| b.is_ascii_digit());
        if is_index {
            out.push('[');
            out.push_str(segment);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
        previous_is_name = after_field && previous == Some("clusters");
        in_client = in_client || (after_field && previous == Some("client"));
        previous = Some(segment);
    }
    out
}

/// Lists choices for messages: `a, b or c`.
fn one_of(choices: &[&str]) -> String {
    match choices {
        [] => "nothing".to_string(),
        [only] => only.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Turns one figment error (not its chain) into a problem; `prefix` are path segments figment did not know about.
pub(crate) fn problem_from_figment(error: &figment::Error, prefix: &[&str]) -> ConfigProblem {
    let mut segments: Vec<&str> = prefix.to_vec();
    segments.extend(error.path.iter().map(String::as_str));
    let env_var = format!("FERRY_{}", segments.join("__").to_ascii_uppercase());
    let message = match &error.kind {
        Kind::MissingField(field) => {
            segments.push(field);
            "missing required key".to_string()
        }
        Kind::UnknownField(found, expected) => {
            // Derived structs report it with the key already in the path; hand-written visitors do not.
            if segments.last() != Some(&found.as_str()) {
                segments.push(found);
            }
            format!("unknown key (expected {})", one_of(expected))
        }
        Kind::UnknownVariant(found, expected) => {
            format!("unknown value {found:?} (expected {})", one_of(expected))
        }
        Kind::InvalidType(actual, expected) => format!("expected {expected}, found {actual}"),
        Kind::InvalidValue(actual, expected) => {
            format!("invalid value {actual}: expected {expected}")
        }
        Kind::DuplicateField(field) => {
            segments.push(field);
            "key given twice".to_string()
        }
        other => other.to_string(),
    };
    let path = render_path(&segments);
    let from_env = error.metadata.as_ref().is_some_and(|md| md.name.contains("environment variable"));
    let message = if from_env {
        // Name the variable: the operator may not know which layer supplied the bad value.
        format!("{message} (from environment variable {env_var})")
    } else {
        message
    };
    ConfigProblem::new(path, message)
}

/// Classifies figment's errors: a YAML syntax error becomes [`ConfigError::Yaml`], anything else a list of problems.
pub(crate) fn from_figment(error: figment::Error, prefix: &[&str]) -> ConfigError {
    let errors: Vec<figment::Error> = error.into_iter().collect();
    for e in &errors {
        if let Some(yaml) = yaml_syntax_error(e) {
            return yaml;
        }
    }
    ConfigError::Invalid(errors.iter().map(|e| problem_from_figment(e, prefix)).collect())
}

/// A YAML provider's parse failure: figment keeps only the message, at the root, tagged with the provider's metadata.
fn yaml_syntax_error(error: &figment::Error) -> Option<ConfigError> {
    let Kind::Message(text) = &error.kind else {
        return None;
    };
    let metadata = error.metadata.as_ref()?;
    if !error.path.is_empty() || !metadata.name.starts_with(Yaml::NAME) {
        return None;
    }
    let path = match &metadata.source {
        Some(figment::Source::File(path)) => path.clone(),
        _ => PathBuf::from("<string>"),
    };
    let decoded = YamlError::decode(text).unwrap_or(YamlError { line: 0, column: 0, message: text.clone() });
    Some(ConfigError::Yaml { path, line: decoded.line, column: decoded.column, message: decoded.message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_indices_only_after_sequence_fields() {
        assert_eq!(render_path(&["flows", "1", "topics", "include", "0"]), "flows[1].topics.include[0]");
        assert_eq!(render_path(&["clusters", "us-east", "bootstrap_servers"]), "clusters.us-east.bootstrap_servers");
        assert_eq!(render_path(&["checkpoint", "etcd", "endpoints", "2"]), "checkpoint.etcd.endpoints[2]");
        assert_eq!(render_path(&["throttles", "0", "rate"]), "throttles[0].rate");
        // A cluster named "0" and a cluster named "flows" are names, not indices or fields.
        assert_eq!(render_path(&["clusters", "0", "region"]), "clusters.0.region");
        assert_eq!(render_path(&["clusters", "flows", "client", "include"]), "clusters.flows.client.include");
        assert_eq!(render_path(&["clusters", "a", "client", "exclude", "0"]), "clusters.a.client.exclude.0");
        let empty: [&str; 0] = [];
        assert_eq!(render_path(&empty), "");
    }

    #[test]
    fn invalid_displays_one_problem_per_line() {
        let e = ConfigError::Invalid(vec![
            ConfigProblem::new("flows[0].target", "unknown cluster \"x\""),
            ConfigProblem::new("", "whole document"),
        ]);
        assert_eq!(e.to_string(), "flows[0].target: unknown cluster \"x\"\nwhole document");
    }
}
