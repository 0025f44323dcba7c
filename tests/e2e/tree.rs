//! The repository's own shape, checked (issue 16): every Rust file says what it holds, no
//! source file outgrows what one can hold in mind, every link in the docs resolves inside the
//! repository, docs/ARCHITECTURE.md names every file of both services and no other, and the
//! README names every metric they export.
//! No broker needed: these read the checkout.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The longest non-test source file, in lines. Test files (`tests.rs`, `tests/`, `benches/`)
/// are exempt: a test list reads fine long.
const MAX_SOURCE_LINES: usize = 500;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Files under `dir` (relative to the root) whose name ends with `suffix`, skipping build
/// output and hidden directories.
fn files(dir: &str, suffix: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, suffix: &str, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "target" || name == "node_modules" {
                continue;
            }
            if path.is_dir() {
                walk(&path, suffix, found);
            } else if name.ends_with(suffix) {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&root().join(dir), suffix, &mut found);
    found.sort();
    found
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap().display().to_string()
}

fn is_test_file(path: &Path) -> bool {
    let path = relative(path);
    path.starts_with("tests/")
        || path.ends_with("/tests.rs")
        || path.contains("/tests/")
        || path.contains("/benches/")
}

/// Files of `paths` whose first line is not a `//!` module comment.
fn without_module_comment(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            !text.lines().next().unwrap_or("").starts_with("//!")
        })
        .map(|path| relative(path))
        .collect()
}

/// Non-test files of `paths` over [`MAX_SOURCE_LINES`], with their length.
fn oversized(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .filter(|path| !is_test_file(path))
        .filter_map(|path| {
            let lines = std::fs::read_to_string(path).unwrap().lines().count();
            (lines > MAX_SOURCE_LINES).then(|| format!("{} ({lines} lines)", relative(path)))
        })
        .collect()
}

/// Relative link targets of a Markdown text: `[text](target)`, without `#anchor`; web links,
/// mail links and in-page anchors are not files.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = markdown;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].split_whitespace().next().unwrap_or("");
        let file = target.split('#').next().unwrap_or("");
        if !file.is_empty() && !file.contains("://") && !file.starts_with("mailto:") {
            targets.push(file.to_owned());
        }
        rest = &rest[end..];
    }
    targets
}

/// Links of the Markdown files that do not resolve to a file or directory of the checkout, and
/// mentions of documents outside the repository (the team's shared folder beside the checkout).
fn broken_links(documents: &[PathBuf]) -> Vec<String> {
    let root = root();
    let mut broken = Vec::new();
    for document in documents {
        let text = std::fs::read_to_string(document).unwrap();
        let dir = document.parent().unwrap();
        for target in link_targets(&text) {
            let resolved = dir.join(&target);
            let inside = resolved
                .canonicalize()
                .is_ok_and(|path| path.starts_with(root.canonicalize().unwrap()));
            if !inside {
                broken.push(format!("{}: ({target})", relative(document)));
            }
        }
    }
    broken
}

/// Mentions of documents a clone does not have, in any text file of the given paths. The
/// needles are built here, so that this file does not mention them itself.
fn outside_references(paths: &[PathBuf]) -> Vec<String> {
    let needles = [
        format!("../{}/", "shared"),
        format!("spec/{}", "outbound-contract"),
    ];
    let mut found = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).unwrap();
        for (number, line) in text.lines().enumerate() {
            if needles.iter().any(|needle| line.contains(needle.as_str())) {
                found.push(format!("{}:{}", relative(path), number + 1));
            }
        }
    }
    found
}

fn rust_files() -> Vec<PathBuf> {
    let mut all = files("crates", ".rs");
    all.extend(files("tests", ".rs"));
    all
}

fn markdown_files() -> Vec<PathBuf> {
    let mut all = vec![root().join("README.md")];
    all.extend(files("docs", ".md"));
    all.extend(files("deploy", ".md"));
    all
}

#[test]
fn every_rust_file_opens_with_a_comment_saying_what_it_holds() {
    let missing = without_module_comment(&rust_files());
    assert!(missing.is_empty(), "no `//!` first line: {missing:#?}");
}

#[test]
fn no_source_file_is_longer_than_one_can_hold_in_mind() {
    let long = oversized(&files("crates", ".rs"));
    assert!(
        long.is_empty(),
        "over {MAX_SOURCE_LINES} lines (split along its seams): {long:#?}"
    );
}

#[test]
fn every_link_in_the_docs_resolves_inside_the_repository() {
    let broken = broken_links(&markdown_files());
    assert!(
        broken.is_empty(),
        "links that resolve to nothing in the checkout: {broken:#?}"
    );
    let mut texts = markdown_files();
    texts.extend(rust_files());
    texts.extend(files("deploy", ".sh"));
    let outside = outside_references(&texts);
    assert!(
        outside.is_empty(),
        "documents a clone does not have: {outside:#?}"
    );
}

/// Every source file of the two services, as docs/ARCHITECTURE.md names it: relative to the
/// crate's `src/` (`consumer.rs`, `resync/engine.rs`).
fn service_files(service: &str) -> BTreeSet<String> {
    let src = root().join("crates").join(service).join("src");
    files(&format!("crates/{service}/src"), ".rs")
        .into_iter()
        .filter(|path| !is_test_file(path))
        .map(|path| path.strip_prefix(&src).unwrap().display().to_string())
        .collect()
}

/// The file names docs/ARCHITECTURE.md mentions in a service's section (`## qualifier`,
/// `## delivery`): every word ending in `.rs`.
fn named_files(page: &str, service: &str) -> BTreeSet<String> {
    let heading = format!("## {service}");
    let Some(start) = page.lines().position(|line| line.starts_with(&heading)) else {
        return BTreeSet::new();
    };
    page.lines()
        .skip(start + 1)
        .take_while(|line| !line.starts_with("## "))
        .flat_map(|line| {
            line.split(|c: char| !(c.is_alphanumeric() || "_/.".contains(c)))
                .filter(|word| word.ends_with(".rs"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What the page and the tree disagree on: files the page does not name, names that are not
/// files.
fn architecture_drift(page: &str, service: &str, tree: &BTreeSet<String>) -> Vec<String> {
    let named = named_files(page, service);
    let unnamed = tree
        .difference(&named)
        .map(|file| format!("{service}: {file} is not on the page"));
    let stale = named
        .difference(tree)
        .map(|file| format!("{service}: {file} is on the page but not in crates/{service}/src"));
    unnamed.chain(stale).collect()
}

#[test]
fn the_architecture_page_names_every_file_of_both_services_and_no_other() {
    let page = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let mut drift = Vec::new();
    for service in ["qualifier", "delivery"] {
        drift.extend(architecture_drift(&page, service, &service_files(service)));
    }
    assert!(
        drift.is_empty(),
        "docs/ARCHITECTURE.md and the tree disagree: {drift:#?}"
    );
}

/// A helper issue 16 folded into one place: what gives a copy of it away (every needle in one
/// file), and the one file allowed to hold it.
struct Folded {
    what: &'static str,
    needles: &'static [&'static str],
    home: &'static str,
}

const FOLDED: &[Folded] = &[
    Folded {
        what: "Unix milliseconds from the wall clock (use telemetry::clock::unix_ms)",
        needles: &["UNIX_EPOCH", "as_millis"],
        home: "crates/telemetry/src/clock.rs",
    },
    Folded {
        what: "Unix milliseconds from the wall clock (use telemetry::clock::unix_ms)",
        needles: &["now_utc()", "unix_timestamp_nanos() / 1_000_000"],
        home: "crates/telemetry/src/clock.rs",
    },
    Folded {
        what: "RFC 3339 text to Unix milliseconds (use model::unix_ms_from_rfc3339)",
        needles: &["Rfc3339", "unix_timestamp_nanos() / 1_000_000"],
        home: "crates/model/src/lib.rs",
    },
    Folded {
        what: "a Prometheus-text parser (use testkit::scrape)",
        needles: &["rsplit(' ').next()"],
        home: "crates/testkit/src/scrape.rs",
    },
    Folded {
        what: "a Prometheus-text parser (use testkit::scrape)",
        needles: &["split(\"le="],
        home: "crates/testkit/src/scrape.rs",
    },
    Folded {
        what: "hex by hand (use the hex crate)",
        needles: &[":02x}"],
        home: "",
    },
];

/// Files of `paths` (relative names) holding a copy of a folded helper outside its home.
fn copies(paths: &[PathBuf]) -> Vec<String> {
    let mut found = Vec::new();
    for path in paths {
        let name = relative(path);
        let text = std::fs::read_to_string(path).unwrap();
        for folded in FOLDED {
            if name != folded.home && folded.needles.iter().all(|n| text.contains(n)) {
                found.push(format!("{name}: {}", folded.what));
            }
        }
    }
    found
}

/// Files of the two services that register metrics one by one instead of through
/// `telemetry::register_all`.
fn registering_by_hand(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .filter(|path| {
            let name = relative(path);
            name.starts_with("crates/qualifier/") || name.starts_with("crates/delivery/")
        })
        .filter(|path| registers_by_hand(&std::fs::read_to_string(path).unwrap()))
        .map(|path| relative(path))
        .collect()
}

fn registers_by_hand(text: &str) -> bool {
    text.contains(".register(Box::new(")
}

#[test]
fn the_helpers_issue_16_folded_stay_in_one_place() {
    // This file names the needles itself.
    let mut others = rust_files();
    others.retain(|path| !relative(path).ends_with("tests/e2e/tree.rs"));
    let mut found = copies(&others);
    found.extend(registering_by_hand(&rust_files()));
    assert!(
        found.is_empty(),
        "copies of a helper that has one home: {found:#?}"
    );
}

/// The metric names `text` gives its metrics' constructors as string literals (prometheus's
/// `Opts::new`, `HistogramOpts::new`, `IntCounter::new`, `IntGauge::new`, …); a name made at
/// run time (`telemetry::partitions_revoked`'s) is not seen.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for constructor in ["Opts::new(", "Counter::new(", "Gauge::new("] {
        for (at, _) in text.match_indices(constructor) {
            let rest = text[at + constructor.len()..].trim_start();
            if let Some(literal) = rest.strip_prefix('"')
                && let Some(end) = literal.find('"')
            {
                names.push(literal[..end].to_owned());
            }
        }
    }
    names
}

/// The metrics the non-test sources in `paths` name (their own test modules left out), each as
/// (file, name).
fn exported_metrics(paths: &[PathBuf]) -> Vec<(String, String)> {
    let mut metrics = Vec::new();
    for path in paths.iter().filter(|path| !is_test_file(path)) {
        let text = std::fs::read_to_string(path).unwrap();
        // A file's own test module comes last.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        metrics.extend(
            metric_names(code)
                .into_iter()
                .map(|name| (relative(path), name)),
        );
    }
    metrics
}

/// Those of `metrics` that `readme` does not name in backticks (alone, or with their labels:
/// `name{…}`): metric names are a public interface, documented there.
fn undocumented(metrics: &[(String, String)], readme: &str) -> Vec<String> {
    metrics
        .iter()
        .filter(|(_, name)| {
            let named = [format!("`{name}`"), format!("`{name}{{")];
            !named.iter().any(|n| readme.contains(n.as_str()))
        })
        .map(|(file, name)| format!("{file}: {name}"))
        .collect()
}

#[test]
fn every_metric_the_services_export_is_in_the_readme() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let metrics = exported_metrics(&files("crates", ".rs"));
    let found = undocumented(&metrics, &readme);
    assert!(
        found.is_empty(),
        "metrics the README does not name: {found:#?}"
    );
    // The walk finds them: both services', and telemetry's (liveness); 47 when this was written.
    let named = metrics.len();
    assert!(
        named >= 45,
        "only {named} metric names found in the sources"
    );
}

// ---------------------------------------------------------------------------------------------
// The checks themselves, fed known-bad cases: each must be able to fail.

#[test]
fn the_checks_catch_what_they_are_for() {
    // Inside the checkout (`relative` names files from the root), where no walk looks.
    let dir = root()
        .join("target")
        .join(format!("tree-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let no_comment = dir.join("no_comment.rs");
    std::fs::write(&no_comment, "use std::fmt;\n").unwrap();
    let long = dir.join("long.rs");
    std::fs::write(
        &long,
        "//! Long.\n".to_owned() + &"\n".repeat(MAX_SOURCE_LINES),
    )
    .unwrap();
    let long_test = dir.join("tests.rs");
    std::fs::copy(&long, &long_test).unwrap();
    assert_eq!(without_module_comment(&[no_comment, long.clone()]).len(), 1);
    assert_eq!(oversized(&[long, long_test]).len(), 1);

    let doc = dir.join("doc.md");
    std::fs::write(
        &doc,
        format!(
            "[ok](../../README.md) [web](https://example.com) [here](#x) [gone](missing.md#y) \
         [out](../../../{shared}/DESIGN.md) see ../{shared}/DESIGN.md\n",
            shared = "shared"
        ),
    )
    .unwrap();
    let broken = broken_links(std::slice::from_ref(&doc));
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert_eq!(outside_references(&[doc]).len(), 1);

    let tree: BTreeSet<String> = ["main.rs", "consumer/route.rs"].map(String::from).into();
    let page = "## delivery\n`main.rs` → `consumer.rs`\n## qualifier\n`consumer/route.rs`\n";
    assert_eq!(
        architecture_drift(page, "delivery", &tree),
        [
            "delivery: consumer/route.rs is not on the page",
            "delivery: consumer.rs is on the page but not in crates/delivery/src"
        ]
    );

    let copy = dir.join("clock.rs");
    std::fs::write(
        &copy,
        "//! A clock.\nlet ms = now.duration_since(UNIX_EPOCH).unwrap().as_millis();\n\
         let key = format!(\"{b:02x}\");\nregistry.register(Box::new(c.clone()));\n",
    )
    .unwrap();
    assert_eq!(copies(std::slice::from_ref(&copy)).len(), 2);
    assert!(registers_by_hand(&std::fs::read_to_string(&copy).unwrap()));
    let service = root().join("crates/delivery/src/metrics.rs");
    assert!(!registers_by_hand(
        &std::fs::read_to_string(service).unwrap()
    ));

    let metrics = dir.join("metrics.rs");
    std::fs::write(
        &metrics,
        "let a = IntCounterVec::new(Opts::new(\"t_events_total\", \"Events.\"), &[\"type\"]);\n         let b = IntGauge::new(\n    \"t_users\",\n    \"Users.\",\n);\n         let c = HistogramOpts::new(\"t_seconds\", \"Time.\");\n",
    )
    .unwrap();
    let readme = "| `t_events_total` | counter |\n`t_seconds{le}`, and t_users unquoted\n";
    let found = undocumented(&exported_metrics(std::slice::from_ref(&metrics)), readme);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].ends_with(": t_users"), "{found:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
