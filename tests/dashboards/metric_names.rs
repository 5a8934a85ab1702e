//! The metric names the Grafana dashboard and the Prometheus alert rules use, extracted the same way for the
//! registry check (`tests/dashboards.rs`) and the scrape of a running ferry (`tests/e2e/metrics_scrape.rs`), which
//! include this file with `#[path]`.
//!
//! Two sources per file: every metric a PromQL query selects (panel `expr`s and template-variable queries of the
//! dashboard, rule `expr`s of the alerts), and every `ferry_*` word anywhere in the file (descriptions and
//! annotations name metrics too, and an operator will look for them).

// Two test crates include this file and each uses part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

/// The files whose metric names must exist, relative to the repository root.
pub const FILES: &[&str] = &["dashboards/ferry.json", "dashboards/alerts.yaml"];

/// Series Prometheus itself writes for every scrape target, which the rules may use besides ferry's own metrics.
pub const PROMETHEUS_BUILTINS: &[&str] = &["up"];

/// PromQL words that are never metric names: binary and set operators, grouping and modifier keywords, aggregation
/// operators (which may be followed by `by (...)` rather than `(`), and the special float literals.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a parenthesised label list (optional for group_left/group_right).
const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The PromQL queries of a dashboard (`.json`) or rule file (`.yaml`).
pub fn queries(file: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    if file.ends_with(".json") {
        let dashboard: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
        collect_exprs(&dashboard, &mut out);
        for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
            if variable["type"] != "query" {
                continue;
            }
            // Grafana stores the query as a string, or (newer versions) as an object with a `query` string.
            let query = variable["query"].as_str().or_else(|| variable["query"]["query"].as_str());
            out.extend(query.and_then(template_query));
        }
    } else {
        let rules: Value = serde_norway::from_str(text).unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
        for group in rules["groups"].as_array().unwrap_or_else(|| panic!("{file} has no groups")) {
            for rule in group["rules"].as_array().into_iter().flatten() {
                out.extend(rule["expr"].as_str().map(str::to_owned));
            }
        }
    }
    out
}

/// Every `expr` string in a dashboard (panels, rows' nested panels, any depth).
fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_exprs(item, out)),
        _ => {}
    }
}

/// The PromQL inside a Grafana template-variable query: `label_values(<selector>, label)` and `query_result(<expr>)`;
/// `label_values(label)` and `metrics(regex)` select no metric.
fn template_query(query: &str) -> Option<String> {
    let query = query.trim();
    if let Some(inner) = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')) {
        // The label is the last argument; a selector may itself contain commas (inside braces).
        let (selector, _label) = inner.rsplit_once(',')?;
        return Some(selector.to_owned());
    }
    if let Some(inner) = query.strip_prefix("query_result(").and_then(|q| q.strip_suffix(')')) {
        return Some(inner.to_owned());
    }
    if query.starts_with("metrics(") {
        return None;
    }
    Some(query.to_owned())
}

/// The metric names one PromQL expression selects. Skips strings, label matchers (`{...}`), ranges and subqueries
/// (`[...]`), numbers and durations, Grafana variables (`$x`, `${x}`), function calls, keywords and the label lists
/// of `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`.
pub fn selectors(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_spaces = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    // The index just after the bracket matching the opening one at `i`, skipping strings inside.
    let skip_balanced = |mut i: usize, open: char, close: char| {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => i = skip_string(&chars, i) - 1,
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_balanced(i, '{', '}');
        } else if c == '[' {
            i = skip_balanced(i, '[', ']');
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '$' {
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                i = skip_balanced(i, '{', '}');
            } else {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // Numbers, durations (5m, 1h30m) and exponents.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let next = skip_spaces(i);
            if GROUPING.contains(&lower.as_str()) {
                if next < chars.len() && chars[next] == '(' {
                    i = skip_balanced(next, '(', ')');
                }
            } else if KEYWORDS.contains(&lower.as_str()) || (next < chars.len() && chars[next] == '(') {
                // A keyword, or a function call.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index just after the string literal starting at `i` (backslash escapes, except in raw backtick strings).
fn skip_string(chars: &[char], mut i: usize) -> usize {
    let quote = chars[i];
    i += 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Every `ferry_*` word in `text` (a metric name as prose, queries and annotations write it).
pub fn mentioned(text: &str) -> BTreeSet<String> {
    let pattern = regex::Regex::new(r"\bferry_[a-z0-9_]+").unwrap();
    pattern.find_iter(text).map(|m| m.as_str().trim_end_matches('_').to_owned()).collect()
}

/// The family a series name belongs to, given which families exist: the name itself, or the base name of a
/// histogram's (or summary's) `_bucket`, `_sum` or `_count` series.
pub fn family(name: &str, exists: impl Fn(&str) -> bool) -> Option<String> {
    if exists(name) {
        return Some(name.to_owned());
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| exists(base))
        .map(str::to_owned)
}

/// Every metric name each of [`FILES`] uses (selected by a query or mentioned), with the files using it.
pub fn used(root: &Path) -> BTreeMap<String, BTreeSet<&'static str>> {
    let mut used: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    for file in FILES {
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
        let selected = queries(file, &text).iter().flat_map(|query| selectors(query)).collect::<BTreeSet<_>>();
        for name in selected.into_iter().chain(mentioned(&text)) {
            used.entry(name).or_default().insert(file);
        }
    }
    used
}
