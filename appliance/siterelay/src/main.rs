//! `siterelay`: one binary for every role and tool of the appliance (design.md §1, §8).

mod appliance_cli;
mod args;
mod bundle_cli;
mod image_cli;
mod logger;
mod nbd_client;
mod operate;
mod plan_run;
mod quickstart;
mod roles;
mod security;
mod security_cli;
mod signals;
mod status;
mod update_cli;
mod vmdk_cli;

use std::process::ExitCode;

const USAGE: &str = "\
siterelay — disaster-recovery replication appliance

usage:
  siterelay quickstart [--dir DIR] [--size BYTES]
      Protect a sample disk end to end on loopback (all roles in one process) and verify it.
  siterelay target --listen ADDR --data-dir DIR [--config FILE]
      Recovery-site role: journal and replica disks (DIR/replicas/NAME.img).
  siterelay relay --listen ADDR --target ADDR --cache-dir DIR [--config FILE]
      Process server: durable cache, compression, forwarding to the target.
  siterelay agent --relay ADDR --disk NAME=PATH [--disk ...] [--state-dir DIR] [--once]
                  [--reconnect-timeout SECS] [--config FILE]
      Protect raw images or block devices: full sync first, checksum resync afterwards.
  siterelay agent snapshot-sync --relay ADDR --disk NAME=vmdk:PATH [--state-dir DIR]
      VMware sources: after `agent --once --disk NAME=vmdk:PATH`, send only the grains each
      new snapshot link holds (PATH = the newest link), then a consistency point.
  siterelay status --connect ADDR [--json]
      Per-disk state, backlog and cache use of a relay or target.
  siterelay points list --connect TARGET [--disk NAME] [--json]
      The recovery points a target keeps for each disk (id, time, kind).
  siterelay failover test --connect TARGET --disk NAME [--point ID|latest|latest-app|latest-group]
                          --nbd-listen ADDR|SOCKET [--json]
      Export a point read-write over NBD (copy-on-write: the replica stays untouched).
  siterelay failover materialize --connect TARGET --disk NAME [--point P] --output FILE
                                 [--format raw|qcow2|vmdk|vmdk-stream] [--wait] [--json]
      Copy a point out to a new raw, qcow2 or VMDK file (vmdk-stream adds an OVF).
  siterelay failover unplanned --connect TARGET --disk NAME [--point P] --nbd-listen ADDR|SOCKET
      Fail a disk over: replication to it stops, the point is served read-write over NBD.
  siterelay failover planned --connect TARGET --relay RELAY --disk NAME --nbd-listen ADDR|SOCKET
                             [--drain-timeout SECS]
      After the workload and then its agent were stopped: wait until the relay delivered
      everything, fail over to the final point (zero data loss) or refuse saying why.
  siterelay failover change-point --connect TARGET --disk NAME --point P
  siterelay failover commit --connect TARGET --disk NAME
      Before commit, serve another point instead; commit makes the point the disk.
  siterelay failover release --connect TARGET --disk NAME
      Stop serving a committed disk so an agent can protect it back (reprotect).
  siterelay target adopt --data-dir DIR --disk NAME --image PATH
      Make an existing image (the original source) the replica of NAME, for a failback.
  siterelay failover jobs --connect TARGET [--json]
  siterelay failover cleanup --connect TARGET --job ID
      List jobs; stop a test failover and discard its writes.
  siterelay plan check PLAN.toml [--connect TARGET]
  siterelay plan run PLAN.toml --connect TARGET --run-dir DIR
                     (--test | --unplanned | --planned --relay RELAY) [--point P]
  siterelay plan continue --run-dir DIR
  siterelay plan cleanup --run-dir DIR
      Recovery plans (docs/PLANS.md): groups of machines in order, scripts, manual steps.
  siterelay update lint [FILE]
      Check a rollup matrix (default: the built-in config/rollups.toml).
  siterelay update plan --component C --from V [--to V] [--scenario S] [--matrix FILE]
      The shortest supported upgrade path under the N-4 rule (--help explains it).
  siterelay update init --root FILE --component C=V ... [--state-dir DIR]
  siterelay update apply BUNDLE-DIR [--state-dir DIR]
  siterelay update boot [--state-dir DIR]
  siterelay update status [--bundle DIR] [--state-dir DIR]
      Signed bundles installed A/B: apply writes the inactive slot, boot tries it once and
      keeps it only if it passes its health check, else goes back by itself.
  siterelay bundle keygen --out FILE
  siterelay bundle root --keys K,... --threshold N --version V --out FILE.root.json [--previous-keys K,...]
  siterelay bundle create --out DIR --rollup ID --bundle-version N --component C=V ... --payload FILE ... --sign K ...
  siterelay bundle verify DIR --root FILE [--installed C=V ...] [--installed-bundle-version N]
      Release tooling for signed update bundles (docs/BUNDLES.md).
  siterelay vmdk formats | info FILE | convert FILE OUT.raw
      The VMDK create types and features supported; a chain's links; its view as raw.
  siterelay image ova --disk RAW --out FILE.ova [--name N] [--version V] [--cpus N] [--memory-mib M]
  siterelay image verify-ova FILE.ova
      Pack a disk image as an OVA (streamOptimized VMDK, OVF with deployment properties,
      SHA-256 manifest, descriptor first); check one (order, hashes, sizes).
  siterelay appliance run --config FILE | ready --config FILE | ovf-config --env XML --out FILE
      What the appliance image runs: the configured role (maintenance with the error in
      `status` when the file is invalid), the wait for it, the first boot's OVF properties.
  siterelay hwtest [--config FILE] [--cache-dir DIR] [--disks N] [--json]
      Hardware qualification: io_uring, O_DIRECT, size and write rate of the cache disk,
      cores and memory for N disks, clock synchronisation (pass / warn / fail each).
  siterelay register --new-passphrase [--ttl SECS] [--pki-dir DIR]
  siterelay register --connect ADDR --passphrase P [--name N] [--role agent|relay] [--pki-dir DIR]
  siterelay certs list [--json] | revoke NAME|SERIAL | init --kind relay|target [--pki-dir DIR]
      Mutual TLS (docs/SECURITY.md): one-time passphrases, the registry of issued
      certificates, revocation. Operator commands take --pki-dir DIR for the admin credential
      (and --relay-pki-dir DIR for the --relay of a planned failover).
  siterelay config check FILE
      Validate a configuration file (unknown keys and bad values with line and column).
  siterelay --version | --help
";

/// `siterelay hwtest [--config FILE] [--cache-dir DIR] [--disks N] [--json]`: the hardware
/// qualification checks against the configured relay cache; fails if any check fails.
fn hardware_checks(rest: &[String]) -> Result<(), String> {
    let args = args::Args::parse(
        "hwtest",
        rest,
        &[("config", true), ("cache-dir", true), ("disks", true), ("json", false)],
    )?;
    let config = roles::load_config(&args)?;
    let load = hwtest::Load {
        cache_dir: args
            .value("cache-dir")
            .map_or_else(|| config.relay.cache_dir.clone(), std::path::PathBuf::from),
        cache_bytes_max: config.relay.cache_bytes_max,
        disks: args.parsed("disks")?.unwrap_or(16),
        write_test_bytes: 64 << 20,
    };
    let checks = hwtest::run(&load);
    if args.flag("json") {
        println!("{}", hwtest::to_json(&checks));
    } else {
        for check in &checks {
            println!(
                "{:<15} {:<4}  {}",
                check.name,
                check.outcome.as_str(),
                check.outcome.detail()
            );
        }
    }
    let failed =
        checks.iter().filter(|check| matches!(check.outcome, hwtest::Outcome::Fail(_))).count();
    if failed > 0 {
        return Err(format!("{failed} hardware check(s) failed"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let operator = matches!(command.as_str(), "status" | "points" | "failover" | "plan");
    let rest = if operator {
        match security::take_operator_pki_dir(rest) {
            Ok(rest) => rest,
            Err(message) => {
                eprintln!("siterelay: {message}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        rest.to_vec()
    };
    let rest = &rest[..];
    let result = match command.as_str() {
        "quickstart" => quickstart::run(rest),
        "target" => roles::target(rest),
        "relay" => roles::relay(rest),
        "agent" => roles::agent(rest),
        "status" => status::run(rest),
        "points" => operate::points(rest),
        "failover" => operate::failover(rest),
        "plan" => plan_run::run(rest),
        "update" => update_cli::run(rest),
        "bundle" => bundle_cli::run(rest),
        "hwtest" => hardware_checks(rest),
        "vmdk" => vmdk_cli::run(rest),
        "image" => image_cli::run(rest),
        "appliance" => appliance_cli::run(rest),
        "config" => roles::config(rest),
        "register" => security_cli::register(rest),
        "certs" => security_cli::certs(rest),
        "--version" | "version" => {
            println!("siterelay {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        "--help" | "-h" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("siterelay: {message}");
            ExitCode::FAILURE
        }
    }
}
