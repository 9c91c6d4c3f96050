//! Building `dataplane-ebpf` for bpfel-unknown-none, and checking that the
//! object is what the loader expects.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSymbol};

use crate::{paths, run::checked, toolchain};

const PROGRAMS: [&str; 4] = ["from_pod", "to_eni", "from_eni", "to_pod"];

/// Builds the kernel object; returns its path.
pub fn build(release: bool) -> Result<PathBuf> {
    let linker_dir = toolchain::ensure()?;
    let crate_dir = paths::workspace_root().join("dataplane-ebpf");
    let target_dir = ebpf_build::target_dir(&paths::target_dir());
    checked(&mut ebpf_build::command(
        &crate_dir,
        &target_dir,
        &linker_dir,
        release,
    ))
    .context("building dataplane-ebpf")?;
    let obj = ebpf_build::object_path(&target_dir, release);
    verify(&obj)?;
    Ok(obj)
}

/// The object must carry BTF and the four programs.
fn verify(obj: &PathBuf) -> Result<()> {
    let data = std::fs::read(obj).with_context(|| format!("reading {}", obj.display()))?;
    let file = object::File::parse(&*data).with_context(|| format!("parsing {}", obj.display()))?;
    for section in [".BTF", ".BTF.ext", ".maps"] {
        if file.section_by_name(section).is_none() {
            bail!("{}: no {section} section", obj.display());
        }
    }
    let symbols: Vec<String> = file
        .symbols()
        .filter_map(|s| s.name().ok().map(str::to_string))
        .collect();
    for prog in PROGRAMS {
        if !symbols.iter().any(|s| s == prog) {
            bail!("{}: program {prog} missing", obj.display());
        }
    }
    Ok(())
}
