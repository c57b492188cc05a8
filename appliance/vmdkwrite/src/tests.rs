use std::io::{self, Cursor, Seek, SeekFrom, Write};

use crate::testreader::parse;
use crate::{
    capacity_for, geometry, ovf_descriptor, write_monolithic_sparse, write_stream_optimized,
    xml_escape, Geometry, OvfProperty, OvfVm, ProductSection, ReadAt, VmdkOptions, VmdkWriteError,
    WriteReport, MAX_CAPACITY,
};

/// A disk of `len` bytes, zero except for `(offset, bytes)` patches; it declares exactly
/// the patches as its data and fails any read outside them.
#[derive(Debug)]
pub(crate) struct Patched {
    pub(crate) len: u64,
    pub(crate) patches: Vec<(u64, Vec<u8>)>,
}

impl ReadAt for Patched {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        assert!(end <= self.len, "read past the end");
        let mut touched = false;
        buf.fill(0);
        for (at, bytes) in &self.patches {
            let (s, e) = ((*at).max(offset), (at + bytes.len() as u64).min(end));
            if s < e {
                touched = true;
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&bytes[(s - at) as usize..(e - at) as usize]);
            }
        }
        assert!(touched, "read of {} bytes at {offset} outside every data range", buf.len());
        Ok(())
    }

    fn data_ranges(&self, offset: u64, len: u64) -> Vec<(u64, u64)> {
        let _ = (offset, len);
        // Deliberately unclipped: the writer must clip.
        self.patches.iter().map(|(at, b)| (*at, b.len() as u64)).collect()
    }
}

impl Patched {
    pub(crate) fn flat(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len as usize];
        for (at, b) in &self.patches {
            v[*at as usize..*at as usize + b.len()].copy_from_slice(b);
        }
        v
    }
}

/// A Write + Seek that keeps nothing but the length.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    pos: u64,
    pub(crate) len: u64,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pos += buf.len() as u64;
        self.len = self.len.max(self.pos);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Sink {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => p,
            _ => unreachable!("the writers seek absolutely"),
        };
        Ok(self.pos)
    }
}

pub(crate) fn sparse(src: &dyn ReadAt) -> (Vec<u8>, WriteReport) {
    let mut out = Cursor::new(Vec::new());
    let r = write_monolithic_sparse(src, &mut out, &VmdkOptions::default()).unwrap();
    (out.into_inner(), r)
}

pub(crate) fn stream(src: &dyn ReadAt) -> (Vec<u8>, WriteReport) {
    let mut out = Vec::new();
    let r = write_stream_optimized(src, &mut out, 6, &VmdkOptions::default()).unwrap();
    (out, r)
}

fn padded(mut v: Vec<u8>) -> Vec<u8> {
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn capacity_rounds_up_and_is_bounded() {
    assert_eq!(capacity_for(1).unwrap(), 512);
    assert_eq!(capacity_for(512).unwrap(), 512);
    assert_eq!(capacity_for(513).unwrap(), 1024);
    assert_eq!(capacity_for(MAX_CAPACITY).unwrap(), MAX_CAPACITY);
    assert_eq!(capacity_for(MAX_CAPACITY - 1).unwrap(), MAX_CAPACITY);
    assert!(matches!(capacity_for(0), Err(VmdkWriteError::Empty)));
    let err = capacity_for(MAX_CAPACITY + 1).unwrap_err();
    assert!(matches!(err, VmdkWriteError::TooLarge { .. }));
    assert!(err.to_string().contains("64 TiB"), "{err}");
}

#[test]
fn geometry_follows_vmware_scsi_rule() {
    let g = |c, h, s| Geometry { cylinders: c, heads: h, sectors: s };
    assert_eq!(geometry(1), g(1, 64, 32));
    assert_eq!(geometry(204_800), g(100, 64, 32)); // 100 MiB
    assert_eq!(geometry(2_097_152), g(512, 128, 32)); // 1 GiB
    assert_eq!(geometry(20_971_520), g(1305, 255, 63)); // 10 GiB, as vdiskmanager says
}

#[test]
fn sparse_header_and_descriptor() {
    let src = noise(1, 3000);
    let (file, report) = sparse(&src);
    assert_eq!(&file[0..4], b"KDMV");
    assert_eq!(u32::from_le_bytes(file[4..8].try_into().unwrap()), 1);
    assert_eq!(u64::from_le_bytes(file[12..20].try_into().unwrap()), 6); // sectors
    assert_eq!(u64::from_le_bytes(file[28..36].try_into().unwrap()), 1);
    assert_eq!(u64::from_le_bytes(file[36..44].try_into().unwrap()), 20);
    // 1 table: RGD at 21, RGT at 22..26, GD at 26, GT at 27..31, grains at 128.
    assert_eq!(u64::from_le_bytes(file[48..56].try_into().unwrap()), 21);
    assert_eq!(u64::from_le_bytes(file[56..64].try_into().unwrap()), 26);
    assert_eq!(u64::from_le_bytes(file[64..72].try_into().unwrap()), 128);
    let p = parse(&file);
    assert!(p.descriptor.contains("createType=\"monolithicSparse\"\n"));
    assert!(p.descriptor.contains("parentCID=ffffffff\n"));
    assert!(p.descriptor.contains("ddb.adapterType = \"lsilogic\"\n"));
    assert!(p.descriptor.contains("RW 6 SPARSE \"disk.vmdk\"\n"));
    assert_eq!(p.disk, padded(src));
    assert_eq!(report.capacity_bytes, 3072);
    assert_eq!((report.grains_total, report.grains_written, report.tables_written), (1, 1, 1));
    assert_eq!(report.file_bytes, file.len() as u64);
    assert_eq!(report.file_bytes, (128 + 128) * 512);
}

#[test]
fn stream_header_footer_and_descriptor() {
    let src = noise(2, 200_000);
    let (file, report) = stream(&src);
    assert_eq!(u32::from_le_bytes(file[4..8].try_into().unwrap()), 3);
    assert_eq!(u32::from_le_bytes(file[8..12].try_into().unwrap()), 0x30001);
    assert_eq!(u64::from_le_bytes(file[56..64].try_into().unwrap()), u64::MAX);
    let p = parse(&file);
    assert!(p.descriptor.contains("createType=\"streamOptimized\"\n"));
    assert_eq!(p.disk, padded(src));
    assert_eq!(p.allocated, 4);
    assert_eq!(report.file_bytes, file.len() as u64);
    assert_eq!((report.grains_written, report.tables_written), (4, 1));
}

#[test]
fn zero_source_allocates_nothing() {
    let src = vec![0u8; 5 << 20];
    let (file, r) = sparse(&src);
    assert_eq!((r.grains_written, r.tables_written), (0, 0));
    assert_eq!(r.file_bytes, file.len() as u64);
    assert_eq!(file.len(), 128 * 512, "metadata only");
    let p = parse(&file);
    assert_eq!((p.allocated, p.disk.len()), (0, 5 << 20));
    assert!(p.disk.iter().all(|&b| b == 0));
    let (file, r) = stream(&src);
    assert_eq!(r.grains_written, 0);
    let p = parse(&file);
    assert_eq!(p.allocated, 0);
}

#[test]
fn several_tables_with_an_empty_one_between() {
    // 70 MiB + 7 bytes: three tables, data in the first and the last only, and in the
    // last partial sector.
    let len = (70 << 20) + 7;
    let src = Patched {
        len,
        patches: vec![
            (0, noise(3, 10)),
            ((32 << 20) - 5, vec![0; 10]), // declared but zero: read, not allocated
            (65 << 20, noise(4, 100_000)),
            (len - 3, vec![7, 8, 9]),
        ],
    };
    for (file, r) in [sparse(&src), stream(&src)] {
        let p = parse(&file);
        assert_eq!(p.capacity_sectors, len.div_ceil(512));
        assert_eq!(p.disk, padded(src.flat()));
        assert_eq!(p.allocated, 1 + 2 + 1);
        assert_eq!((r.grains_total, r.grains_written, r.tables_written), (1121, 4, 2));
        assert_eq!(r.file_bytes, file.len() as u64);
    }
}

#[test]
fn data_ranges_outside_the_window_are_clipped() {
    #[derive(Debug)]
    struct Liar(Vec<u8>);
    impl ReadAt for Liar {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.0.read_at(buf, offset)
        }
        fn data_ranges(&self, offset: u64, _len: u64) -> Vec<(u64, u64)> {
            vec![(u64::MAX - 5, 100), (0, 0), (offset.saturating_sub(1 << 40), u64::MAX)]
        }
    }
    let src = Liar(noise(5, 100_000));
    let (file, _) = sparse(&src);
    assert_eq!(parse(&file).disk, padded(src.0.clone()));
}

#[test]
fn huge_sparse_disks_stay_small() {
    let src = Patched { len: MAX_CAPACITY, patches: vec![(MAX_CAPACITY - 4096, vec![1; 4096])] };
    let mut sink = Sink::default();
    let r = write_monolithic_sparse(&src, &mut sink, &VmdkOptions::default()).unwrap();
    assert_eq!((r.grains_total, r.grains_written, r.tables_written), (1 << 30, 1, 1));
    assert_eq!(r.bytes_read, 65536);
    // 2 × (8 MiB directory + 4 GiB of reserved tables) of metadata, then the one grain.
    assert_eq!(sink.len, r.file_bytes);
    assert!(sink.len > 8 << 30 && sink.len < (8 << 30) + (17 << 20), "{}", sink.len);

    let mut out = Vec::new();
    let r = write_stream_optimized(&src, &mut out, 1, &VmdkOptions::default()).unwrap();
    assert_eq!(r.grains_written, 1);
    assert!(out.len() < (8 << 20) + (1 << 20), "{}", out.len());

    let too_big = Patched { len: MAX_CAPACITY + 1, patches: vec![] };
    let e = write_monolithic_sparse(&too_big, &mut Sink::default(), &VmdkOptions::default());
    assert!(matches!(e, Err(VmdkWriteError::TooLarge { .. })));
    let e = write_stream_optimized(&too_big, &mut Vec::new(), 6, &VmdkOptions::default());
    assert!(matches!(e, Err(VmdkWriteError::TooLarge { .. })));
}

#[test]
fn a_source_without_data_ranges_has_every_grain_read() {
    /// Every grain non-zero; reads are not checked.
    #[derive(Debug)]
    struct Ones(u64);
    impl ReadAt for Ones {
        fn len(&self) -> u64 {
            self.0
        }
        fn read_at(&self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
            buf[0] = 1;
            Ok(())
        }
    }
    let r = write_monolithic_sparse(&Ones(1 << 20), &mut Sink::default(), &VmdkOptions::default());
    let r = r.unwrap();
    assert_eq!((r.grains_written, r.bytes_read), (16, 1 << 20));
    // The 32-bit limit on file offsets is reported, not wrapped.
    let e = VmdkWriteError::FileTooLarge { lba: 0, file_sector: 1 << 32 };
    assert!(e.to_string().contains("2 TiB"));
}

#[test]
fn bad_inputs_are_errors() {
    let src = vec![1u8; 10];
    let e = write_stream_optimized(&src, &mut Vec::new(), 10, &VmdkOptions::default());
    assert!(matches!(e, Err(VmdkWriteError::Level(10))));
    for bad in ["", "a/b.vmdk", "a\"b", "a\nb", &"x".repeat(256)] {
        let opts = VmdkOptions::named(bad);
        let e = write_monolithic_sparse(&src, &mut Cursor::new(Vec::new()), &opts);
        assert!(matches!(e, Err(VmdkWriteError::FileName { .. })), "{bad:?}");
        let e = write_stream_optimized(&src, &mut Vec::new(), 6, &opts);
        assert!(matches!(e, Err(VmdkWriteError::FileName { .. })), "{bad:?}");
    }
    let empty: Vec<u8> = Vec::new();
    let e = write_stream_optimized(&empty, &mut Vec::new(), 6, &VmdkOptions::default());
    assert!(matches!(e, Err(VmdkWriteError::Empty)));
}

#[test]
fn errors_of_the_source_and_the_output_come_back() {
    #[derive(Debug)]
    struct Broken;
    impl ReadAt for Broken {
        fn len(&self) -> u64 {
            1 << 20
        }
        fn read_at(&self, _buf: &mut [u8], _offset: u64) -> io::Result<()> {
            Err(io::Error::other("disk gone"))
        }
    }
    let e = write_stream_optimized(&Broken, &mut Vec::new(), 6, &VmdkOptions::default());
    assert!(matches!(e, Err(VmdkWriteError::Read { offset: 0, len: 65536, .. })), "{e:?}");

    struct Full(usize);
    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0 < buf.len() {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "full"));
            }
            self.0 -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let src = noise(6, 1 << 20);
    let e = write_stream_optimized(&src, &mut Full(100_000), 6, &VmdkOptions::default());
    assert!(matches!(e, Err(VmdkWriteError::Write(_))), "{e:?}");
}

#[test]
fn output_is_deterministic_and_cid_can_be_given() {
    let src = noise(7, 100_000);
    assert_eq!(sparse(&src).0, sparse(&src).0);
    assert_eq!(stream(&src).0, stream(&src).0);
    let opts = VmdkOptions { cid: Some(0x1234abcd), ..VmdkOptions::named("vm-1 disk.vmdk") };
    let mut out = Vec::new();
    write_stream_optimized(&src, &mut out, 9, &opts).unwrap();
    let p = parse(&out);
    assert!(p.descriptor.contains("CID=1234abcd\n"));
    assert!(p.descriptor.contains("RW 196 SPARSE \"vm-1 disk.vmdk\"\n"));
    assert_eq!(p.disk, padded(src));
}

#[test]
fn every_level_round_trips_incompressible_data() {
    let src = noise(8, 3 * 65536 + 100);
    for level in 0..=9 {
        let mut out = Vec::new();
        write_stream_optimized(&src, &mut out, level, &VmdkOptions::default()).unwrap();
        assert_eq!(parse(&out).disk, padded(src.clone()), "level {level}");
    }
}

#[test]
fn escaping() {
    assert_eq!(xml_escape("a&b<c>d\"e'f"), "a&amp;b&lt;c&gt;d&quot;e&apos;f");
    assert_eq!(xml_escape("tab\tnl\ncr\r"), "tab&#9;nl&#10;cr&#13;");
    assert_eq!(xml_escape("x\u{1}y\u{ffff}ü"), "x\u{fffd}y\u{fffd}ü");
}

/// A small well-formedness check: balanced tags, quoted attributes, known entities, one
/// root. Returns the element names in document order.
pub(crate) fn check_xml(x: &str) -> Vec<String> {
    fn check_text(t: &str) {
        let mut rest = t;
        while let Some(i) = rest.find('&') {
            let end = rest[i..].find(';').expect("unterminated reference") + i;
            let r = &rest[i + 1..end];
            let ok = matches!(r, "amp" | "lt" | "gt" | "quot" | "apos")
                || r.strip_prefix('#').is_some_and(|n| n.parse::<u32>().is_ok());
            assert!(ok, "bad reference &{r};");
            rest = &rest[end + 1..];
        }
        assert!(!t.contains('<'), "stray < in {t:?}");
    }
    let body = x.strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n").expect("prolog");
    let mut stack: Vec<String> = Vec::new();
    let mut names = Vec::new();
    let mut roots = 0;
    let mut rest = body;
    while let Some(open) = rest.find('<') {
        check_text(&rest[..open]);
        if stack.is_empty() {
            assert!(rest[..open].trim().is_empty(), "text outside the root");
        }
        let close = rest[open..].find('>').expect("unclosed tag") + open;
        let tag = &rest[open + 1..close];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
        } else {
            let self_closing = tag.ends_with('/');
            let tag = tag.trim_end_matches('/');
            let (name, mut attrs) = tag.split_once(' ').unwrap_or((tag, ""));
            assert!(!name.is_empty() && !name.contains(['"', '=']), "name {name:?}");
            let mut seen = Vec::new();
            loop {
                attrs = attrs.trim_start();
                if attrs.is_empty() {
                    break;
                }
                let (key, after) = attrs.split_once("=\"").expect("attribute without =\"");
                let end = after.find('"').expect("unterminated attribute");
                check_text(&after[..end]);
                assert!(!seen.contains(&key), "duplicate attribute {key}");
                seen.push(key);
                attrs = &after[end + 1..];
            }
            if stack.is_empty() {
                roots += 1;
            }
            names.push(name.to_string());
            if !self_closing {
                stack.push(name.to_string());
            }
        }
        rest = &rest[close + 1..];
    }
    assert!(rest.trim().is_empty() && stack.is_empty(), "unclosed {stack:?}");
    assert_eq!(roots, 1);
    names
}

#[test]
fn ovf_is_well_formed_and_complete() {
    let report = WriteReport {
        capacity_bytes: 17 << 20,
        grains_total: 272,
        grains_written: 3,
        tables_written: 1,
        bytes_read: 3 << 16,
        file_bytes: 123_456,
    };
    let mut vm = OvfVm::for_disk("web & db <prod> \"01\"", "web&db-disk1.vmdk", &report);
    vm.cpus = 4;
    vm.memory_mib = 8192;
    let x = ovf_descriptor(&vm);
    let names = check_xml(&x);
    for want in ["Envelope", "References", "File", "DiskSection", "Disk", "VirtualSystem", "System"]
    {
        assert!(names.iter().any(|n| n == want), "no {want}");
    }
    assert_eq!(names.iter().filter(|n| *n == "Item").count(), 4);
    assert!(
        x.contains(r#"<File ovf:href="web&amp;db-disk1.vmdk" ovf:id="file1" ovf:size="123456"/>"#)
    );
    assert!(x.contains(r#"ovf:capacity="17825792" ovf:capacityAllocationUnits="byte""#));
    assert!(x.contains(
        r#"ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized""#
    ));
    assert!(x.contains("<Name>web &amp; db &lt;prod&gt; &quot;01&quot;</Name>"));
    assert!(x.contains("<rasd:VirtualQuantity>4</rasd:VirtualQuantity>"));
    assert!(x.contains("<rasd:VirtualQuantity>8192</rasd:VirtualQuantity>"));
    assert!(x.contains("<rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>"));
    assert!(x.contains("<rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>"));
    assert!(x.contains("<rasd:Parent>3</rasd:Parent>"));
    assert!(x.contains("<vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>"));
    // UEFI, after the last Item: the appliance disk has only an EFI system partition.
    assert!(x.contains(" xmlns:vmw=\"http://www.vmware.com/schema/ovf\" "));
    assert!(x.contains(
        "      </Item>\n      <vmw:Config ovf:required=\"false\" vmw:key=\"firmware\" \
         vmw:value=\"efi\"/>\n    </VirtualHardwareSection>\n"
    ));
    // No properties, so no environment to transport.
    assert!(x.contains("    <VirtualHardwareSection>\n"));
    assert!(!x.contains("ovf:transport"));
}

#[test]
fn ovf_with_properties_transports_the_environment() {
    let report = WriteReport {
        capacity_bytes: 1 << 20,
        grains_total: 16,
        grains_written: 1,
        tables_written: 1,
        bytes_read: 1 << 16,
        file_bytes: 70_000,
    };
    let mut vm = OvfVm::for_disk("appliance", "appliance-disk1.vmdk", &report);
    vm.network = Some("VM Network".into());
    vm.product = Some(ProductSection {
        product: "siterelay".into(),
        version: "1.2.3".into(),
        properties: vec![OvfProperty {
            key: "siterelay.role".into(),
            kind: "string".into(),
            default: "relay".into(),
            label: "Role".into(),
            description: "relay or target".into(),
            password: false,
        }],
    });
    let x = ovf_descriptor(&vm);
    let names = check_xml(&x);
    assert_eq!(names.iter().filter(|n| *n == "VirtualHardwareSection").count(), 1);
    // CPU, memory, SCSI controller, disk, NIC, IDE controller, CD drive (for the `iso`
    // transport).
    assert_eq!(names.iter().filter(|n| *n == "Item").count(), 7);
    assert!(x.contains("<rasd:ResourceType>15</rasd:ResourceType>"), "no CD drive:\n{x}");
    assert_eq!(names.iter().filter(|n| *n == "vmw:Config").count(), 1);
    assert!(x.contains(
        "    </ProductSection>\n    \
         <VirtualHardwareSection ovf:transport=\"iso com.vmware.guestInfo\">\n"
    ));
    // The firmware setting follows the CD drive, the last Item.
    assert!(x.contains(
        "<rasd:ResourceType>15</rasd:ResourceType>\n      </Item>\n      <vmw:Config \
         ovf:required=\"false\" vmw:key=\"firmware\" vmw:value=\"efi\"/>\n    \
         </VirtualHardwareSection>\n"
    ));
}
