//! The OVF environment a hypervisor hands the appliance at first boot, and the configuration
//! made from it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(properties) = vmdkwrite::ovfenv::properties(text) {
        let _ = vmdkwrite::ovfenv::config_toml(&properties);
    }
});
