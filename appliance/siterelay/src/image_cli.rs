//! `siterelay image ova | verify-ova`: packs a disk image as an OVA (streamOptimized VMDK, an
//! OVF descriptor with the appliance's deployment properties, a SHA-256 manifest; descriptor
//! first) and checks one.

use std::path::Path;

use crate::args::Args;

pub(crate) fn run(rest: &[String]) -> Result<(), String> {
    let Some((sub, rest)) = rest.split_first() else {
        return Err("image: expected ova or verify-ova".into());
    };
    match sub.as_str() {
        "ova" => ova(rest),
        "verify-ova" => verify(rest),
        other => Err(format!("image: unknown subcommand {other:?} (expected ova, verify-ova)")),
    }
}

/// The properties a deployment sets (the OVF environment's keys).
fn properties() -> Vec<vmdkwrite::OvfProperty> {
    let property = |key: &str, default: &str, label: &str, description: &str, password: bool| {
        vmdkwrite::OvfProperty {
            key: key.into(),
            kind: "string".into(),
            default: default.into(),
            label: label.into(),
            description: description.into(),
            password,
        }
    };
    vec![
        property(
            "siterelay.role",
            "relay",
            "Role",
            "relay (process server) or target (recovery site)",
            false,
        ),
        property(
            "siterelay.listen",
            "",
            "Listen address",
            "IP:port the role listens on (empty: 0.0.0.0:7700 for a relay, 0.0.0.0:7800 for a \
             target)",
            false,
        ),
        property(
            "siterelay.target",
            "",
            "Recovery-site target",
            "IP:port of the target a relay forwards to",
            false,
        ),
        property(
            "siterelay.registration",
            "",
            "Registration passphrase",
            "Passphrase pairing the appliance with its peers",
            true,
        ),
    ]
}

fn ova(rest: &[String]) -> Result<(), String> {
    const SPEC: &[(&str, bool)] = &[
        ("disk", true),
        ("name", true),
        ("out", true),
        ("version", true),
        ("cpus", true),
        ("memory-mib", true),
        ("network", true),
    ];
    let args = Args::parse("image ova", rest, SPEC)?;
    let disk = args.value("disk").ok_or("image ova: --disk RAW-IMAGE is required")?;
    let out = args.value("out").ok_or("image ova: --out FILE.ova is required")?;
    let name = args.value("name").unwrap_or("siterelay");
    let source = std::fs::File::open(disk).map_err(|error| format!("{disk}: {error}"))?;
    let source = vmdkwrite::FileSource::new(source).map_err(|error| format!("{disk}: {error}"))?;
    let vmdk_name = format!("{name}-disk1.vmdk");
    let options = vmdkwrite::VmdkOptions { file_name: vmdk_name.clone(), ..Default::default() };
    let mut vmdk = Vec::new();
    let report = vmdkwrite::write_stream_optimized(&source, &mut vmdk, 9, &options)
        .map_err(|error| format!("{disk}: {error}"))?;
    let mut vm = vmdkwrite::OvfVm::for_disk(name, &vmdk_name, &report);
    vm.cpus = args.parsed("cpus")?.unwrap_or(2);
    vm.memory_mib = args.parsed("memory-mib")?.unwrap_or(1024);
    vm.network = Some(args.value("network").unwrap_or("VM Network").to_string());
    vm.product = Some(vmdkwrite::ProductSection {
        product: "siterelay".into(),
        version: args.value("version").unwrap_or(env!("CARGO_PKG_VERSION")).into(),
        properties: properties(),
    });
    let ovf = vmdkwrite::ovf_descriptor(&vm);
    let ovf_name = format!("{name}.ovf");
    let mf = vmdkwrite::ova::manifest(&[(&ovf_name, ovf.as_bytes()), (&vmdk_name, &vmdk)]);
    let mf_name = format!("{name}.mf");
    let partial = format!("{out}.partial");
    let mut file =
        std::fs::File::create(&partial).map_err(|error| format!("{partial}: {error}"))?;
    vmdkwrite::ova::write_ova(
        &mut file,
        &[(&ovf_name, ovf.as_bytes()), (&vmdk_name, &vmdk), (&mf_name, mf.as_bytes())],
    )
    .and_then(|()| file.sync_all())
    .map_err(|error| format!("{partial}: {error}"))?;
    std::fs::rename(&partial, out).map_err(|error| format!("{out}: {error}"))?;
    let size = std::fs::metadata(out).map_err(|error| format!("{out}: {error}"))?.len();
    println!(
        "{out}: {} MiB ({ovf_name}, {vmdk_name} of {} MiB virtual, {mf_name})",
        size >> 20,
        report.capacity_bytes >> 20
    );
    Ok(())
}

fn verify(rest: &[String]) -> Result<(), String> {
    let Some((path, rest)) = rest.split_first() else {
        return Err("image verify-ova: expected FILE.ova".into());
    };
    Args::parse("image verify-ova", rest, &[])?;
    let bytes = std::fs::read(Path::new(path)).map_err(|error| format!("{path}: {error}"))?;
    let members = vmdkwrite::ova::verify_ova(&bytes).map_err(|error| format!("{path}: {error}"))?;
    println!("{path}: verified ({})", members.join(", "));
    Ok(())
}
