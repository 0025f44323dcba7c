//! The rule text to an [`Expr`]: a lexer, and a recursive-descent parser of the grammar in
//! [`super`], with the limits on length and nesting.

use super::{Cmp, Condition, Expr, MAX_NESTING, MAX_RULE_BYTES, RuleError, parse_duration};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Token {
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

pub(super) fn lex(rule: &str) -> Result<Vec<(Token, usize)>, RuleError> {
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
