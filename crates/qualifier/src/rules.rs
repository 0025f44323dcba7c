//! The segment rule language.
//!
//! ```text
//! rule  := or
//! or    := and ("OR" and)*
//! and   := unary ("AND" unary)*
//! unary := "NOT" unary | "(" rule ")" | cond
//! cond  := "T"<id> [(">=" | ">" | "=" | "<=" | "<") <n>] ["WITHIN" <duration>]
//! ```
//!
//! Keywords are case-insensitive. A condition counts the trait's *live* realizations (within
//! the trait's time-to-live), and with `WITHIN d` only those of the last `d`:
//! `T101` holds with at least one, `T101 >= 3` with at least three, `T101 WITHIN 7d` with one
//! in the last seven days, `T101 >= 3 WITHIN 7d` with three in the last seven days.
//! Durations are a number and a unit: `s`, `m`, `h`, `d`. A rule needs at least one condition
//! that is not negated (a user who did nothing cannot be "in" a segment).
//!
//! A rule is at most [`MAX_RULE_BYTES`] long and nests parentheses and `NOT` at most
//! [`MAX_NESTING`] deep: parsing, checking and compiling a rule then take time linear in its
//! length and a bounded stack, whatever the text.
//!
//! A parsed rule ([`Expr`]) is compiled into a [`Program`], a flat postfix program over
//! counting instructions, which is what the qualifier runs for every user evaluation.

use std::fmt;

mod parser;
mod program;

pub use parser::parse;
pub use program::{Program, TraitTimes, evaluate_naive};

/// The longest rule text, in bytes (room for hundreds of conditions).
pub const MAX_RULE_BYTES: usize = 16 * 1024;

/// The deepest nesting of `(` and `NOT`: the parser, the checks and the compiler recurse
/// once per level, so this bounds their stack.
pub const MAX_NESTING: usize = 64;

/// A comparison of a condition's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Ge,
    Gt,
    Eq,
    Le,
    Lt,
}

impl Cmp {
    fn holds(self, count: u32, n: u32) -> bool {
        match self {
            Self::Ge => count >= n,
            Self::Gt => count > n,
            Self::Eq => count == n,
            Self::Le => count <= n,
            Self::Lt => count < n,
        }
    }
}

/// `T<trait_id> <cmp> <n> WITHIN <within_ms>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Condition {
    pub trait_id: u64,
    pub cmp: Cmp,
    pub n: u32,
    /// Only realizations of the last this many ms count.
    pub within_ms: Option<i64>,
}

impl Condition {
    /// The most realizations this condition can tell apart: keeping the newest this many of a
    /// trait is enough to decide it.
    pub fn count_needed(&self) -> u32 {
        self.n.saturating_add(1).max(1)
    }
}

/// A parsed rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Cond(Condition),
}

impl Expr {
    /// Every condition, in order.
    pub fn conditions(&self) -> Vec<Condition> {
        let mut out = Vec::new();
        self.visit(&mut |c| out.push(*c));
        out
    }

    fn visit(&self, f: &mut impl FnMut(&Condition)) {
        match self {
            Self::Or(items) | Self::And(items) => items.iter().for_each(|e| e.visit(f)),
            Self::Not(inner) => inner.visit(f),
            Self::Cond(c) => f(c),
        }
    }

    fn has_positive_condition(&self, negated: bool) -> bool {
        match self {
            Self::Or(items) | Self::And(items) => {
                items.iter().any(|e| e.has_positive_condition(negated))
            }
            Self::Not(inner) => inner.has_positive_condition(!negated),
            Self::Cond(_) => !negated,
        }
    }
}

/// A problem in a rule, at a 1-based column of the rule text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

/// Parses a duration: a number and a unit (`s`, `m`, `h`, `d`), or `0`. Returns ms.
pub fn parse_duration(text: &str) -> Option<i64> {
    let text = text.trim();
    if text == "0" {
        return Some(0);
    }
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(unit_at);
    let n: i64 = digits.parse().ok()?;
    let unit_ms = match unit.to_ascii_lowercase().as_str() {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms)
}

#[cfg(test)]
mod tests;
