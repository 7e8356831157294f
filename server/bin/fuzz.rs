//! libFuzzer's entry: runs the target `BOOTPLANE_FUZZ_TARGET` names (`testkit::fuzz::TARGETS`).
//! `scripts/fuzz` builds it with coverage instrumentation and runs a campaign per target.

#![no_main]

use std::sync::OnceLock;

fn chosen() -> fn(&[u8]) -> bool {
    static TARGET: OnceLock<fn(&[u8]) -> bool> = OnceLock::new();
    *TARGET.get_or_init(|| {
        let name = std::env::var("BOOTPLANE_FUZZ_TARGET").unwrap_or_default();
        match bootplane::testkit::fuzz::target(&name) {
            Some(target) => target,
            None => {
                let names: Vec<&str> = bootplane::testkit::fuzz::TARGETS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect();
                eprintln!(
                    "bootplane-fuzz: set BOOTPLANE_FUZZ_TARGET to one of {}",
                    names.join(", ")
                );
                std::process::exit(2);
            }
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    chosen()(data);
});
