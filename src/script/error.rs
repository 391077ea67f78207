//! Compile errors of route scripts: each names file:line:col and carries the source line with
//! a caret under the offending text, so that a reload log or `siprox check` shows exactly
//! where a script is wrong. Run-time errors are few (limits) and end the route.

use std::fmt;

/// A byte range in the script source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }
    pub(crate) fn to(self, other: Span) -> Span {
        Span {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// One compile error, with its position resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    pub msg: String,
    /// The source line the error is on (tabs kept, so the caret lines up).
    pub source_line: String,
    /// How many characters the caret underlines (at least 1).
    pub width: usize,
}

impl CompileError {
    pub(crate) fn new(file: &str, src: &str, span: Span, msg: impl Into<String>) -> CompileError {
        let start = floor_char(src, span.start.min(src.len()));
        let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = src[start..].find('\n').map_or(src.len(), |i| start + i);
        let line = src[..start].matches('\n').count() + 1;
        let col = src[line_start..start].chars().count() + 1;
        let end = floor_char(src, span.end.clamp(start, line_end));
        let width = src[start..end].chars().count().max(1);
        CompileError {
            file: file.to_owned(),
            line,
            col,
            msg: msg.into(),
            source_line: src[line_start..line_end].trim_end_matches('\r').to_owned(),
            width,
        }
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.msg)?;
        let num = self.line.to_string();
        let pad = " ".repeat(num.len());
        writeln!(f, "{num} | {}", self.source_line)?;
        // Keep tabs in the caret line so it lines up under the source in any terminal.
        let lead: String = self
            .source_line
            .chars()
            .take(self.col - 1)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(f, "{pad} | {lead}{}", "^".repeat(self.width))
    }
}

impl std::error::Error for CompileError {}

/// Every error found in a script (syntax errors stop at the first; checks collect all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CompileErrors {
    pub errors: Vec<CompileError>,
}

impl CompileErrors {
    /// The first error (there is always one).
    pub fn first(&self) -> Option<&CompileError> {
        self.errors.first()
    }
}

impl fmt::Display for CompileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Why a route stopped before its end at run time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("route recursion deeper than {limit} (route `{route}` calls itself?)")]
    RecursionLimit { route: String, limit: usize },
    #[error("script nested deeper than {limit} statements and expressions at run time")]
    TooDeep { limit: usize },
    #[error("script ran more than {limit} statements for one message")]
    StepLimit { limit: u32 },
}
