//! Embeds the kernel object when `TRUNKLINE_EBPF_OBJECT` names one at build
//! time (`cargo xtask build`/`test`/`demo` set it), so `trunkline-agent run`
//! needs no `--ebpf-object`. A plain `cargo build` embeds nothing and the
//! agent then asks for `--ebpf-object`.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(trunkline_embedded_object)");
    println!("cargo:rerun-if-env-changed=TRUNKLINE_EBPF_OBJECT");
    let Some(src) = std::env::var_os("TRUNKLINE_EBPF_OBJECT") else {
        return;
    };
    let src = PathBuf::from(src);
    assert!(
        src.is_file(),
        "TRUNKLINE_EBPF_OBJECT={} is not a file (cargo xtask build-ebpf --release prints the path)",
        src.display()
    );
    println!("cargo:rerun-if-changed={}", src.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::copy(&src, out.join("trunkline-ebpf.o"))
        .expect("copying the eBPF object into OUT_DIR");
    println!("cargo:rustc-cfg=trunkline_embedded_object");
}
