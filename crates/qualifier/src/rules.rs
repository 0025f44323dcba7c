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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Trait(u64),
    Number(u32),
    Duration(i64),
    And,
    Or,
    Not,
    Within,
    Open,
    Close,
    Cmp(Cmp),
}

fn describe(token: Option<&(Token, usize)>) -> String {
    match token.map(|(t, _)| t) {
        None => "the end of the rule".to_owned(),
        Some(Token::Trait(id)) => format!("`T{id}`"),
        Some(Token::Number(n)) => format!("`{n}`"),
        Some(Token::Duration(_)) => "a duration".to_owned(),
        Some(Token::And) => "`AND`".to_owned(),
        Some(Token::Or) => "`OR`".to_owned(),
        Some(Token::Not) => "`NOT`".to_owned(),
        Some(Token::Within) => "`WITHIN`".to_owned(),
        Some(Token::Open) => "`(`".to_owned(),
        Some(Token::Close) => "`)`".to_owned(),
        Some(Token::Cmp(_)) => "a comparison".to_owned(),
    }
}

fn lex(rule: &str) -> Result<Vec<(Token, usize)>, RuleError> {
    let bytes = rule.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        // Everything before `i` is ASCII (any other character ends the lexing with an error),
        // so the byte offset is the column: no counting from the start (quadratic).
        let column = i + 1;
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let error = |message: String| RuleError { column, message };
        match c {
            b'(' => {
                tokens.push((Token::Open, column));
                i += 1;
            }
            b')' => {
                tokens.push((Token::Close, column));
                i += 1;
            }
            b'>' | b'<' | b'=' => {
                let two = bytes.get(i + 1) == Some(&b'=') && c != b'=';
                let cmp = match (c, two) {
                    (b'>', true) => Cmp::Ge,
                    (b'>', false) => Cmp::Gt,
                    (b'<', true) => Cmp::Le,
                    (b'<', false) => Cmp::Lt,
                    _ => Cmp::Eq,
                };
                tokens.push((Token::Cmp(cmp), column));
                i += if two { 2 } else { 1 };
            }
            _ if c.is_ascii_alphanumeric() => {
                let end = bytes[i..]
                    .iter()
                    .position(|b| !b.is_ascii_alphanumeric())
                    .map_or(bytes.len(), |p| i + p);
                let word = &rule[i..end];
                let upper = word.to_ascii_uppercase();
                let token = match upper.as_str() {
                    "AND" => Token::And,
                    "OR" => Token::Or,
                    "NOT" => Token::Not,
                    "WITHIN" => Token::Within,
                    _ if upper.starts_with('T')
                        && upper.len() > 1
                        && upper[1..].bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        Token::Trait(
                            upper[1..]
                                .parse()
                                .map_err(|_| error(format!("trait id `{word}` is too large")))?,
                        )
                    }
                    _ if word.bytes().all(|b| b.is_ascii_digit()) => Token::Number(
                        word.parse()
                            .map_err(|_| error(format!("number `{word}` is too large")))?,
                    ),
                    _ if word.as_bytes()[0].is_ascii_digit() => {
                        Token::Duration(parse_duration(word).ok_or_else(|| {
                            error(format!(
                                "`{word}` is not a duration (a number and s, m, h or d, e.g. `7d`)"
                            ))
                        })?)
                    }
                    _ => {
                        return Err(error(format!(
                            "unexpected `{word}`: expected a trait like `T101`, AND, OR, NOT or WITHIN"
                        )));
                    }
                };
                tokens.push((token, column));
                i = end;
            }
            _ => {
                let ch = rule[i..].chars().next().unwrap_or('?');
                return Err(error(format!("unexpected character `{ch}`")));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    pos: usize,
    end_column: usize,
    /// Open `(` and `NOT` around the current position.
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(t, _)| t)
    }

    fn column(&self) -> usize {
        self.tokens
            .get(self.pos)
            .map_or(self.end_column, |(_, c)| *c)
    }

    fn error(&self, expected: &str) -> RuleError {
        RuleError {
            column: self.column(),
            message: format!(
                "expected {expected}, found {}",
                describe(self.tokens.get(self.pos))
            ),
        }
    }

    fn or(&mut self) -> Result<Expr, RuleError> {
        let mut items = vec![self.and()?];
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::Or(items)
        })
    }

    fn and(&mut self) -> Result<Expr, RuleError> {
        let mut items = vec![self.unary()?];
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::And(items)
        })
    }

    /// Enters one level of `(` or `NOT`, refusing to go deeper than [`MAX_NESTING`].
    fn nest(&mut self) -> Result<(), RuleError> {
        if self.depth >= MAX_NESTING {
            return Err(RuleError {
                column: self.column(),
                message: format!(
                    "parentheses and NOT are nested more than {MAX_NESTING} deep: simplify the rule"
                ),
            });
        }
        self.depth += 1;
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr, RuleError> {
        match self.peek() {
            Some(Token::Not) => {
                self.nest()?;
                self.pos += 1;
                let inner = self.unary()?;
                self.depth -= 1;
                Ok(Expr::Not(Box::new(inner)))
            }
            Some(Token::Open) => {
                self.nest()?;
                self.pos += 1;
                let inner = self.or()?;
                if self.peek() != Some(&Token::Close) {
                    return Err(self.error("`)`"));
                }
                self.pos += 1;
                self.depth -= 1;
                Ok(inner)
            }
            Some(&Token::Trait(trait_id)) => {
                self.pos += 1;
                let (cmp, n) = match self.peek() {
                    Some(&Token::Cmp(cmp)) => {
                        self.pos += 1;
                        match self.peek() {
                            Some(&Token::Number(n)) => {
                                self.pos += 1;
                                (cmp, n)
                            }
                            _ => return Err(self.error("a count after the comparison")),
                        }
                    }
                    _ => (Cmp::Ge, 1),
                };
                let within_ms = if self.peek() == Some(&Token::Within) {
                    self.pos += 1;
                    match self.peek() {
                        Some(&Token::Duration(ms)) if ms > 0 => {
                            self.pos += 1;
                            Some(ms)
                        }
                        _ => return Err(self.error("a duration after WITHIN, like `7d`")),
                    }
                } else {
                    None
                };
                Ok(Expr::Cond(Condition {
                    trait_id,
                    cmp,
                    n,
                    within_ms,
                }))
            }
            _ => Err(self.error("a trait like `T101`, NOT or `(`")),
        }
    }
}

/// Parses `rule`.
pub fn parse(rule: &str) -> Result<Expr, RuleError> {
    if rule.len() > MAX_RULE_BYTES {
        return Err(RuleError {
            column: 1,
            message: format!(
                "the rule is {} bytes long, more than the {MAX_RULE_BYTES} allowed: split it into several segments",
                rule.len()
            ),
        });
    }
    let tokens = lex(rule)?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        end_column: rule.chars().count() + 1,
        depth: 0,
    };
    let expr = parser.or()?;
    if parser.pos < parser.tokens.len() {
        return Err(parser.error("AND, OR or the end of the rule"));
    }
    if !expr.has_positive_condition(false) {
        return Err(RuleError {
            column: 1,
            message: "the rule needs at least one condition that is not negated".to_owned(),
        });
    }
    Ok(expr)
}

/// What a rule sees of a user: their live realization times of a trait, ascending.
pub trait TraitTimes {
    /// Realization times (ms) of `trait_id` that are alive at `now`, ascending.
    fn live_times(&self, trait_id: u64, now: i64) -> &[i64];
}

/// Naive evaluation straight from the syntax tree: the reference the compiled program is
/// property-tested against.
pub fn evaluate_naive(expr: &Expr, user: &impl TraitTimes, now: i64) -> bool {
    match expr {
        Expr::Or(items) => items.iter().any(|e| evaluate_naive(e, user, now)),
        Expr::And(items) => items.iter().all(|e| evaluate_naive(e, user, now)),
        Expr::Not(inner) => !evaluate_naive(inner, user, now),
        Expr::Cond(c) => {
            let count = user
                .live_times(c.trait_id, now)
                .iter()
                .filter(|&&t| c.within_ms.is_none_or(|w| t > now.saturating_sub(w)))
                .count();
            c.cmp.holds(u32::try_from(count).unwrap_or(u32::MAX), c.n)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Cond(Condition),
    Not,
    /// Pops this many values, pushes whether all were true.
    And(u32),
    Or(u32),
}

/// A compiled rule: a postfix program over a small stack, no allocation per evaluation
/// beyond the stack (kept by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    ops: Vec<Op>,
}

impl Program {
    pub fn compile(expr: &Expr) -> Self {
        fn emit(expr: &Expr, ops: &mut Vec<Op>) {
            match expr {
                Expr::Cond(c) => ops.push(Op::Cond(*c)),
                Expr::Not(inner) => {
                    emit(inner, ops);
                    ops.push(Op::Not);
                }
                Expr::And(items) | Expr::Or(items) => {
                    for item in items {
                        emit(item, ops);
                    }
                    // At most MAX_RULE_BYTES / 2 items ("T1" plus a separator each).
                    let n = u32::try_from(items.len()).unwrap_or(u32::MAX);
                    ops.push(if matches!(expr, Expr::And(_)) {
                        Op::And(n)
                    } else {
                        Op::Or(n)
                    });
                }
            }
        }
        let mut ops = Vec::new();
        emit(expr, &mut ops);
        Self { ops }
    }

    /// Runs the program for `user` at `now`; `stack` is scratch space reused across calls.
    pub fn evaluate(&self, user: &impl TraitTimes, now: i64, stack: &mut Vec<bool>) -> bool {
        stack.clear();
        for op in &self.ops {
            match *op {
                Op::Cond(c) => {
                    let times = user.live_times(c.trait_id, now);
                    // Times are ascending: the ones within the window are a suffix.
                    let count = match c.within_ms {
                        Some(w) => {
                            times.len() - times.partition_point(|&t| t <= now.saturating_sub(w))
                        }
                        None => times.len(),
                    };
                    stack.push(c.cmp.holds(u32::try_from(count).unwrap_or(u32::MAX), c.n));
                }
                Op::Not => {
                    if let Some(top) = stack.last_mut() {
                        *top = !*top;
                    }
                }
                Op::And(n) | Op::Or(n) => {
                    let at = stack
                        .len()
                        .saturating_sub(usize::try_from(n).unwrap_or(usize::MAX));
                    let result = if matches!(op, Op::And(_)) {
                        stack[at..].iter().all(|&b| b)
                    } else {
                        stack[at..].iter().any(|&b| b)
                    };
                    stack.truncate(at);
                    stack.push(result);
                }
            }
        }
        stack.pop().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests;
