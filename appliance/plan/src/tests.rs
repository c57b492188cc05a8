//! Unit tests: a valid plan, the run order, and every error with its exact message.

use crate::{parse, Action, Machine, Plan, PlanError, TIMEOUT_SECS_DEFAULT};

/// Three groups: databases, then apps, then web; actions of every kind.
const EXAMPLE: &str = r#"
name = "erp"
description = "ERP failover"

[[machine]]
name = "db1"
disks = ["db1-os", "db1-data"]

[[machine]]
name = "app1"
disks = ["app1-os"]

[[machine]]
name = "app2"
disks = ["app2-os"]

[[machine]]
name = "web1"
disks = ["web1-os"]

[[group]]
name = "web"
machines = ["web1"]
after = ["apps"]

[[group]]
name = "databases"
machines = ["db1"]
pre = [ { script = "/usr/local/bin/stop-app --now", timeout_secs = 300 }, { manual = "Confirm the DBA has stopped the batch jobs" } ]
post = [ { script = "/usr/local/bin/check-db" } ]

[[group]]
name = "apps"
machines = ["app1", "app2"]
after = ["databases"]
"#;

fn message(text: &str) -> String {
    match parse(text) {
        Ok(plan) => panic!("expected an error, got {plan:?}"),
        Err(error) => error.to_string(),
    }
}

fn order_names(plan: &Plan) -> Vec<&str> {
    plan.order().iter().map(|group| group.name.as_str()).collect()
}

/// One machine `mN` with disk `dN` per group; `groups` are (name, after) in file order.
fn plan_text(groups: &[(&str, &[&str])]) -> String {
    let mut text = String::from("name = \"p\"\n");
    for index in 0..groups.len() {
        text += &format!("[[machine]]\nname = \"m{index}\"\ndisks = [\"d{index}\"]\n");
    }
    for (index, (name, after)) in groups.iter().enumerate() {
        let after: Vec<String> = after.iter().map(|a| format!("{a:?}")).collect();
        text += &format!(
            "[[group]]\nname = {name:?}\nmachines = [\"m{index}\"]\nafter = [{}]\n",
            after.join(", ")
        );
    }
    text
}

/// The smallest valid plan with `group` replacing its single group's body (after `name`).
fn one_group(group_body: &str) -> String {
    format!(
        "name = \"p\"\n[[machine]]\nname = \"m\"\ndisks = [\"d\"]\n\
         [[group]]\nname = \"g\"\nmachines = [\"m\"]\n{group_body}\n"
    )
}

#[test]
fn example_parses_to_the_expected_plan() {
    let plan = parse(EXAMPLE).unwrap();
    assert_eq!(plan.name(), "erp");
    assert_eq!(plan.description(), Some("ERP failover"));
    assert_eq!(
        plan.machines()[0],
        Machine { name: "db1".into(), disks: vec!["db1-os".into(), "db1-data".into()] }
    );
    assert_eq!(plan.machines().len(), 4);
    let databases = &plan.groups()[1];
    assert_eq!(databases.name, "databases");
    assert_eq!(databases.machines, ["db1"]);
    assert!(databases.after.is_empty());
    assert_eq!(
        databases.pre,
        [
            Action::Script { command: "/usr/local/bin/stop-app --now".into(), timeout_secs: 300 },
            Action::Manual { text: "Confirm the DBA has stopped the batch jobs".into() },
        ]
    );
    assert_eq!(
        databases.post,
        [Action::Script {
            command: "/usr/local/bin/check-db".into(),
            timeout_secs: TIMEOUT_SECS_DEFAULT
        }]
    );
    assert_eq!(plan.groups()[2].machines, ["app1", "app2"]);
    assert_eq!(order_names(&plan), ["databases", "apps", "web"]);
}

#[test]
fn description_is_optional() {
    let plan = parse(&plan_text(&[("g", &[])])).unwrap();
    assert_eq!(plan.description(), None);
}

#[test]
fn order_without_after_is_file_order() {
    let plan = parse(&plan_text(&[("c", &[]), ("a", &[]), ("b", &[])])).unwrap();
    assert_eq!(order_names(&plan), ["c", "a", "b"]);
}

#[test]
fn order_of_a_diamond() {
    // top waits for left and right, which both wait for base; written top first.
    let text = plan_text(&[
        ("top", &["left", "right"]),
        ("right", &["base"]),
        ("left", &["base"]),
        ("base", &[]),
    ]);
    let plan = parse(&text).unwrap();
    // right is written before left, so it runs first once base is done.
    assert_eq!(order_names(&plan), ["base", "right", "left", "top"]);
}

#[test]
fn order_breaks_ties_by_file_order_as_groups_become_ready() {
    // x becomes ready only after a; b and c are ready from the start. After a finishes, the
    // ready groups are b, c and x, and x is written first.
    let text = plan_text(&[("x", &["a"]), ("a", &[]), ("b", &[]), ("c", &[])]);
    let plan = parse(&text).unwrap();
    assert_eq!(order_names(&plan), ["a", "x", "b", "c"]);
}

#[test]
fn check_disks_names_the_first_unknown_disk_and_its_machine() {
    let plan = parse(EXAMPLE).unwrap();
    assert_eq!(plan.check_disks(|_| true), Ok(()));
    let known = ["db1-os", "db1-data", "app1-os", "web1-os"];
    let error = plan.check_disks(|disk| known.contains(&disk)).unwrap_err();
    assert_eq!(error, PlanError::UnknownDisk { machine: "app2".into(), disk: "app2-os".into() });
    assert_eq!(
        error.to_string(),
        r#"plan: machine "app2" has disk "app2-os", which the target does not know"#
    );
    let known: &[&str] = &["db1-os"];
    let lookup: &dyn Fn(&str) -> bool = &|disk| known.contains(&disk);
    assert_eq!(
        plan.check_disks(lookup).unwrap_err().to_string(),
        r#"plan: machine "db1" has disk "db1-data", which the target does not know"#
    );
}

#[test]
fn text_too_long() {
    let text = format!("{}# {}\n", plan_text(&[("g", &[])]), "x".repeat(crate::PLAN_TEXT_MAX));
    assert_eq!(
        message(&text),
        format!("plan: text is {} bytes, more than the limit of 1048576", text.len())
    );
}

#[test]
fn malformed_toml_has_line_and_column() {
    assert_eq!(
        message("name = \"p\"\n[[machine]\n"),
        "plan: malformed TOML: line 2, column 10: invalid table header; expected `.`, `]]`"
    );
    assert_eq!(
        message(&one_group("colour = \"blue\"")),
        "plan: malformed TOML: line 8, column 1: unknown field `colour`, \
         expected one of `name`, `machines`, `after`, `pre`, `post`"
    );
    assert_eq!(
        message(&one_group("pre = [{ script = \"x\", retries = 3 }]")),
        "plan: malformed TOML: line 8, column 24: unknown field `retries`, \
         expected one of `script`, `manual`, `timeout_secs`"
    );
    assert_eq!(
        message("description = \"no name\"\n"),
        "plan: malformed TOML: line 1, column 1: missing field `name`"
    );
    assert_eq!(
        message("name = \"p\"\n[[machine]]\nname = \"m\"\ndisks = \"d\"\n"),
        "plan: malformed TOML: line 4, column 9: invalid type: string \"d\", expected a sequence"
    );
}

#[test]
fn bad_names() {
    assert_eq!(
        message("name = \"\"\n"),
        r#"plan: name "" is invalid: must be 1 to 64 characters long"#
    );
    assert_eq!(
        message("name = \"a/b\"\n"),
        r#"plan: name "a/b" is invalid: contains '/'; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"#
    );
    let long = "m".repeat(65);
    assert_eq!(
        message(&format!("name = \"p\"\n[[machine]]\nname = \"{long}\"\ndisks = [\"d\"]\n")),
        format!("plan: machine name \"{long}\" is invalid: must be 1 to 64 characters long")
    );
    assert_eq!(
        message(&plan_text(&[("..", &[])])),
        r#"plan: group name ".." is invalid: must not start with '.'"#
    );
    assert_eq!(
        message("name = \"p\"\n[[machine]]\nname = \"m\"\ndisks = [\"a\\nb\"]\n"),
        r#"plan: machine "m" has invalid disk name "a\nb": contains '\n'; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"#
    );
}

#[test]
fn description_too_long() {
    let text = format!("name = \"p\"\ndescription = \"{}\"\n", "x".repeat(4097));
    assert_eq!(message(&text), "plan: description is 4097 bytes, more than the limit of 4096");
}

#[test]
fn no_machines() {
    assert_eq!(
        message("name = \"p\"\n"),
        "plan: no machines declared; a plan must recover at least one machine"
    );
}

#[test]
fn too_many_machines_groups_disks_and_actions() {
    let mut text = String::from("name = \"p\"\n");
    for index in 0..257 {
        text += &format!("[[machine]]\nname = \"m{index}\"\ndisks = [\"d{index}\"]\n");
    }
    assert_eq!(message(&text), "plan: 257 machines, more than the limit of 256");

    let names: Vec<String> = (0..65).map(|index| format!("g{index}")).collect();
    let groups: Vec<(&str, &[&str])> = names.iter().map(|name| (name.as_str(), &[][..])).collect();
    assert_eq!(message(&plan_text(&groups)), "plan: 65 groups, more than the limit of 64");

    let disks: Vec<String> = (0..65).map(|index| format!("\"d{index}\"")).collect();
    let text = format!("name = \"p\"\n[[machine]]\nname = \"m\"\ndisks = [{}]\n", disks.join(","));
    assert_eq!(message(&text), r#"plan: machine "m" has 65 disks, more than the limit of 64"#);

    let actions = vec!["{ manual = \"ok\" }"; 33].join(", ");
    assert_eq!(
        message(&one_group(&format!("post = [{actions}]"))),
        r#"plan: group "g" has 33 post actions, more than the limit of 32"#
    );
    let actions = vec!["{ manual = \"ok\" }"; 32].join(", ");
    assert!(parse(&one_group(&format!("pre = [{actions}]\npost = [{actions}]"))).is_ok());
}

#[test]
fn machine_errors() {
    assert_eq!(
        message("name = \"p\"\n[[machine]]\nname = \"m\"\ndisks = []\n"),
        r#"plan: machine "m" has no disks"#
    );
    let text = "name = \"p\"\n[[machine]]\nname = \"db1\"\ndisks = [\"a\"]\n\
                [[machine]]\nname = \"db1\"\ndisks = [\"b\"]\n";
    assert_eq!(message(text), r#"plan: duplicate machine "db1""#);
    let text = "name = \"p\"\n[[machine]]\nname = \"m\"\ndisks = [\"d\", \"e\", \"d\"]\n";
    assert_eq!(message(text), r#"plan: machine "m" lists disk "d" twice"#);
    let text = "name = \"p\"\n[[machine]]\nname = \"m1\"\ndisks = [\"d\"]\n\
                [[machine]]\nname = \"m2\"\ndisks = [\"e\", \"d\"]\n";
    assert_eq!(message(text), r#"plan: disk "d" is in machines "m1" and "m2""#);
}

#[test]
fn group_errors() {
    assert_eq!(message(&plan_text(&[("g", &[]), ("g", &[])])), r#"plan: duplicate group "g""#);
    let text = "name = \"p\"\n[[machine]]\nname = \"m\"\ndisks = [\"d\"]\n\
                [[group]]\nname = \"g\"\nmachines = []\n";
    assert_eq!(message(text), r#"plan: group "g" has no machines"#);
    let text = "name = \"p\"\n[[machine]]\nname = \"m\"\ndisks = [\"d\"]\n\
                [[group]]\nname = \"app\"\nmachines = [\"m\", \"web9\"]\n";
    assert_eq!(message(text), r#"plan: group "app" lists unknown machine "web9""#);
    let text = "name = \"p\"\n[[machine]]\nname = \"m\"\ndisks = [\"d\"]\n\
                [[group]]\nname = \"g\"\nmachines = [\"m\", \"m\"]\n";
    assert_eq!(message(text), r#"plan: group "g" lists machine "m" twice"#);
    let text = "name = \"p\"\n[[machine]]\nname = \"db1\"\ndisks = [\"d\"]\n\
                [[group]]\nname = \"a\"\nmachines = [\"db1\"]\n\
                [[group]]\nname = \"b\"\nmachines = [\"db1\"]\n";
    assert_eq!(message(text), r#"plan: machine "db1" is in groups "a" and "b""#);
    let text = "name = \"p\"\n[[machine]]\nname = \"m\"\ndisks = [\"d\"]\n\
                [[machine]]\nname = \"X\"\ndisks = [\"e\"]\n\
                [[group]]\nname = \"g\"\nmachines = [\"m\"]\n";
    assert_eq!(message(text), r#"plan: machine "X" is declared but in no group"#);
    // A plan with machines but no groups at all skips every machine.
    assert_eq!(
        message("name = \"p\"\n[[machine]]\nname = \"m\"\ndisks = [\"d\"]\n"),
        r#"plan: machine "m" is declared but in no group"#
    );
}

#[test]
fn after_errors() {
    assert_eq!(
        message(&plan_text(&[("a", &[]), ("x", &["a", "y"])])),
        r#"plan: group "x" is after unknown group "y""#
    );
    assert_eq!(
        message(&plan_text(&[("a", &[]), ("x", &["a", "a"])])),
        r#"plan: group "x" lists group "a" twice in after"#
    );
}

#[test]
fn cycles_are_listed_in_order() {
    assert_eq!(
        message(&plan_text(&[("app", &["db"]), ("db", &["app"])])),
        "plan: groups form a cycle: app -> db -> app"
    );
    assert_eq!(message(&plan_text(&[("s", &["s"])])), "plan: groups form a cycle: s -> s");
    // The cycle b -> c -> d -> b, found from a (which waits for it), starts at its
    // first-written group; e is not part of any cycle.
    let text =
        plan_text(&[("a", &["c"]), ("e", &[]), ("b", &["c"]), ("c", &["d", "e"]), ("d", &["b"])]);
    assert_eq!(
        parse(&text).unwrap_err(),
        PlanError::Cycle { groups: vec!["b".into(), "c".into(), "d".into(), "b".into()] }
    );
    assert_eq!(message(&text), "plan: groups form a cycle: b -> c -> d -> b");
}

#[test]
fn action_needs_exactly_one_kind() {
    assert_eq!(
        message(&one_group("pre = [{ manual = \"ok\" }, { script = \"s\", manual = \"m\" }]")),
        r#"plan: action in group "g" pre #2 needs exactly one of script or manual"#
    );
    assert_eq!(
        message(&one_group("post = [{ timeout_secs = 5 }]")),
        r#"plan: action in group "g" post #1 needs exactly one of script or manual"#
    );
    assert_eq!(
        message(&one_group("post = [{}]")),
        r#"plan: action in group "g" post #1 needs exactly one of script or manual"#
    );
}

#[test]
fn action_text_errors() {
    assert_eq!(
        message(&one_group("pre = [{ script = \"\" }]")),
        r#"plan: action in group "g" pre #1 has an empty script"#
    );
    assert_eq!(
        message(&one_group("pre = [{ manual = \" \\n\" }]")),
        r#"plan: action in group "g" pre #1 has an empty manual text"#
    );
    let long = "x".repeat(4097);
    assert_eq!(
        message(&one_group(&format!("post = [{{ script = \"{long}\" }}]"))),
        r#"plan: action in group "g" post #1 has a script of 4097 bytes, more than the limit of 4096"#
    );
    assert_eq!(
        message(&one_group(&format!("post = [{{ manual = \"{long}\" }}]"))),
        r#"plan: action in group "g" post #1 has a manual text of 4097 bytes, more than the limit of 4096"#
    );
    let most = "x".repeat(4096);
    assert!(parse(&one_group(&format!("post = [{{ script = \"{most}\" }}]"))).is_ok());
    assert_eq!(
        message(&one_group("pre = [{ script = \"a\\u0000b\" }]")),
        r#"plan: action in group "g" pre #1 has a script containing a NUL byte"#
    );
}

#[test]
fn timeout_errors() {
    for value in ["0", "-1", "86401"] {
        assert_eq!(
            message(&one_group(&format!("pre = [{{ script = \"s\", timeout_secs = {value} }}]"))),
            format!(
                "plan: action in group \"g\" pre #1 has timeout_secs = {value}; \
                 it must be 1 to 86400"
            )
        );
    }
    let plan = parse(&one_group(
        "pre = [{ script = \"s\", timeout_secs = 86400 }, { script = \"t\", timeout_secs = 1 }]",
    ))
    .unwrap();
    assert_eq!(
        plan.groups()[0].pre,
        [
            Action::Script { command: "s".into(), timeout_secs: 86_400 },
            Action::Script { command: "t".into(), timeout_secs: 1 },
        ]
    );
    assert_eq!(
        message(&one_group("post = [{ manual = \"m\", timeout_secs = 60 }]")),
        r#"plan: action in group "g" post #1 is manual; timeout_secs applies only to scripts"#
    );
}

#[test]
fn line_column_is_total() {
    use crate::parse::line_column;
    assert_eq!(line_column("", 5), (1, 1));
    assert_eq!(line_column("ab\ncd", 4), (2, 2));
    assert_eq!(line_column("é\né", 4), (2, 2));
    assert_eq!(line_column("é", 1), (1, 2));
}
