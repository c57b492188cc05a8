//! Human text for the CLI (`siterelay update lint|plan`), so the command only prints it.

use std::fmt::Write as _;

use crate::lint::{Report, Shown};
use crate::planner::Hop;
use crate::SUPPORTED_BEHIND_MAX;

/// A plan made by [`crate::plan`], one line for the whole and one per hop:
///
/// ```text
/// appliance-image: 0.3.0 -> 0.9.0 in 2 hops (0.3.0 is N-6, below N-4: stepwise)
///   1. 0.3.0 -> 0.5.0  N-2 -> N: N-4 or newer goes directly to N
///   2. 0.5.0 -> 0.9.0  N-4 -> N: N-4 or newer goes directly to N
/// ```
pub fn render_plan(component: &str, hops: &[Hop]) -> String {
    let component = Shown(component);
    let (Some(first), Some(last)) = (hops.first(), hops.last()) else {
        return format!("{component}: nothing to do\n");
    };
    // Hops run along the release line, so their distances add up to the whole distance.
    let behind: usize = hops.iter().map(|hop| hop.behind).sum();
    let (from, to) = (&first.from, &last.to);
    let mut text = if behind <= SUPPORTED_BEHIND_MAX {
        format!("{component}: {from} -> {to} directly ({from} is N-{behind}, N-4 or newer)\n")
    } else {
        format!(
            "{component}: {from} -> {to} in {} hops ({from} is N-{behind}, below N-4: stepwise)\n",
            hops.len()
        )
    };
    for (number, hop) in hops.iter().enumerate() {
        let _ = writeln!(text, "  {}. {} -> {}  {}", number + 1, hop.from, hop.to, hop.rule);
    }
    text
}

/// A lint report: each error, then each warning, then the counts:
///
/// ```text
/// error: UR28 Provider: malformed version "5.1.3600 .0" (expected dot-separated numbers)
/// error: OVF: version goes down from 5.1.3700.0 (UR29) to 5.1.3650.0 (UR30)
/// 2 errors, 0 warnings
/// ```
pub fn render_report(report: &Report) -> String {
    let mut text = String::new();
    for error in &report.errors {
        let _ = writeln!(text, "error: {error}");
    }
    for warning in &report.warnings {
        let _ = writeln!(text, "warning: {warning}");
    }
    let plural = |count: usize| if count == 1 { "" } else { "s" };
    let (errors, warnings) = (report.errors.len(), report.warnings.len());
    let _ =
        writeln!(text, "{errors} error{}, {warnings} warning{}", plural(errors), plural(warnings));
    text
}
