//! `siterelay update lint | plan`: the rollup compatibility matrix (config/rollups.toml,
//! built in; `--matrix FILE` reads another) and the upgrade planner with the N-4 rule.

use crate::args::Args;

/// The matrix this build ships with.
const BUILTIN_MATRIX: &str = include_str!("../../../config/rollups.toml");

const PLAN_HELP: &str = "\
siterelay update plan --component C --from V [--to V] [--scenario S] [--matrix FILE]

The shortest supported upgrade path of one component. Release N (the newest, or --to)
supports direct upgrades from the four releases below it: N-4, N-3, N-2 and N-1 go to N in
one hop. The seed document writes \"from > N-4 to N\", but its own example, N-6 goes to N-4
and then to N, only works if N-4 itself goes directly, so that is how it is read here.
Anything older goes stepwise. N counts the distinct versions the matrix lists for the
component, in version order; revoked versions and versions not available in --scenario are
never a hop's destination.
";

pub(crate) fn run(rest: &[String]) -> Result<(), String> {
    let Some((sub, rest)) = rest.split_first() else {
        return Err("update: expected lint or plan".into());
    };
    match sub.as_str() {
        "lint" => lint(rest),
        "plan" => plan(rest),
        other => Err(format!("update: unknown subcommand {other:?} (expected lint, plan)")),
    }
}

fn load(path: Option<&str>) -> Result<(String, rollup::Matrix), String> {
    let (name, text) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| format!("{path}: {error}"))?;
            (path.to_string(), text)
        }
        None => ("built-in rollups.toml".to_string(), BUILTIN_MATRIX.to_string()),
    };
    let matrix = rollup::load(&text).map_err(|error| format!("{name}: {error}"))?;
    Ok((name, matrix))
}

/// Prints every finding; fails when there are errors (warnings alone pass).
fn lint(rest: &[String]) -> Result<(), String> {
    let (path, rest) = match rest.split_first() {
        Some((path, rest)) if !path.starts_with("--") => (Some(path.as_str()), rest),
        _ => (None, rest),
    };
    Args::parse("update lint", rest, &[])?;
    let (name, matrix) = load(path)?;
    let report = rollup::lint(&matrix);
    print!("{}", rollup::render_report(&report));
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{name}: {} error(s) in the rollup matrix", report.errors.len()))
    }
}

fn plan(rest: &[String]) -> Result<(), String> {
    const SPEC: &[(&str, bool)] = &[
        ("component", true),
        ("from", true),
        ("to", true),
        ("scenario", true),
        ("matrix", true),
        ("help", false),
    ];
    let args = Args::parse("update plan", rest, SPEC)?;
    if args.flag("help") {
        print!("{PLAN_HELP}");
        return Ok(());
    }
    let need = |name: &str| {
        args.value(name).ok_or_else(|| format!("update plan: --{name} is required\n\n{PLAN_HELP}"))
    };
    let (component, from) = (need("component")?, need("from")?);
    let (_, matrix) = load(args.value("matrix"))?;
    let hops = rollup::plan(&matrix, component, from, args.value("to"), args.value("scenario"))
        .map_err(|error| error.to_string())?;
    print!("{}", rollup::render_plan(component, &hops));
    Ok(())
}
