//! Unit tests: the shipped matrix (the seed table and siterelay's own release lines), every
//! lint finding and plan refusal with its exact message, versions, and the rendered text.

use crate::{
    lint, load, plan, render_plan, render_report, support_state, Finding, Hop, LoadError, Matrix,
    PlanError, SupportState, Version, MATRIX_TEXT_MAX,
};

/// The shipped matrix, as the CLI reads it.
const SHIPPED: &str = include_str!("../../../config/rollups.toml");

fn shipped() -> Matrix {
    load(SHIPPED).expect("config/rollups.toml loads")
}

fn version(text: &str) -> Version {
    Version::parse(text).expect("well-formed test version")
}

/// `(from, to, behind)` of each hop.
fn steps(hops: &[Hop]) -> Vec<(&str, &str, usize)> {
    hops.iter().map(|hop| (hop.from.as_str(), hop.to.as_str(), hop.behind)).collect()
}

fn texts(findings: &[Finding]) -> Vec<String> {
    findings.iter().map(ToString::to_string).collect()
}

// --- The shipped file -----------------------------------------------------------------------

#[test]
fn shipped_matrix_loads_with_the_seed_table_and_siterelay_lines() {
    let matrix = shipped();
    let ids: Vec<&str> = matrix.rollups.iter().map(|rollup| rollup.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "UR27", "UR28", "UR29", "UR30", "UR31", "UR32", "SR-0.1.0", "SR-0.2.0", "SR-0.3.0",
            "SR-0.4.0", "SR-0.5.0", "SR-0.6.0", "SR-0.7.0", "SR-0.8.0", "SR-0.9.0"
        ]
    );
    let components: Vec<&str> = matrix.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        components,
        ["Provider", "Unified Setup", "OVF", "MARS", "appliance-image", "relay", "target", "agent"]
    );
    let scenarios: Vec<&str> = matrix.scenarios.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        scenarios,
        [
            "vmware-physical-to-azure",
            "vmware-physical-to-secondary",
            "vmm-to-vmm",
            "vmm-to-azure",
            "hyperv-to-azure",
            "azure-to-azure"
        ]
    );
    assert_eq!(matrix.revoked.len(), 2);
}

/// The seed table cell by cell, newest row first as the seed prints it (UR32 … UR27), columns
/// Provider, Unified Setup, OVF, MARS: the file must hold it exactly as published.
#[test]
fn shipped_seed_rows_are_exactly_the_published_table() {
    const SEED: [(&str, [&str; 4]); 6] = [
        ("UR32", ["5.1.3800.0", "9.21.5091.1", "5.1.3800.0", "2.0.9144.0"]),
        ("UR31", ["5.1.3700.0", "9.20.5051.1", "5.1.3700.0", "2.0.9144.0"]),
        ("UR30", ["5.1.3650.0", "9.19.5007.1", "5.1.3650.0", "2.0.9139.0"]),
        ("UR29", ["5.1.3650.0", "9.19.4973.1", "5.1.3700.0", "2.0.9131.0"]),
        ("UR28", ["5.1.3600 .0", "9.19.4973.1", "5.1.3600.0", "2.0.9131.0"]),
        ("UR27", ["5.1.3550.0", "9.18.4946.1", "5.1.3550.0", "2.0.9125.0"]),
    ];
    let matrix = shipped();
    for (id, versions) in SEED {
        let rollup = matrix.rollups.iter().find(|rollup| rollup.id == id).expect("seed rollup");
        let cells: Vec<(&str, &str)> =
            rollup.cells.iter().map(|c| (c.component.as_str(), c.version.as_str())).collect();
        let expected: Vec<(&str, &str)> =
            ["Provider", "Unified Setup", "OVF", "MARS"].into_iter().zip(versions).collect();
        assert_eq!(cells, expected, "{id}");
        assert!(rollup.cells.iter().all(|cell| cell.not_available.is_empty()), "{id}");
    }
}

#[test]
fn shipped_matrix_lints_to_exactly_the_two_seed_anomalies() {
    let report = lint(&shipped());
    assert_eq!(
        report.errors,
        [
            Finding::MalformedVersion {
                rollup: "UR28".into(),
                component: "Provider".into(),
                version: "5.1.3600 .0".into(),
                expected: "expected dot-separated numbers",
            },
            Finding::VersionGoesDown {
                component: "OVF".into(),
                from: version("5.1.3700.0"),
                from_rollup: "UR29".into(),
                to: version("5.1.3650.0"),
                to_rollup: "UR30".into(),
            },
        ]
    );
    assert_eq!(report.warnings, []);
    assert_eq!(
        texts(&report.errors),
        [
            r#"UR28 Provider: malformed version "5.1.3600 .0" (expected dot-separated numbers)"#,
            "OVF: version goes down from 5.1.3700.0 (UR29) to 5.1.3650.0 (UR30)",
        ]
    );
    assert_eq!(report.errors[0].rollup(), Some("UR28"));
    assert_eq!(report.errors[0].component(), Some("Provider"));
    assert_eq!(report.errors[1].rollup(), Some("UR30"));
    assert_eq!(report.errors[1].component(), Some("OVF"));
    assert_eq!(
        render_report(&report),
        "error: UR28 Provider: malformed version \"5.1.3600 .0\" (expected dot-separated numbers)\n\
         error: OVF: version goes down from 5.1.3700.0 (UR29) to 5.1.3650.0 (UR30)\n\
         2 errors, 0 warnings\n"
    );
}

#[test]
fn seed_release_lines_count_distinct_well_formed_versions() {
    let matrix = shipped();
    let line = |component: &str| -> Vec<String> {
        matrix.releases(component).iter().map(ToString::to_string).collect()
    };
    // UR28's malformed Provider is skipped; UR29 and UR30 share 5.1.3650.0.
    assert_eq!(line("Provider"), ["5.1.3550.0", "5.1.3650.0", "5.1.3700.0", "5.1.3800.0"]);
    assert_eq!(
        line("Unified Setup"),
        ["9.18.4946.1", "9.19.4973.1", "9.19.5007.1", "9.20.5051.1", "9.21.5091.1"]
    );
    // Numeric order: 5.1.3650.0 (UR30) is older than 5.1.3700.0 (UR29 and UR31).
    assert_eq!(line("OVF"), ["5.1.3550.0", "5.1.3600.0", "5.1.3650.0", "5.1.3700.0", "5.1.3800.0"]);
    assert_eq!(line("MARS"), ["2.0.9125.0", "2.0.9131.0", "2.0.9139.0", "2.0.9144.0"]);
}

/// What the seed table says for each UR27–UR31 version against UR32: (component, rollup,
/// version, support state, plan). Every well-formed old version is at most N-4, so each
/// goes directly; Unified Setup 9.18.4946.1 (UR27) is exactly N-4 and goes directly too.
#[test]
fn seed_versions_against_ur32() {
    enum Expect {
        Direct(usize),
        Refused(&'static str),
    }
    use Expect::{Direct, Refused};
    use SupportState::{Current, Supported, Unknown};
    let cases: [(&str, &str, &str, SupportState, Expect); 20] = [
        ("Provider", "UR27", "5.1.3550.0", Supported { behind: 3 }, Direct(3)),
        (
            "Provider",
            "UR28",
            "5.1.3600 .0",
            Unknown,
            Refused(
                r#"Provider: malformed version "5.1.3600 .0" (expected dot-separated numbers)"#,
            ),
        ),
        ("Provider", "UR29", "5.1.3650.0", Supported { behind: 2 }, Direct(2)),
        ("Provider", "UR30", "5.1.3650.0", Supported { behind: 2 }, Direct(2)),
        ("Provider", "UR31", "5.1.3700.0", Supported { behind: 1 }, Direct(1)),
        ("Unified Setup", "UR27", "9.18.4946.1", Supported { behind: 4 }, Direct(4)),
        ("Unified Setup", "UR28", "9.19.4973.1", Supported { behind: 3 }, Direct(3)),
        ("Unified Setup", "UR29", "9.19.4973.1", Supported { behind: 3 }, Direct(3)),
        ("Unified Setup", "UR30", "9.19.5007.1", Supported { behind: 2 }, Direct(2)),
        ("Unified Setup", "UR31", "9.20.5051.1", Supported { behind: 1 }, Direct(1)),
        ("OVF", "UR27", "5.1.3550.0", Supported { behind: 4 }, Direct(4)),
        ("OVF", "UR28", "5.1.3600.0", Supported { behind: 3 }, Direct(3)),
        ("OVF", "UR29", "5.1.3700.0", Supported { behind: 1 }, Direct(1)),
        ("OVF", "UR30", "5.1.3650.0", Supported { behind: 2 }, Direct(2)),
        ("OVF", "UR31", "5.1.3700.0", Supported { behind: 1 }, Direct(1)),
        ("MARS", "UR27", "2.0.9125.0", Supported { behind: 3 }, Direct(3)),
        ("MARS", "UR28", "2.0.9131.0", Supported { behind: 2 }, Direct(2)),
        ("MARS", "UR29", "2.0.9131.0", Supported { behind: 2 }, Direct(2)),
        ("MARS", "UR30", "2.0.9139.0", Supported { behind: 1 }, Direct(1)),
        (
            "MARS",
            "UR31",
            "2.0.9144.0",
            Current,
            Refused("MARS: already at 2.0.9144.0, nothing to do"),
        ),
    ];
    let matrix = shipped();
    for (component, rollup, installed, state, expect) in cases {
        let cell = matrix.cells(component).find(|(r, _)| r.id == rollup).expect("cell").1;
        assert_eq!(cell.version, installed, "{component} {rollup}");
        let ur32 = &matrix.cells(component).find(|(r, _)| r.id == "UR32").expect("UR32").1.version;
        assert_eq!(
            support_state(&matrix, component, installed, None),
            state,
            "{component} {rollup}"
        );
        assert_eq!(
            support_state(&matrix, component, installed, Some(ur32)),
            state,
            "{component} {rollup}"
        );
        let result = plan(&matrix, component, installed, Some(ur32), None);
        // The same, with the newest release implied.
        assert_eq!(plan(&matrix, component, installed, None, None), result);
        match expect {
            Direct(behind) => {
                let hops = result.expect("a plan");
                assert_eq!(
                    steps(&hops),
                    [(installed, ur32.as_str(), behind)],
                    "{component} {rollup}"
                );
                assert_eq!(
                    hops[0].rule,
                    format!("N-{behind} -> N: N-4 or newer goes directly to N")
                );
            }
            Refused(message) => {
                assert_eq!(result.expect_err("refused").to_string(), message);
            }
        }
    }
}

#[test]
fn seed_components_plan_only_in_their_scenarios() {
    let matrix = shipped();
    let hops = plan(&matrix, "Provider", "5.1.3550.0", None, Some("vmm-to-vmm")).expect("plan");
    assert_eq!(steps(&hops), [("5.1.3550.0", "5.1.3800.0", 3)]);
    let hops =
        plan(&matrix, "Unified Setup", "9.18.4946.1", None, Some("vmware-physical-to-azure"))
            .expect("plan");
    assert_eq!(steps(&hops), [("9.18.4946.1", "9.21.5091.1", 4)]);
    let refused = plan(&matrix, "Provider", "5.1.3550.0", None, Some("azure-to-azure"));
    assert_eq!(
        refused.expect_err("refused").to_string(),
        r#"Provider: not used in scenario "azure-to-azure""#
    );
    let refused = plan(&matrix, "MARS", "2.0.9125.0", None, Some("hyperv-to-azure"));
    assert_eq!(
        refused,
        Err(PlanError::NotInScenario {
            component: "MARS".into(),
            scenario: "hyperv-to-azure".into()
        })
    );
}

#[test]
fn seed_renders_a_direct_plan() {
    let matrix = shipped();
    let hops = plan(&matrix, "Unified Setup", "9.18.4946.1", None, None).expect("plan");
    assert_eq!(
        render_plan("Unified Setup", &hops),
        "Unified Setup: 9.18.4946.1 -> 9.21.5091.1 directly (9.18.4946.1 is N-4, N-4 or newer)\n  \
         1. 9.18.4946.1 -> 9.21.5091.1  N-4 -> N: N-4 or newer goes directly to N\n"
    );
}

// --- siterelay's own release lines ------------------------------------------------------------

#[test]
fn image_goes_from_n6_through_n4_to_n() {
    let matrix = shipped();
    assert_eq!(
        support_state(&matrix, "appliance-image", "0.3.0", None),
        SupportState::OutOfSupport { behind: 6 }
    );
    assert_eq!(
        support_state(&matrix, "appliance-image", "0.4.0", None),
        SupportState::OutOfSupport { behind: 5 }
    );
    assert_eq!(
        support_state(&matrix, "appliance-image", "0.5.0", None),
        SupportState::Supported { behind: 4 }
    );
    assert_eq!(support_state(&matrix, "appliance-image", "0.9.0", None), SupportState::Current);

    let hops = plan(&matrix, "appliance-image", "0.3.0", None, None).expect("plan");
    assert_eq!(steps(&hops), [("0.3.0", "0.5.0", 2), ("0.5.0", "0.9.0", 4)]);
    assert_eq!(
        render_plan("appliance-image", &hops),
        "appliance-image: 0.3.0 -> 0.9.0 in 2 hops (0.3.0 is N-6, below N-4: stepwise)\n  \
         1. 0.3.0 -> 0.5.0  N-2 -> N: N-4 or newer goes directly to N\n  \
         2. 0.5.0 -> 0.9.0  N-4 -> N: N-4 or newer goes directly to N\n"
    );
    // N-8 and N-5 also meet N-4 before the last hop.
    let hops = plan(&matrix, "appliance-image", "0.1.0", None, None).expect("plan");
    assert_eq!(steps(&hops), [("0.1.0", "0.5.0", 4), ("0.5.0", "0.9.0", 4)]);
    let hops = plan(&matrix, "appliance-image", "0.4.0", None, None).expect("plan");
    assert_eq!(steps(&hops), [("0.4.0", "0.5.0", 1), ("0.5.0", "0.9.0", 4)]);
    // N is the --to version: 0.1.0 is N-6 of 0.7.0.
    assert_eq!(
        support_state(&matrix, "appliance-image", "0.1.0", Some("0.7.0")),
        SupportState::OutOfSupport { behind: 6 }
    );
    let hops = plan(&matrix, "appliance-image", "0.1.0", Some("0.7.0"), None).expect("plan");
    assert_eq!(steps(&hops), [("0.1.0", "0.3.0", 2), ("0.3.0", "0.7.0", 4)]);
    let hops = plan(&matrix, "appliance-image", "0.2.0", Some("0.6"), None).expect("plan");
    assert_eq!(steps(&hops), [("0.2.0", "0.6.0", 4)]);
}

#[test]
fn image_avoids_a_version_not_available_in_the_scenario() {
    let matrix = shipped();
    let hops = plan(&matrix, "appliance-image", "0.3.0", None, Some("vmm-to-vmm")).expect("plan");
    assert_eq!(steps(&hops), [("0.3.0", "0.6.0", 3), ("0.6.0", "0.9.0", 3)]);
    assert_eq!(
        hops[0].rule,
        "N-3 -> N: N-4 or newer goes directly to N; passes over 0.5.0 (not available in vmm-to-vmm)"
    );
    // Elsewhere 0.5.0 is available.
    let hops =
        plan(&matrix, "appliance-image", "0.3.0", None, Some("vmware-physical-to-secondary"))
            .expect("plan");
    assert_eq!(steps(&hops), [("0.3.0", "0.5.0", 2), ("0.5.0", "0.9.0", 4)]);
    let refused = plan(&matrix, "appliance-image", "0.1.0", Some("0.2.0"), Some("vmm-to-vmm"));
    assert_eq!(
        refused.expect_err("refused").to_string(),
        r#"appliance-image: target version 0.2.0 is not available in scenario "vmm-to-vmm""#
    );
}

#[test]
fn agent_takes_three_hops_around_its_revoked_n4() {
    let matrix = shipped();
    // 0.4.0 is N-4 of 0.8.0 but revoked: it still counts as a release, but nobody stops on it.
    assert_eq!(
        support_state(&matrix, "agent", "0.4.0", None),
        SupportState::Supported { behind: 4 }
    );
    assert_eq!(
        support_state(&matrix, "agent", "0.1.0", None),
        SupportState::OutOfSupport { behind: 8 }
    );
    let hops = plan(&matrix, "agent", "0.1.0", None, None).expect("plan");
    assert_eq!(steps(&hops), [("0.1.0", "0.2.0", 1), ("0.2.0", "0.5.0", 4), ("0.5.0", "0.8.0", 3)]);
    assert_eq!(
        hops[1].rule,
        "N-4 -> N: N-4 or newer goes directly to N; passes over 0.4.0 (revoked)"
    );
    let hops = plan(&matrix, "agent", "0.3.0", None, None).expect("plan");
    assert_eq!(steps(&hops), [("0.3.0", "0.5.0", 3), ("0.5.0", "0.8.0", 3)]);
    // From the revoked version itself: it is what is installed.
    let hops = plan(&matrix, "agent", "0.4.0", None, None).expect("plan");
    assert_eq!(steps(&hops), [("0.4.0", "0.8.0", 4)]);
    assert_eq!(
        render_plan("agent", &plan(&matrix, "agent", "0.1.0", None, None).expect("plan")),
        "agent: 0.1.0 -> 0.8.0 in 3 hops (0.1.0 is N-8, below N-4: stepwise)\n  \
         1. 0.1.0 -> 0.2.0  N-1 -> N: N-4 or newer goes directly to N\n  \
         2. 0.2.0 -> 0.5.0  N-4 -> N: N-4 or newer goes directly to N; passes over 0.4.0 (revoked)\n  \
         3. 0.5.0 -> 0.8.0  N-3 -> N: N-4 or newer goes directly to N\n"
    );
}

#[test]
fn relay_and_target_lines() {
    let matrix = shipped();
    let hops = plan(&matrix, "relay", "0.2.0", None, None).expect("plan");
    assert_eq!(steps(&hops), [("0.2.0", "0.4.0", 2), ("0.4.0", "0.7.0", 4)]);
    let hops = plan(&matrix, "relay", "0.1.0", Some("0.6.0"), None).expect("plan");
    assert_eq!(steps(&hops), [("0.1.0", "0.3.0", 2), ("0.3.0", "0.6.0", 4)]);
    assert_eq!(
        plan(&matrix, "relay", "0.1.0", Some("0.5.0"), None).expect_err("revoked").to_string(),
        "relay: target version 0.5.0 is revoked: after a crash the cache journal replay could \
         skip the last group commit; use 0.5.1 or later"
    );
    // target: 0.1.0 shipped twice, 0.3.0 twice; 0.1.0 is N-5 of 0.6.0.
    assert_eq!(
        support_state(&matrix, "target", "0.1.0", None),
        SupportState::OutOfSupport { behind: 5 }
    );
    let hops = plan(&matrix, "target", "0.1.0", None, None).expect("plan");
    assert_eq!(steps(&hops), [("0.1.0", "0.2.0", 1), ("0.2.0", "0.6.0", 4)]);
}

#[test]
fn plan_refusals_have_exact_messages() {
    let matrix = shipped();
    let refused = |component: &str, from: &str, to: Option<&str>, scenario: Option<&str>| {
        plan(&matrix, component, from, to, scenario).expect_err("refused").to_string()
    };
    assert_eq!(
        refused("mobility", "9.1", None, None),
        r#"unknown component "mobility" (not declared in the rollup matrix)"#
    );
    assert_eq!(
        refused("relay", "0.4.5", None, None),
        "relay: version 0.4.5 is not in the rollup matrix"
    );
    assert_eq!(
        refused("relay", "0.4.0", Some("0.9.0"), None),
        "relay: version 0.9.0 is not in the rollup matrix"
    );
    assert_eq!(
        refused("relay", "v0.4.0", None, None),
        r#"relay: malformed version "v0.4.0" (expected dot-separated numbers)"#
    );
    assert_eq!(refused("relay", "0.4.0", None, Some("mars")), r#"unknown scenario "mars""#);
    assert_eq!(
        refused("relay", "0.7.0", Some("0.3.0"), None),
        "relay: installed version 0.7.0 is newer than target 0.3.0 (downgrades are not supported)"
    );
    assert_eq!(refused("relay", "0.7.0", None, None), "relay: already at 0.7.0, nothing to do");
    // Trailing zeros do not make a different version.
    assert_eq!(refused("relay", "0.7", None, None), "relay: already at 0.7.0, nothing to do");
}

#[test]
fn plan_refuses_when_every_stepping_stone_is_unusable() {
    let mut matrix = line("c", &["1", "2", "3", "4", "5", "6", "7"]);
    for revoked in ["2", "3", "4", "5"] {
        matrix.revoked.push(crate::Revoked {
            component: "c".into(),
            version: revoked.into(),
            reason: "bad".into(),
        });
    }
    let refused = plan(&matrix, "c", "1", None, None);
    assert_eq!(
        refused.expect_err("refused").to_string(),
        "c: no supported path from 1 to 7: stepping stones 2 (revoked), 3 (revoked), \
         4 (revoked), 5 (revoked) are unusable"
    );
    // 6 is N-1 of 7 and usable, but 1 cannot reach it (5 releases up).
    let hops = plan(&matrix, "c", "2", None, None).expect("from a revoked version");
    assert_eq!(steps(&hops), [("2", "6", 4), ("6", "7", 1)]);
}

#[test]
fn longer_chains_on_a_long_line() {
    let versions: Vec<String> = (1..=20).map(|n| format!("1.{n}")).collect();
    let versions: Vec<&str> = versions.iter().map(String::as_str).collect();
    let matrix = line("c", &versions);
    // 1.1 is N-19 of 1.20: ceil(19 / 4) = 5 hops, the last from N-4, each earlier one 4 down.
    let hops = plan(&matrix, "c", "1.1", None, None).expect("plan");
    assert_eq!(
        steps(&hops),
        [
            ("1.1", "1.4", 3),
            ("1.4", "1.8", 4),
            ("1.8", "1.12", 4),
            ("1.12", "1.16", 4),
            ("1.16", "1.20", 4)
        ]
    );
    let hops = plan(&matrix, "c", "1.10", None, None).expect("plan");
    assert_eq!(steps(&hops), [("1.10", "1.12", 2), ("1.12", "1.16", 4), ("1.16", "1.20", 4)]);
}

#[test]
fn support_state_edges() {
    let matrix = shipped();
    assert_eq!(support_state(&matrix, "relay", "0.7.0", Some("0.6.0")), SupportState::Newer);
    assert_eq!(support_state(&matrix, "relay", "0.4.5", None), SupportState::Unknown);
    assert_eq!(support_state(&matrix, "relay", "0.4.0", Some("0.9.0")), SupportState::Unknown);
    assert_eq!(support_state(&matrix, "nope", "0.4.0", None), SupportState::Unknown);
    assert_eq!(
        support_state(&matrix, "relay", "0.4.0", Some("0.7")),
        SupportState::Supported { behind: 4 }
    );
    assert_eq!(
        support_state(&matrix, "relay", "0.3.0", Some("0.7")),
        SupportState::OutOfSupport { behind: 5 }
    );
}

// --- Lint on crafted matrices ---------------------------------------------------------------

/// One component `name` used in scenario `s`, one rollup per version, named `R1`, `R2`, ….
fn line(name: &str, versions: &[&str]) -> Matrix {
    let mut text = format!(
        "[[scenario]]\nid = \"s\"\ntitle = \"S\"\n[[component]]\nname = \"{name}\"\nscenarios = [\"s\"]\n"
    );
    for (number, version) in versions.iter().enumerate() {
        text += &format!(
            "[[rollup]]\nid = \"R{}\"\ncells = [{{ component = \"{name}\", version = \"{version}\" }}]\n",
            number + 1
        );
    }
    load(&text).expect("test matrix loads")
}

#[test]
fn lint_reports_every_kind_with_its_exact_message() {
    let matrix = load(
        r#"
        [[scenario]]
        id = "s"
        title = "S"
        [[scenario]]
        id = "t"
        title = "T"
        [[scenario]]
        id = "s"
        title = "S again"

        [[component]]
        name = "A"
        scenarios = ["s", "x", "s"]
        [[component]]
        name = "B"
        scenarios = ["s"]
        [[component]]
        name = "A"
        scenarios = []
        [[component]]
        name = "Unused"
        scenarios = ["s"]

        [[rollup]]
        id = "R1"
        cells = [
          { component = "A", version = "1.2" },
          { component = "B", version = "2.0", not_available = ["y", "s", "s", "t"] },
        ]
        [[rollup]]
        id = "R1"
        cells = [
          { component = "A", version = "1.10" },
          { component = "A", version = "1.11" },
          { component = "Ghost", version = "1" },
          { component = "B", version = "2.0-rc1" },
        ]
        [[rollup]]
        id = "R3"
        cells = [
          { component = "A", version = "1.9" },
          { component = "B", version = "3.0" },
        ]

        [[revoked]]
        component = "A"
        version = "1.3"
        reason = "never shipped"
        [[revoked]]
        component = "Ghost"
        version = "1"
        reason = "r"
        [[revoked]]
        component = "B"
        version = "3.0"
        reason = "r"
        [[revoked]]
        component = "B"
        version = "3"
        reason = "same version"
        [[revoked]]
        component = "B"
        version = "03"
        reason = "r"
        "#,
    )
    .expect("loads");
    let report = lint(&matrix);
    assert_eq!(
        texts(&report.errors),
        [
            "scenario s: declared twice",
            r#"component A: unknown scenario "x""#,
            r#"component A: scenario "s" listed twice"#,
            "component A: declared twice",
            r#"R1 B: not_available names unknown scenario "y""#,
            r#"R1 B: not_available names scenario "s" twice"#,
            "R1: rollup declared twice",
            "R1 A: component listed twice in the rollup",
            "R1 Ghost: unknown component (not declared in [[component]])",
            r#"R1 B: malformed version "2.0-rc1" (expected dot-separated numbers)"#,
            "A: version goes down from 1.10 (R1) to 1.9 (R3)",
            "revoked A 1.3: no rollup ships this version",
            "revoked Ghost 1: unknown component",
            "revoked B 3: listed twice",
            r#"revoked B: malformed version "03" (expected numbers without leading zeros)"#,
        ]
    );
    assert_eq!(
        texts(&report.warnings),
        [
            r#"R1 B: not_available names scenario "t", where the component is not used anyway"#,
            "B: newest version 3.0 is revoked (nothing to upgrade to)",
            "component Unused: named by no rollup",
        ]
    );
    assert!(!report.is_ok());
    assert!(report.warnings.iter().all(Finding::is_warning));
    assert!(!report.errors.iter().any(Finding::is_warning));
    assert!(render_report(&report).ends_with("15 errors, 3 warnings\n"));
}

#[test]
fn lint_escapes_control_characters_in_names() {
    let matrix = load(
        "[[component]]\nname = \"a\\nb\"\nscenarios = []\n[[rollup]]\nid = \"R\\u001b\"\ncells = [{ component = \"a\\nb\", version = \"x\" }]\n",
    )
    .expect("loads");
    assert_eq!(
        texts(&lint(&matrix).errors),
        [r#"R\u{1b} a\nb: malformed version "x" (expected dot-separated numbers)"#]
    );
}

#[test]
fn clean_matrix_and_empty_matrix_lint_clean() {
    let report = lint(&line("c", &["1.0", "1.0", "1.1", "2"]));
    assert_eq!(report, crate::Report::default());
    assert_eq!(render_report(&report), "0 errors, 0 warnings\n");
    assert_eq!(lint(&load("").expect("empty loads")), crate::Report::default());
}

// --- Loading --------------------------------------------------------------------------------

#[test]
fn load_reports_toml_errors_with_line_and_column() {
    let error =
        load("[[rollup]]\nid = \"UR1\"\ncells = []\ncolour = \"red\"\n").expect_err("unknown key");
    let LoadError::Toml { line, column, message } = &error else {
        panic!("expected a TOML error, got {error:?}");
    };
    assert_eq!((*line, *column), (4, 1));
    assert!(message.contains("unknown field `colour`"), "{message}");
    assert!(error.to_string().starts_with("rollups: malformed TOML: line 4, column 1: "));

    // A version written as a number is a type error: versions are strings.
    let error = load("[[rollup]]\nid = \"UR1\"\ncells = [{ component = \"A\", version = 5.1 }]\n")
        .expect_err("number");
    assert!(matches!(error, LoadError::Toml { line: 3, .. }), "{error:?}");

    let error = load("[[rollup]]\nid = \"UR1\"\n").expect_err("missing cells");
    assert!(error.to_string().contains("missing field `cells`"), "{error}");

    let long = "#".repeat(MATRIX_TEXT_MAX + 1);
    assert_eq!(load(&long), Err(LoadError::TextTooLong { len: MATRIX_TEXT_MAX + 1 }));
}

// --- Versions -------------------------------------------------------------------------------

#[test]
fn versions_parse_and_compare_numerically() {
    assert_eq!(version("5.1.3800.0").numbers(), [5, 1, 3800, 0]);
    assert_eq!(version("0").numbers(), [0]);
    assert!(version("9.9") < version("9.10"));
    assert!(version("5.1.3650.0") < version("5.1.3700.0"));
    assert!(version("2.0.9144.0") > version("2.0.9139.0"));
    assert!(version("1.2") < version("1.2.0.1"));
    assert_eq!(version("1.2"), version("1.2.0.0"));
    assert_eq!(version("1.2.0").to_string(), "1.2.0");
    assert_eq!(version("18446744073709551615").numbers(), [u64::MAX]);

    let expected = |text: &str| Version::parse(text).expect_err("malformed").expected;
    for text in
        ["5.1.3600 .0", "", ".", "1.", ".1", "1..2", "v1", "1.2-rc1", "+1", "-1", " 1", "1,2", "١"]
    {
        assert_eq!(expected(text), "expected dot-separated numbers", "{text:?}");
    }
    assert_eq!(expected("01.2"), "expected numbers without leading zeros");
    assert_eq!(expected("18446744073709551616"), "expected numbers below 2^64");
    assert_eq!(expected("1.2.3.4.5.6.7.8.9"), "expected at most 8 numbers");
    assert_eq!(expected(&"1".repeat(65)), "expected at most 64 bytes");
    assert_eq!(
        Version::parse("5.1.3600 .0").expect_err("malformed").to_string(),
        r#"malformed version "5.1.3600 .0" (expected dot-separated numbers)"#
    );
}

#[test]
fn availability_needs_one_offering_rollup() {
    let matrix = shipped();
    // target 0.3.0 is shipped by SR-0.5.0 and SR-0.6.0, neither marks it.
    assert!(matrix.available("target", &version("0.3.0"), "vmm-to-vmm"));
    assert!(!matrix.available("appliance-image", &version("0.2.0"), "vmm-to-vmm"));
    assert!(matrix.available("appliance-image", &version("0.2.0"), "vmware-physical-to-secondary"));
    // Not used there at all.
    assert!(!matrix.available("relay", &version("0.7.0"), "azure-to-azure"));
    assert!(matrix.revocation("agent", &version("0.4")).is_some());
    assert!(matrix.revocation("agent", &version("0.5")).is_none());
}
