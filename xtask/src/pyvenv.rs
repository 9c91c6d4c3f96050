//! The Python venv with moto (a local EC2 API) that the AWS tests run
//! against. Created once per machine under the tool cache; later runs only
//! check a stamp, so it costs nothing when present.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::{paths, run::checked};

/// The version verified against aws-sdk-ec2 (see the toolchain notes).
const MOTO: &str = "moto[server]==5.2.5";
/// The tests find the venv through this.
pub const VENV_ENV: &str = "TRUNKLINE_MOTO_VENV";

fn venv_dir() -> PathBuf {
    paths::tools_dir().join("venv")
}

/// Returns the venv's directory, creating it and installing moto if needed.
pub fn ensure_moto() -> Result<PathBuf> {
    let venv = venv_dir();
    let stamp = venv.join(".trunkline-moto");
    let server = venv.join("bin").join("moto_server");
    if server.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(MOTO) {
        return Ok(venv);
    }
    eprintln!("xtask: installing {MOTO} into {}", venv.display());
    let python = venv.join("bin").join("python3");
    if !python.exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("running python3 -m venv (is python3 installed?)")?;
        if !made.success() {
            // Debian ships ensurepip separately.
            let _ = std::fs::remove_dir_all(&venv);
            checked(Command::new("apt-get").args(["update", "-qq"]))?;
            checked(
                Command::new("apt-get")
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .args([
                        "install",
                        "-y",
                        "-qq",
                        "--no-install-recommends",
                        "python3-venv",
                    ]),
            )?;
            checked(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
    }
    checked(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        MOTO,
    ]))?;
    if !server.exists() {
        bail!("{} missing after installing {MOTO}", server.display());
    }
    std::fs::write(&stamp, MOTO).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(venv)
}
