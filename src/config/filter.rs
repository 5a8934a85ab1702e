//! Whole-name include/exclude matching of topic (and consumer group) names.
//!
//! Invariant: a pattern matches a name only as a whole (`^(?:pattern)$`), so `orders` never selects `orders-dlq`.

use regex::RegexSet;

use super::error::ConfigProblem;

/// A compiled selection: a name is selected when it matches some include pattern and no exclude pattern.
#[derive(Debug, Clone)]
pub struct TopicFilter {
    include: RegexSet,
    exclude: RegexSet,
    /// Include patterns that are plain topic names (a `.` in them matches itself too).
    named: Vec<String>,
}

impl TopicFilter {
    /// Compiles the patterns; problems name `<path>.include[i]` / `<path>.exclude[i]` and carry the regex error.
    pub fn new(path: &str, include: &[String], exclude: &[String]) -> Result<TopicFilter, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let include = compile(&format!("{path}.include"), include, &mut problems);
        let exclude = compile(&format!("{path}.exclude"), exclude, &mut problems);
        match (include, exclude) {
            (Some(include), Some(exclude)) if problems.is_empty() => {
                let named = include_patterns_that_are_names(include.patterns());
                Ok(TopicFilter { include, exclude, named })
            }
            _ => Err(problems),
        }
    }

    /// Whether `name` is selected.
    pub fn matches(&self, name: &str) -> bool {
        self.include.is_match(name) && !self.exclude.is_match(name)
    }

    /// The topics the include patterns name outright (`orders.created`, not `orders\..*`) and the excludes let
    /// through: a cluster that does not list one of them may be hiding it from a principal without ACLs.
    pub fn named_topics(&self) -> impl Iterator<Item = &str> {
        self.named.iter().map(String::as_str).filter(|name| self.matches(name))
    }
}

/// The anchored include patterns (`^(?:p)$`) whose `p` holds only characters of topic names.
fn include_patterns_that_are_names(anchored: &[String]) -> Vec<String> {
    anchored
        .iter()
        .filter_map(|pattern| pattern.strip_prefix("^(?:")?.strip_suffix(")$"))
        .filter(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .map(str::to_owned)
        .collect()
}

/// Compiles one list into an anchored set, reporting each bad pattern by index.
fn compile(path: &str, patterns: &[String], problems: &mut Vec<ConfigProblem>) -> Option<RegexSet> {
    let before = problems.len();
    for (i, pattern) in patterns.iter().enumerate() {
        // Checked alone first so the error quotes the operator's pattern, not our anchored wrapper.
        if let Err(e) = regex::Regex::new(pattern) {
            problems.push(ConfigProblem::new(
                format!("{path}[{i}]"),
                format!("invalid regex {pattern:?}: {}", regex_error_summary(&e)),
            ));
        }
    }
    if problems.len() > before {
        return None;
    }
    match RegexSet::new(patterns.iter().map(|p| format!("^(?:{p})$"))) {
        Ok(set) => Some(set),
        Err(e) => {
            // Only reachable through size limits, which individual patterns can pass and the set exceed.
            problems.push(ConfigProblem::new(path, format!("regexes too large: {}", regex_error_summary(&e))));
            None
        }
    }
}

/// The last line of a regex error (`unclosed group`); the full text is a multi-line caret diagram.
fn regex_error_summary(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(&text);
    last.trim().trim_start_matches("error: ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str]) -> TopicFilter {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        TopicFilter::new("t", &own(include), &own(exclude)).unwrap()
    }

    #[test]
    fn matches_whole_names_only() {
        let f = filter(&["orders\\..*", "payments"], &[]);
        assert!(f.matches("orders.created"));
        assert!(f.matches("orders.created.v2"), ".* runs to the end of the name");
        assert!(!f.matches("xorders.created"), "anchored at the start");
        assert!(!f.matches("orders"), "needs the dot");
        assert!(f.matches("payments"));
        assert!(!f.matches("payments-dlq"), "anchored at the end");
        assert!(!f.matches("old-payments"));
    }

    #[test]
    fn alternation_is_anchored_as_a_whole() {
        // Without the (?:...) group, "^a|b$" would match "bx" via the unanchored-left "a" branch's sibling.
        let f = filter(&["a|b"], &[]);
        assert!(f.matches("a") && f.matches("b"));
        assert!(!f.matches("ax") && !f.matches("xb"));
    }

    #[test]
    fn exclude_wins() {
        let f = filter(&[".*"], &["__.*", ".*\\.internal"]);
        assert!(f.matches("orders"));
        assert!(!f.matches("__consumer_offsets"));
        assert!(!f.matches("orders.internal"));
        assert!(f.matches("orders.internal.x"));
    }

    #[test]
    fn named_topics_are_the_plain_names_the_excludes_let_through() {
        let f = filter(&["orders.created", "payments_v2-eu", "orders\\..*", "a|b", ".*"], &["payments.*"]);
        assert_eq!(f.named_topics().collect::<Vec<_>>(), ["orders.created"]);
    }

    #[test]
    fn empty_include_selects_nothing() {
        assert!(!filter(&[], &[]).matches("anything"));
    }

    #[test]
    fn bad_patterns_are_reported_by_index() {
        let problems = TopicFilter::new("flows[1].topics", &["ok".into(), "(".into()], &["[".into()]).unwrap_err();
        assert_eq!(problems.len(), 2);
        assert_eq!(problems[0].path, "flows[1].topics.include[1]");
        assert_eq!(problems[0].message, "invalid regex \"(\": unclosed group");
        assert_eq!(problems[1].path, "flows[1].topics.exclude[0]");
        assert!(problems[1].message.starts_with("invalid regex \"[\": "), "{}", problems[1].message);
    }
}
