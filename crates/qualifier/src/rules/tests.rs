//! The segment rule language: parsing, errors with positions, and evaluation.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;

use super::parser::{Token, lex};
use super::*;

/// Trait → ascending times; every time is alive (TTL is applied by the state, not the rule).
#[derive(Debug, Default)]
struct History(HashMap<u64, Vec<i64>>);

impl TraitTimes for History {
    fn live_times(&self, trait_id: u64, _now: i64) -> &[i64] {
        self.0.get(&trait_id).map_or(&[], Vec::as_slice)
    }
}

fn cond(trait_id: u64, cmp: Cmp, n: u32, within_ms: Option<i64>) -> Expr {
    Expr::Cond(Condition {
        trait_id,
        cmp,
        n,
        within_ms,
    })
}

#[test]
fn parses_the_documented_forms() {
    assert_eq!(parse("T101").unwrap(), cond(101, Cmp::Ge, 1, None));
    assert_eq!(parse("t101 >= 3").unwrap(), cond(101, Cmp::Ge, 3, None));
    assert_eq!(
        parse("T101 within 7d").unwrap(),
        cond(101, Cmp::Ge, 1, Some(7 * 86_400_000))
    );
    assert_eq!(
        parse("T101>=3 WITHIN 2s").unwrap(),
        cond(101, Cmp::Ge, 3, Some(2_000))
    );
    assert_eq!(
        parse("T101 AND (T102 OR NOT T103)").unwrap(),
        Expr::And(vec![
            cond(101, Cmp::Ge, 1, None),
            Expr::Or(vec![
                cond(102, Cmp::Ge, 1, None),
                Expr::Not(Box::new(cond(103, Cmp::Ge, 1, None)))
            ]),
        ])
    );
    // AND binds tighter than OR.
    assert_eq!(
        parse("T1 OR T2 and T3").unwrap(),
        Expr::Or(vec![
            cond(1, Cmp::Ge, 1, None),
            Expr::And(vec![cond(2, Cmp::Ge, 1, None), cond(3, Cmp::Ge, 1, None)])
        ])
    );
    for (text, cmp) in [
        ("T1 > 2", Cmp::Gt),
        ("T1 = 2", Cmp::Eq),
        ("T1 <= 2", Cmp::Le),
        ("T1 < 2", Cmp::Lt),
    ] {
        assert_eq!(parse(text).unwrap(), cond(1, cmp, 2, None), "{text}");
    }
}

#[test]
fn errors_name_the_column() {
    for (rule, column, message) in [
        (
            "T101 AND",
            9,
            "expected a trait like `T101`, NOT or `(`, found the end of the rule",
        ),
        (
            "T101 AND (T102",
            15,
            "expected `)`, found the end of the rule",
        ),
        (
            "T101 T102",
            6,
            "expected AND, OR or the end of the rule, found `T102`",
        ),
        ("T101 >= ", 9, "expected a count after the comparison"),
        ("T101 WITHIN 7x", 13, "`7x` is not a duration"),
        ("T101 WITHIN 3", 13, "expected a duration after WITHIN"),
        ("T101 & T102", 6, "unexpected character `&`"),
        ("NOT T101", 1, "at least one condition that is not negated"),
        (
            "NOT (T1 OR T2)",
            1,
            "at least one condition that is not negated",
        ),
        ("foo", 1, "unexpected `foo`"),
    ] {
        let error = parse(rule).unwrap_err();
        assert_eq!(error.column, column, "{rule}: {error}");
        assert!(error.message.contains(message), "{rule}: {error}");
    }
    // A negated condition beside a positive one is fine.
    assert!(parse("NOT T1 AND T2").is_ok());
}

#[test]
fn windows_are_strict_at_their_boundary() {
    let rule = Program::compile(&parse("T1 >= 2 WITHIN 10s").unwrap());
    let user = History(HashMap::from([(1, vec![1_000, 5_000])]));
    let mut stack = Vec::new();
    assert!(rule.evaluate(&user, 10_999, &mut stack), "both within 10 s");
    assert!(
        !rule.evaluate(&user, 11_000, &mut stack),
        "exactly 10 s old is outside the window"
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("0"), Some(0));
    assert_eq!(parse_duration("2s"), Some(2_000));
    assert_eq!(parse_duration("30d"), Some(30 * 86_400_000));
    assert_eq!(parse_duration("5m"), Some(300_000));
    assert_eq!(parse_duration("1H"), Some(3_600_000));
    assert_eq!(parse_duration("7"), None);
    assert_eq!(parse_duration("d"), None);
}

fn arb_expr() -> impl Strategy<Value = Expr> {
    let leaf = (
        1_u64..5,
        prop_oneof![
            Just(Cmp::Ge),
            Just(Cmp::Gt),
            Just(Cmp::Eq),
            Just(Cmp::Le),
            Just(Cmp::Lt)
        ],
        0_u32..4,
        proptest::option::of(1_i64..20),
    )
        .prop_map(|(trait_id, cmp, n, within)| {
            Expr::Cond(Condition {
                trait_id,
                cmp,
                n,
                within_ms: within.map(|w| w * 1_000),
            })
        });
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            proptest::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
            inner.prop_map(|e| Expr::Not(Box::new(e))),
        ]
    })
}

/// Prints an expression back as rule text, fully parenthesised.
fn print(expr: &Expr) -> String {
    match expr {
        Expr::Or(items) => format!(
            "({})",
            items.iter().map(print).collect::<Vec<_>>().join(" OR ")
        ),
        Expr::And(items) => format!(
            "({})",
            items.iter().map(print).collect::<Vec<_>>().join(" and ")
        ),
        Expr::Not(inner) => format!("NOT {}", print(inner)),
        Expr::Cond(c) => {
            let cmp = match c.cmp {
                Cmp::Ge => ">=",
                Cmp::Gt => ">",
                Cmp::Eq => "=",
                Cmp::Le => "<=",
                Cmp::Lt => "<",
            };
            let within = c
                .within_ms
                .map(|w| format!(" WITHIN {}s", w / 1_000))
                .unwrap_or_default();
            format!("T{} {cmp} {}{within}", c.trait_id, c.n)
        }
    }
}

proptest! {
    /// The compiled program agrees with the naive evaluator on random rules and histories,
    /// and printing then parsing a rule gives the same evaluation.
    #[test]
    fn compiled_matches_naive(
        expr in arb_expr(),
        history in proptest::collection::hash_map(1_u64..5, proptest::collection::vec(0_i64..40_000, 0..6), 0..5),
        now in 0_i64..60_000,
    ) {
        let history = History(history.into_iter().map(|(k, mut v)| { v.sort_unstable(); (k, v) }).collect());
        let program = Program::compile(&expr);
        let mut stack = Vec::new();
        let expected = evaluate_naive(&expr, &history, now);
        prop_assert_eq!(program.evaluate(&history, now, &mut stack), expected);
        if let Ok(reparsed) = parse(&print(&expr)) {
            prop_assert_eq!(Program::compile(&reparsed).evaluate(&history, now, &mut stack), expected);
        }
    }
}

#[test]
fn nesting_deeper_than_the_limit_is_an_error_not_a_stack_overflow() {
    let deep = |levels: usize| format!("{}T1{}", "(".repeat(levels), ")".repeat(levels));
    assert!(parse(&deep(MAX_NESTING)).is_ok());
    let error = parse(&deep(MAX_NESTING + 1)).unwrap_err();
    assert_eq!(error.column, MAX_NESTING + 1, "{error}");
    assert!(
        error.message.contains("nested more than 64 deep"),
        "{error}"
    );
    // Far deeper: without the limit the recursive parser overflows its stack (an abort).
    assert!(parse(&deep(1_000_000)).is_err());
    let nots = format!("{}T1", "NOT ".repeat(1_000_000));
    let error = parse(&nots).unwrap_err();
    assert!(error.message.contains("bytes long"), "{error}");
    let nots = format!("{}T1 AND T2", "NOT ".repeat(MAX_NESTING + 1));
    assert!(parse(&nots).unwrap_err().message.contains("nested"));
}

#[test]
fn a_rule_longer_than_the_limit_is_refused_and_a_long_one_parses_in_linear_time() {
    let long = "T1 OR ".repeat(MAX_RULE_BYTES / 6 + 1) + "T2";
    assert!(long.len() > MAX_RULE_BYTES);
    let Err(error) = parse(&long) else {
        panic!("a rule of {} bytes was accepted", long.len())
    };
    assert_eq!(error.column, 1);
    assert!(
        error
            .message
            .contains(&format!("more than the {MAX_RULE_BYTES} allowed")),
        "{error}"
    );
    let fits = "T1 OR ".repeat(MAX_RULE_BYTES / 6 - 1) + "T2";
    let expr =
        testkit::fuzz::within(Duration::from_secs(1), "a 16 KiB rule", || parse(&fits)).unwrap();
    let Expr::Or(items) = &expr else {
        panic!("not an OR")
    };
    assert_eq!(items.len(), MAX_RULE_BYTES / 6);
    // The lexer itself is linear: 1.2 MB of tokens in well under a second (counting each
    // token's column from the start made this quadratic: minutes).
    let huge = "T1 OR ".repeat(200_000);
    let tokens =
        testkit::fuzz::within(Duration::from_secs(2), "lexing 1.2 MB", || lex(&huge)).unwrap();
    assert_eq!(tokens.len(), 400_000);
    assert_eq!(tokens[399_999], (Token::Or, huge.len() - 2));
}

/// What every rule text must do: parse or fail with an error inside the text, quickly; a
/// parsed rule has a positive condition, compiles, agrees with the naive evaluator and prints
/// back to itself.
fn check_rule_text(text: &str) -> Result<(), TestCaseError> {
    let parsed = testkit::fuzz::within(Duration::from_secs(1), "parsing a rule", || parse(text));
    match parsed {
        Err(error) => {
            prop_assert!(!error.message.is_empty());
            prop_assert!(
                (1..=text.chars().count() + 1).contains(&error.column),
                "column {} outside the rule: {error}",
                error.column
            );
        }
        Ok(expr) => {
            prop_assert!(expr.has_positive_condition(false));
            prop_assert!(!expr.conditions().is_empty());
            let history = History(
                expr.conditions()
                    .iter()
                    .map(|c| (c.trait_id, vec![0, 1_000, 5_000]))
                    .collect(),
            );
            let mut stack = Vec::new();
            for now in [0, 5_000, 100_000] {
                prop_assert_eq!(
                    Program::compile(&expr).evaluate(&history, now, &mut stack),
                    evaluate_naive(&expr, &history, now)
                );
            }
            match parse(&print(&expr)) {
                Ok(reparsed) => prop_assert_eq!(reparsed, expr),
                // Printing adds parentheses around every AND and OR.
                Err(error) => prop_assert!(error.message.contains("nested"), "{error}"),
            }
        }
    }
    Ok(())
}

fn rule_corpus() -> Vec<(String, Vec<u8>)> {
    testkit::fuzz::corpus(env!("CARGO_MANIFEST_DIR"), "rules")
}

#[test]
fn every_rule_in_the_corpus_parses_or_fails_cleanly() {
    for (name, bytes) in rule_corpus() {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(failure) = check_rule_text(&text) {
            panic!("corpus file {name}: {failure}");
        }
    }
}

proptest! {
    #![proptest_config(testkit::fuzz::config())]

    /// Fuzzing the rule parser: arbitrary text, rule-like token soup, and mutated corpus
    /// rules; no panic, no hang.
    #[test]
    fn fuzz_rule_parser(
        text in prop_oneof![
            any::<String>(),
            proptest::collection::vec(
                proptest::sample::select(vec![
                    "T1", "t22", "T", "AND", "or", "NOT", "WITHIN", "(", ")", ">=", ">", "=",
                    "<=", "<", "3", "7d", "2s", "0", "18446744073709551616", " ", "é",
                ]),
                0..40,
            )
            .prop_map(|words| words.join(" ")),
            testkit::fuzz::mutated(rule_corpus().into_iter().map(|(_, b)| b).collect())
                .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        ]
    ) {
        check_rule_text(&text)?;
    }
}
