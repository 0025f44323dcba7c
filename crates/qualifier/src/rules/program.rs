//! Running a rule for a user: the naive evaluation of the syntax tree (the reference) and the
//! compiled postfix [`Program`] the qualifier runs.

use super::{Condition, Expr};

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
