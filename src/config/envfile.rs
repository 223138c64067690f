//! `--env-file`: a `.env` file read the way the original services read theirs (python-dotenv).
//!
//! `KEY=VALUE` lines, optionally after `export `; `#` starts a comment at the start of a line or
//! after whitespace in an unquoted value. Single-quoted values are literal. Double-quoted values
//! understand `\n`, `\t`, `\"` and `\\`. In unquoted and double-quoted values `${VAR}` (and
//! `${VAR:-default}`) expands from the process environment or from earlier lines of the file;
//! a bare `$` is literal, so an unquoted password such as `pa$word` survives. Variables already
//! set in the environment win over the file.

use std::collections::BTreeMap;

/// One line the parser could not read: its number and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFileError {
    pub line: usize,
    pub message: String,
}

/// Parses `text`; `existing` is the process environment, used for `${VAR}` and left as it is.
/// Returns the variables to add (those not already set).
pub fn parse(
    text: &str,
    existing: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((i, raw)) = lines.next() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let Some((key, rest)) = line.split_once('=') else {
            return Err(EnvFileError {
                line: i + 1,
                message: format!("expected KEY=VALUE, found {:?}", raw.trim()),
            });
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(EnvFileError {
                line: i + 1,
                message: format!("{key:?} is not a variable name"),
            });
        }
        let rest = rest.trim_start();
        let lookup = |name: &str| existing.get(name).or_else(|| seen.get(name)).cloned();
        let value = match rest.chars().next() {
            Some(q @ ('\'' | '"')) => {
                // A quoted value may span lines until its closing quote.
                let mut body = rest[1..].to_owned();
                let close = loop {
                    if let Some(end) = closing_quote(&body, q) {
                        break end;
                    }
                    match lines.next() {
                        Some((_, next)) => {
                            body.push('\n');
                            body.push_str(next);
                        }
                        None => {
                            return Err(EnvFileError {
                                line: i + 1,
                                message: format!("the value of {key} has no closing {q}"),
                            })
                        }
                    }
                };
                let inner = &body[..close];
                if q == '\'' {
                    inner.replace("\\\\", "\\").replace("\\'", "'")
                } else {
                    expand(&unescape(inner), &lookup)
                }
            }
            _ => {
                let value = match rest.find(" #").or_else(|| rest.find("\t#")) {
                    Some(at) => &rest[..at],
                    None => rest,
                };
                expand(value.trim_end(), &lookup)
            }
        };
        seen.insert(key.to_owned(), value.clone());
        if !existing.contains_key(key) {
            out.retain(|(k, _): &(String, String)| k != key);
            out.push((key.to_owned(), value));
        }
    }
    Ok(out)
}

/// The index of the first unescaped `q` in `s`.
fn closing_quote(s: &str, q: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            c if c == q && !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other @ ('"' | '\\' | '\'')) => out.push(other),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Replaces `${VAR}` and `${VAR:-default}`; anything else with a `$` stays as written.
fn expand(s: &str, lookup: &impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        let Some(end) = rest[at + 2..].find('}') else {
            break;
        };
        out.push_str(&rest[..at]);
        let inner = &rest[at + 2..at + 2 + end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        // As python-dotenv: the default stands in for a variable that is not set at all.
        let value = lookup(name).or(default.map(str::to_owned));
        out.push_str(&value.unwrap_or_default());
        rest = &rest[at + 2 + end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn vars(text: &str, existing: &[(&str, &str)]) -> BTreeMap<String, String> {
        parse(text, &env(existing)).unwrap().into_iter().collect()
    }

    #[test]
    fn a_bare_dollar_is_literal_and_braces_expand() {
        let v = vars(
            "HOST=ftp.example\nSRC_PASS=pa$word$\nURL=ftp://${HOST}:21/x\nQ=\"${HOST}/$HOME\"\n",
            &[("HOME", "/root")],
        );
        assert_eq!(v["SRC_PASS"], "pa$word$");
        assert_eq!(v["URL"], "ftp://ftp.example:21/x");
        assert_eq!(v["Q"], "ftp.example/$HOME");
    }

    #[test]
    fn quotes_comments_export_and_defaults() {
        let v = vars(
            "# comment\nexport A=1\nB='${A} stays # as is'\nC=\"line\\nnext\" # note\nD=plain value # note\nE=${MISSING:-fallback}\nF=\"multi\nline\"\nG=a#b\n",
            &[],
        );
        assert_eq!(v["A"], "1");
        assert_eq!(v["B"], "${A} stays # as is");
        assert_eq!(v["C"], "line\nnext");
        assert_eq!(v["D"], "plain value");
        assert_eq!(v["E"], "fallback");
        assert_eq!(v["F"], "multi\nline");
        assert_eq!(v["G"], "a#b");
        let v = vars("H='it\\'s'\nI=${EMPTY:-default}\n", &[("EMPTY", "")]);
        assert_eq!(v["H"], "it's");
        assert_eq!(v["I"], "", "a variable set to empty is set");
    }

    #[test]
    fn the_environment_wins_and_bad_lines_are_named() {
        let v = vars(
            "KAFKA_BROKERS=file:9092\nX=${KAFKA_BROKERS}\n",
            &[("KAFKA_BROKERS", "env:9092")],
        );
        assert!(!v.contains_key("KAFKA_BROKERS"));
        assert_eq!(v["X"], "env:9092");
        let err = parse("A=1\njust words\n", &env(&[])).unwrap_err();
        assert_eq!(err.line, 2);
        let err = parse("A=\"open\n", &env(&[])).unwrap_err();
        assert!(err.message.contains("no closing"), "{}", err.message);
    }
}
