//! A minimal OVF 1.0 descriptor for one VM with one streamOptimized disk.

use crate::WriteReport;

/// The `ovf:format` of a streamOptimized VMDK.
pub const STREAM_OPTIMIZED_FORMAT_URI: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

/// How the hypervisor hands the OVF environment to the guest: as `ovf-env.xml` on an ISO
/// in the CD-ROM drive, and in the VMware Tools property `guestinfo.ovfEnv`. Both, so the
/// guest finds it whether or not it reads guestinfo.
const OVF_ENV_TRANSPORT: &str = " ovf:transport=\"iso com.vmware.guestInfo\"";
/// An IDE controller and an empty CD drive on it, for the OVF environment's ISO.
const CD_DRIVE_ITEMS: &str = "      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>IDE Controller</rasd:Description>
        <rasd:ElementName>IDE controller 0</rasd:ElementName>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:ResourceType>5</rasd:ResourceType>
      </Item>
      <Item ovf:required=\"false\">
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:ElementName>CD/DVD drive 1</rasd:ElementName>
        <rasd:InstanceID>7</rasd:InstanceID>
        <rasd:Parent>6</rasd:Parent>
        <rasd:ResourceType>15</rasd:ResourceType>
      </Item>
";

/// The VM an OVF descriptor describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfVm {
    /// The VM's name (`VirtualSystem/@ovf:id`, `Name`, the system identifier).
    pub name: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// The VMDK's file name, as it will sit next to the `.ovf` (or in the `.ova`).
    pub disk_file_name: String,
    /// The VMDK file's size in bytes ([`WriteReport::file_bytes`]).
    pub disk_file_bytes: u64,
    /// The disk's virtual size in bytes ([`WriteReport::capacity_bytes`]).
    pub capacity_bytes: u64,
    /// The virtual hardware family, `vmx-NN` (13 = ESXi 6.5 and later).
    pub hardware_version: u32,
    /// A network the VM's one NIC (vmxnet3) connects to; none without it.
    pub network: Option<String>,
    /// Product name, version and the properties a deployment fills in (OVF environment).
    pub product: Option<ProductSection>,
}

/// `ProductSection`: what the appliance is, and the properties asked at deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductSection {
    pub product: String,
    pub version: String,
    pub properties: Vec<OvfProperty>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfProperty {
    pub key: String,
    /// `string`, `boolean`, `uint16`, …
    pub kind: String,
    pub default: String,
    pub label: String,
    pub description: String,
    /// A secret: the deploying tool masks it (`ovf:password`).
    pub password: bool,
}

impl OvfVm {
    /// A VM named `name` with 1 CPU, 1024 MiB and hardware version 13, whose disk is the
    /// file `disk_file_name` that `report` describes.
    pub fn for_disk(name: &str, disk_file_name: &str, report: &WriteReport) -> Self {
        OvfVm {
            name: name.to_string(),
            cpus: 1,
            memory_mib: 1024,
            disk_file_name: disk_file_name.to_string(),
            disk_file_bytes: report.file_bytes,
            capacity_bytes: report.capacity_bytes,
            hardware_version: 13,
            network: None,
            product: None,
        }
    }
}

/// `text` made safe for XML 1.0 character data and attribute values: `& < > " '` become
/// entity references, tab, newline and carriage return become character references (so
/// attribute values keep them), and characters XML 1.0 forbids (other C0 controls,
/// U+FFFE, U+FFFF) become U+FFFD.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The OVF 1.0 descriptor (`.ovf`) of `vm`: `References` to the VMDK with its size, a
/// `DiskSection` with the capacity in bytes and the streamOptimized format, and a
/// `VirtualSystem` with an "other (64-bit)" guest OS (CIM id 102, `otherGuest64`), the
/// CPUs, the memory, an LSI Logic SCSI controller and the disk on it (unit 0). The `rasd:`
/// elements are in the schema's (alphabetical) order, which strict importers check. No
/// network: a recovered VM gets its NICs where it lands. Names and the file name are
/// escaped with [`xml_escape`].
///
/// The hardware asks for UEFI firmware (`vmw:Config firmware=efi`, not required so that
/// other importers may skip it): the appliance disk has only an EFI system partition, so
/// BIOS firmware would find nothing to boot. With a [`ProductSection`], the hardware
/// section names the OVF environment transports (`iso com.vmware.guestInfo`): without
/// them the hypervisor asks for the properties at deployment but never hands them to the
/// guest ([`crate::ovfenv`] reads them there).
pub fn ovf_descriptor(vm: &OvfVm) -> String {
    let name = xml_escape(&vm.name);
    let href = xml_escape(&vm.disk_file_name);
    let (network_section, nic) = match &vm.network {
        Some(network) => {
            let network = xml_escape(network);
            (
                format!(
                    "  <NetworkSection>\n    <Info>The networks the appliance uses</Info>\n    \
                     <Network ovf:name=\"{network}\">\n      <Description>The appliance's \
                     network</Description>\n    </Network>\n  </NetworkSection>\n"
                ),
                format!(
                    "      <Item>\n        <rasd:AddressOnParent>7</rasd:AddressOnParent>\n        \
                     <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>\n        \
                     <rasd:Connection>{network}</rasd:Connection>\n        \
                     <rasd:ElementName>Network adapter 1</rasd:ElementName>\n        \
                     <rasd:InstanceID>5</rasd:InstanceID>\n        \
                     <rasd:ResourceSubType>vmxnet3</rasd:ResourceSubType>\n        \
                     <rasd:ResourceType>10</rasd:ResourceType>\n      </Item>\n"
                ),
            )
        }
        None => (String::new(), String::new()),
    };
    let product_section = vm.product.as_ref().map_or_else(String::new, product_xml);
    let transport = if vm.product.is_some() { OVF_ENV_TRANSPORT } else { "" };
    // The `iso` transport needs a CD drive to put the environment's ISO in.
    let cd_drive = if vm.product.is_some() { CD_DRIVE_ITEMS } else { "" };
    let descriptor = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{href}" ovf:id="file1" ovf:size="{file_bytes}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="{format}"/>
  </DiskSection>
{network_section}  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="102" vmw:osType="otherGuest64">
      <Info>The kind of installed guest operating system</Info>
      <Description>Other 64-bit</Description>
    </OperatingSystemSection>
{product_section}    <VirtualHardwareSection{transport}>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-{hw:02}</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{memory}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{memory}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
{nic}{cd_drive}      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#,
        file_bytes = vm.disk_file_bytes,
        capacity = vm.capacity_bytes,
        format = STREAM_OPTIMIZED_FORMAT_URI,
        hw = vm.hardware_version,
        cpus = vm.cpus,
        memory = vm.memory_mib,
    );
    descriptor
}

fn product_xml(product: &ProductSection) -> String {
    let mut out = format!(
        "    <ProductSection ovf:required=\"false\">\n      <Info>The appliance and its \
         deployment properties</Info>\n      <Product>{}</Product>\n      \
         <Version>{}</Version>\n",
        xml_escape(&product.product),
        xml_escape(&product.version)
    );
    for property in &product.properties {
        out += &format!(
            "      <Property ovf:key=\"{}\" ovf:type=\"{}\" ovf:userConfigurable=\"true\" \
             ovf:value=\"{}\"{}>\n        <Label>{}</Label>\n        \
             <Description>{}</Description>\n      </Property>\n",
            xml_escape(&property.key),
            xml_escape(&property.kind),
            xml_escape(&property.default),
            if property.password { " ovf:password=\"true\"" } else { "" },
            xml_escape(&property.label),
            xml_escape(&property.description)
        );
    }
    out + "    </ProductSection>\n"
}
