//! Reading a `/metrics` scrape: the one Prometheus-text parser of the tests, `make bench`
//! and `make demo` (the scripts reach it through `relay-bench metrics`), so that every figure
//! they print means the same thing.
//!
//! The semantics, defined here once:
//!
//! - **Text.** The Prometheus text exposition format: one sample per line, `name{labels} value
//!   [timestamp]`; `#` lines (`# HELP`, `# TYPE`) and blank lines are skipped; label values are
//!   quoted with `\\`, `\"` and `\n` escaped; values may be `+Inf`, `-Inf` or `NaN`; the
//!   timestamp is ignored. Several scrapes may be concatenated (both delivery workers): the
//!   result is the samples of all of them. A line that is none of these is an error naming the
//!   line, never skipped.
//! - **Selecting.** A [`Selector`] is written as PromQL writes an instant vector selector with
//!   equality matchers only: `name` or `name{label="value",…}`. A sample matches when its name
//!   equals `name` exactly (no prefix: `qualifier_users` does not match
//!   `qualifier_users_total`) and each listed label has exactly that value; labels the selector
//!   does not list may have any value (so `delivery_events_total{outcome="delivered"}` spans
//!   every destination), and label order does not matter.
//! - **Summing.** [`Scrape::sum`] adds every matching sample, across the concatenated scrapes.
//! - **A missing series is an error**, never 0: our services register every series at 0 when
//!   they start (per destination, per outcome), so a selector that matches nothing means a
//!   renamed metric, a mistyped label or a scrape that failed. A caller for which no sample is
//!   a legitimate state says so itself (`relay-bench metrics … --absent TEXT`, `Option` from
//!   [`crate::service::metric_value`]).
//! - **Histograms.** [`Scrape::histogram`] takes the histogram's name (without `_bucket`) and
//!   matchers, and adds the `<name>_bucket` samples of every matching label set bucket by bucket
//!   (`le`), like PromQL's `sum by (le) (<name>_bucket{…})`. Every label set must have the same
//!   bucket bounds, including `+Inf`; else it is an error (the sum would be meaningless).
//!   [`Histogram::since`] subtracts an earlier scrape's histogram (the observations in
//!   between); a bucket that went down (a process restarted in between) is an error.
//! - **Quantiles** are computed as Prometheus' `histogram_quantile` computes them: the rank
//!   `q × count`, the first bucket whose cumulative count reaches it, and a linear
//!   interpolation between that bucket's lower bound (the bound below it, 0 for the first) and
//!   its upper bound. A rank that falls in the `+Inf` bucket has no upper bound: the answer is
//!   "above the highest finite bound" ([`Quantile::Above`], printed `>10.24`), where Prometheus
//!   would print that bound itself. A histogram without observations has no quantile
//!   ([`Quantile::Empty`], printed `-`). An estimate is printed with 3 decimals.

use std::fmt;

/// What cannot be read, or is not there.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScrapeError {
    #[error("line {line} of the metrics text: {problem}: `{text}`")]
    Syntax {
        line: usize,
        problem: &'static str,
        text: String,
    },
    #[error("selector `{selector}`: {problem} (write `name` or `name{{label=\"value\",…}}`)")]
    Selector {
        selector: String,
        problem: &'static str,
    },
    #[error(
        "no sample matches `{selector}` among the {samples} samples read (a renamed metric, a mistyped label, or a scrape that failed)"
    )]
    Missing { selector: String, samples: usize },
    #[error("histogram `{selector}`: {problem}")]
    Histogram { selector: String, problem: String },
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In the order of the line; values unescaped.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of one or more concatenated scrapes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

/// A metric name and the labels a sample must have (see the module comment).
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    text: String,
    name: String,
    matchers: Vec<(String, String)>,
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, ScrapeError> {
        let fail = |problem| ScrapeError::Selector {
            selector: text.to_owned(),
            problem,
        };
        let mut cursor = Cursor(text.trim());
        let name = cursor.name().ok_or_else(|| fail("no metric name"))?;
        let matchers = cursor.labels().map_err(fail)?;
        if !cursor.0.is_empty() {
            return Err(fail("text after the selector"));
        }
        Ok(Self {
            text: text.trim().to_owned(),
            name: name.to_owned(),
            matchers,
        })
    }

    pub fn matches(&self, sample: &Sample) -> bool {
        sample.name == self.name
            && self
                .matchers
                .iter()
                .all(|(label, value)| sample.label(label) == Some(value.as_str()))
    }
}

impl Scrape {
    /// Parses Prometheus text (one scrape or several concatenated).
    pub fn parse(text: &str) -> Result<Self, ScrapeError> {
        let mut samples = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fail = |problem| ScrapeError::Syntax {
                line: index + 1,
                problem,
                text: line.to_owned(),
            };
            let mut cursor = Cursor(line);
            let name = cursor.name().ok_or_else(|| fail("no metric name"))?;
            let labels = cursor.labels().map_err(fail)?;
            let mut rest = cursor.0.split_whitespace();
            let value = rest
                .next()
                .ok_or_else(|| fail("no value"))
                .and_then(|v| parse_value(v).ok_or_else(|| fail("the value is not a number")))?;
            if let Some(timestamp) = rest.next()
                && timestamp.parse::<i64>().is_err()
            {
                return Err(fail("the timestamp is not whole milliseconds"));
            }
            if rest.next().is_some() {
                return Err(fail("text after the value and timestamp"));
            }
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        Ok(Self { samples })
    }

    /// The samples `selector` matches, in the order of the text.
    pub fn select<'a>(&'a self, selector: &'a Selector) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(|s| selector.matches(s))
    }

    /// The sum of every sample `selector` matches; an error when none does.
    pub fn sum(&self, selector: &Selector) -> Result<f64, ScrapeError> {
        let mut matched = self.select(selector).peekable();
        if matched.peek().is_none() {
            return Err(self.missing(selector.to_string()));
        }
        Ok(matched.map(|s| s.value).sum())
    }

    /// The histogram `selector` names (without `_bucket`), summed bucket by bucket over every
    /// label set it matches.
    pub fn histogram(&self, selector: &Selector) -> Result<Histogram, ScrapeError> {
        let fail = |problem: String| ScrapeError::Histogram {
            selector: selector.to_string(),
            problem,
        };
        if selector.matchers.iter().any(|(label, _)| label == "le") {
            return Err(fail(
                "select the histogram, not a bucket: no `le` matcher".into(),
            ));
        }
        let buckets = Selector {
            name: format!("{}_bucket", selector.name),
            ..selector.clone()
        };
        // Per label set (without `le`) and scrape: its (bound, cumulative count) pairs.
        let mut series: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
        for sample in self.select(&buckets) {
            let le = sample
                .label("le")
                .ok_or_else(|| fail(format!("a bucket without `le`: {sample:?}")))?;
            let bound = parse_value(le)
                .filter(|b| !b.is_nan())
                .ok_or_else(|| fail(format!("bucket bound `le=\"{le}\"` is not a number")))?;
            let mut labels = sample.labels.clone();
            labels.retain(|(n, _)| n != "le");
            labels.sort();
            // The same label set again with a bound it already has: the next scrape's.
            let next = series
                .iter_mut()
                .find(|(l, points)| *l == labels && points.iter().all(|p| p.0 != bound));
            match next {
                Some((_, points)) => points.push((bound, sample.value)),
                None => series.push((labels, vec![(bound, sample.value)])),
            }
        }
        let Some((_, first)) = series.first() else {
            return Err(self.missing(format!("{}_bucket", selector)));
        };
        let bounds = sorted_bounds(first);
        let mut total: Vec<(f64, f64)> = bounds.iter().map(|&b| (b, 0.0)).collect();
        for (labels, points) in &series {
            if sorted_bounds(points) != bounds {
                return Err(fail(format!(
                    "the label sets {:?} and {labels:?} have different bucket bounds, which cannot be added up",
                    series[0].0
                )));
            }
            for &(bound, count) in points {
                if let Some(slot) = total.iter_mut().find(|(b, _)| *b == bound) {
                    slot.1 += count;
                }
            }
        }
        Histogram::new(total).map_err(fail)
    }

    /// What the histogram `selector` names observed since `earlier`, a scrape of the same
    /// processes. A histogram made on first use (delivery's latency per send path) may have no
    /// series yet in `earlier`: then everything it holds now came since. An `earlier` scrape
    /// that read nothing at all is an error (a scrape that failed is not an empty histogram).
    pub fn histogram_since(
        &self,
        earlier: &Scrape,
        selector: &Selector,
    ) -> Result<Histogram, ScrapeError> {
        let now = self.histogram(selector)?;
        let between = match earlier.histogram(selector) {
            Ok(before) => now.since(&before),
            Err(ScrapeError::Missing { samples, .. }) if samples > 0 => Ok(now),
            Err(error) => return Err(error),
        };
        between.map_err(|problem| ScrapeError::Histogram {
            selector: selector.to_string(),
            problem,
        })
    }

    fn missing(&self, selector: String) -> ScrapeError {
        ScrapeError::Missing {
            selector,
            samples: self.samples.len(),
        }
    }
}

/// A sample's labels without `le`, sorted: one series of a histogram.
type Labels = Vec<(String, String)>;

fn sorted_bounds(points: &[(f64, f64)]) -> Vec<f64> {
    let mut bounds: Vec<f64> = points.iter().map(|p| p.0).collect();
    bounds.sort_by(f64::total_cmp);
    bounds
}

/// Cumulative bucket counts by upper bound, ascending, the last `+Inf`.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    buckets: Vec<(f64, f64)>,
}

/// A histogram quantile (see the module comment); `Display` prints it as the scripts do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quantile {
    /// Interpolated within its bucket.
    Estimate(f64),
    /// The rank fell in the `+Inf` bucket: above this, the highest finite bound (0 when there is
    /// none).
    Above(f64),
    /// No observations.
    Empty,
}

impl fmt::Display for Quantile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Estimate(seconds) => write!(f, "{seconds:.3}"),
            Self::Above(bound) => write!(f, ">{bound}"),
            Self::Empty => f.write_str("-"),
        }
    }
}

impl Histogram {
    /// From (upper bound, cumulative count) pairs in any order; they must include `+Inf` and
    /// not decrease.
    pub fn new(mut buckets: Vec<(f64, f64)>) -> Result<Self, String> {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
            return Err("no `+Inf` bucket".into());
        }
        if let Some(pair) = buckets.windows(2).find(|w| w[1].1 < w[0].1) {
            return Err(format!(
                "cumulative counts go down from {} (le {}) to {} (le {})",
                pair[0].1, pair[0].0, pair[1].1, pair[1].0
            ));
        }
        Ok(Self { buckets })
    }

    /// Observations in all buckets (the `+Inf` bucket's count).
    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |b| b.1)
    }

    /// The observations of both: two series of one histogram (two destinations, two
    /// processes), which must have the same bucket bounds.
    pub fn plus(&self, other: &Self) -> Result<Self, String> {
        let bounds = |h: &Self| h.buckets.iter().map(|b| b.0).collect::<Vec<_>>();
        if bounds(self) != bounds(other) {
            return Err("the two histograms have other bucket bounds".into());
        }
        let buckets = self
            .buckets
            .iter()
            .zip(&other.buckets)
            .map(|(&(bound, a), &(_, b))| (bound, a + b))
            .collect();
        Self::new(buckets)
    }

    /// The observations made after `earlier` (the same histogram in an earlier scrape).
    pub fn since(&self, earlier: &Self) -> Result<Self, String> {
        let bounds = |h: &Self| h.buckets.iter().map(|b| b.0).collect::<Vec<_>>();
        if bounds(self) != bounds(earlier) {
            return Err("the earlier scrape has other bucket bounds".into());
        }
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (&(bound, now), &(_, before)) in self.buckets.iter().zip(&earlier.buckets) {
            if now < before {
                return Err(format!(
                    "bucket le {bound} went down from {before} to {now} (a process restarted between the scrapes)"
                ));
            }
            buckets.push((bound, now - before));
        }
        Self::new(buckets)
    }

    /// The `q`-quantile (0 ≤ q ≤ 1), as Prometheus' `histogram_quantile` computes it.
    pub fn quantile(&self, q: f64) -> Result<Quantile, String> {
        if !(0.0..=1.0).contains(&q) {
            return Err(format!("the quantile must be between 0 and 1, got {q}"));
        }
        let total = self.count();
        if total <= 0.0 {
            return Ok(Quantile::Empty);
        }
        let rank = q * total;
        let index = self
            .buckets
            .iter()
            .position(|&(_, count)| count >= rank)
            .unwrap_or(self.buckets.len() - 1);
        let (lower, below) = match index {
            0 => (0.0, 0.0),
            i => self.buckets[i - 1],
        };
        let (upper, count) = self.buckets[index];
        if upper == f64::INFINITY {
            return Ok(Quantile::Above(lower));
        }
        if index == 0 && upper <= 0.0 {
            return Ok(Quantile::Estimate(upper));
        }
        let in_bucket = count - below;
        if in_bucket <= 0.0 {
            return Ok(Quantile::Estimate(lower));
        }
        Ok(Quantile::Estimate(
            lower + (upper - lower) * (rank - below) / in_bucket,
        ))
    }
}

/// `+Inf`, `-Inf`, `NaN` or a float.
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok().filter(|v: &f64| v.is_finite()),
    }
}

/// The unread rest of a line.
struct Cursor<'a>(&'a str);

impl<'a> Cursor<'a> {
    /// A metric or label name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    fn name(&mut self) -> Option<&'a str> {
        let end = self
            .0
            .char_indices()
            .find(|&(i, c)| {
                !(c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
            })
            .map_or(self.0.len(), |(i, _)| i);
        let (name, rest) = self.0.split_at(end);
        self.0 = rest;
        (!name.is_empty()).then_some(name)
    }

    /// `{label="value",…}` if the rest starts with `{`, else no labels.
    fn labels(&mut self) -> Result<Vec<(String, String)>, &'static str> {
        let mut labels = Vec::new();
        let Some(rest) = self.0.strip_prefix('{') else {
            return Ok(labels);
        };
        self.0 = rest.trim_start();
        loop {
            if let Some(rest) = self.0.strip_prefix('}') {
                self.0 = rest;
                return Ok(labels);
            }
            let name = self.name().ok_or("a label without a name")?;
            let rest = self
                .0
                .trim_start()
                .strip_prefix('=')
                .ok_or("a label without `=`")?;
            let rest = rest
                .trim_start()
                .strip_prefix('"')
                .ok_or("a label value without quotes")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars
                    .next()
                    .ok_or("a label value without its closing quote")?
                {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => return Err("an unknown escape in a label value"),
                    },
                    (_, c) => value.push(c),
                }
            };
            if labels.iter().any(|(n, _)| n == name) {
                return Err("a label given twice");
            }
            labels.push((name.to_owned(), value));
            self.0 = rest[end + 1..].trim_start();
            match self.0.strip_prefix(',') {
                Some(rest) => self.0 = rest.trim_start(),
                None if self.0.starts_with('}') => {}
                None => return Err("labels not separated by `,`"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
