//! The rollup matrix and the upgrade planner through the real binary (the rules themselves
//! are property-tested in the `rollup` crate).

use std::fs;

use crate::harness::*;

#[test]
fn lint_reports_exactly_the_two_anomalies_of_the_seed_table() {
    let dir = TestDir::new("update-lint");
    let logs = dir.subdir("logs");
    let finished = run_siterelay(&["update", "lint"], &logs, COMMAND_TIMEOUT);
    assert!(!finished.status.success(), "lint passed a matrix with errors");
    assert_eq!(
        finished.stdout,
        "error: UR28 Provider: malformed version \"5.1.3600 .0\" (expected dot-separated numbers)\n\
         error: OVF: version goes down from 5.1.3700.0 (UR29) to 5.1.3650.0 (UR30)\n\
         2 errors, 0 warnings\n"
    );
    assert_eq!(
        finished.stderr.trim(),
        "siterelay: built-in rollups.toml: 2 error(s) in the rollup matrix"
    );

    // The same file with the two cells corrected lints clean and exits 0.
    let text =
        include_str!("../../config/rollups.toml").replace("5.1.3600 .0", "5.1.3600.0").replace(
            "{ component = \"OVF\", version = \"5.1.3650.0\" }",
            "{ component = \"OVF\", version = \"5.1.3700.0\" }",
        );
    let fixed = dir.join("fixed.toml");
    fs::write(&fixed, text).unwrap();
    let finished =
        run_siterelay(&["update", "lint", fixed.to_str().unwrap()], &logs, COMMAND_TIMEOUT);
    assert!(finished.status.success(), "{}", finished.describe());
    assert!(finished.stdout.ends_with("0 errors, 0 warnings\n"), "{}", finished.describe());
}

#[test]
fn plan_goes_stepwise_from_below_n_minus_4_and_refuses_by_name() {
    let dir = TestDir::new("update-plan");
    let logs = dir.subdir("logs");
    let plan = |args: &[&str]| {
        let mut all = vec!["update", "plan"];
        all.extend_from_slice(args);
        run_siterelay(&all, &logs, COMMAND_TIMEOUT)
    };
    let direct = plan(&["--component", "Unified Setup", "--from", "9.18.4946.1"]);
    assert!(direct.status.success(), "{}", direct.describe());
    assert!(
        direct
            .stdout
            .starts_with("Unified Setup: 9.18.4946.1 -> 9.21.5091.1 directly (9.18.4946.1 is N-4"),
        "{}",
        direct.stdout
    );
    let stepwise = plan(&["--component", "appliance-image", "--from", "0.3.0"]);
    assert!(stepwise.status.success(), "{}", stepwise.describe());
    assert!(
        stepwise.stdout.starts_with("appliance-image: 0.3.0 -> 0.9.0 in 2 hops"),
        "{}",
        stepwise.stdout
    );
    assert!(
        stepwise.stdout.contains("0.3.0 -> 0.5.0") && stepwise.stdout.contains("0.5.0 -> 0.9.0")
    );
    let malformed = plan(&["--component", "Provider", "--from", "5.1.3600 .0"]);
    assert!(!malformed.status.success());
    assert_eq!(
        malformed.stderr.trim(),
        "siterelay: Provider: malformed version \"5.1.3600 .0\" (expected dot-separated numbers)"
    );
    let unknown = plan(&["--component", "Flux capacitor", "--from", "1.0"]);
    assert!(!unknown.status.success());
    assert!(unknown.stderr.contains("Flux capacitor"), "{}", unknown.stderr);
    let help = plan(&["--help"]);
    assert!(help.stdout.contains("N-4, N-3, N-2 and N-1 go to N in"), "{}", help.stdout);
}
