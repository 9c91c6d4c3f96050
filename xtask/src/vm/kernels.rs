//! The kernel matrix: Debian's builds of the kernels EKS node images run,
//! fetched by package name through a private apt setup (its own sources
//! list, lists and cache under `~/.cache/trunkline/kernels/apt`, so the
//! machine's apt configuration is never touched), and unpacked once.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{paths, run::checked};

/// One kernel line of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLine {
    /// What `--kernel` takes.
    pub name: &'static str,
    /// The Debian suite that carries it.
    pub suite: &'static str,
    /// Package names are `<prefix><number><suffix>`.
    prefix: &'static str,
    suffix: &'static str,
    /// For a kernel below the floor: what the agent's refusal must say.
    pub refusal: Option<&'static str>,
    /// Which EKS node images run this line (README's table).
    pub eks: &'static str,
}

pub const LINES: &[KernelLine] = &[
    KernelLine {
        name: "6.12",
        suite: "trixie",
        prefix: "linux-image-6.12.",
        suffix: "+deb13-amd64-unsigned",
        refusal: None,
        eks: "Amazon Linux 2023 (6.12 kernel), Bottlerocket 1.3x+",
    },
    KernelLine {
        name: "6.1",
        suite: "bookworm",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64-unsigned",
        refusal: None,
        eks: "Amazon Linux 2023 (default), Bottlerocket (6.1 variants)",
    },
    KernelLine {
        name: "5.10",
        suite: "bullseye",
        prefix: "linux-image-5.10.0-",
        suffix: "-amd64-unsigned",
        refusal: Some("lacks bpf_ktime_get_coarse_ns (Linux 5.11); trunkline needs Linux >= 6.1"),
        eks: "Amazon Linux 2 (unsupported: refused at start)",
    },
];

pub fn line(name: &str) -> Option<&'static KernelLine> {
    LINES.iter().find(|l| l.name == name)
}

/// An unpacked kernel package.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// The package's name (`linux-image-6.1.0-57-amd64-unsigned`).
    pub package: String,
    /// Where it is unpacked: `boot/vmlinuz-*`, `lib/modules/<release>/`.
    pub dir: PathBuf,
    /// `uname -r` of the guest.
    pub release: String,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }
}

fn cache_dir() -> PathBuf {
    paths::tools_dir().join("kernels")
}

const READY: &str = ".ready";

/// The release a package name carries (`linux-image-<release>-unsigned`).
fn release_of(package: &str) -> Option<String> {
    package
        .strip_prefix("linux-image-")?
        .strip_suffix("-unsigned")
        .map(str::to_string)
}

/// Orders package names by their version numbers (`6.1.0-9` < `6.1.0-57`).
fn version_key(package: &str) -> Vec<u64> {
    package
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn matches(line: &KernelLine, package: &str) -> bool {
    package
        .strip_prefix(line.prefix)
        .and_then(|rest| rest.strip_suffix(line.suffix))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The newest kernel of `line` already unpacked here, if any.
fn cached(line: &'static KernelLine) -> Option<Kernel> {
    let rd = std::fs::read_dir(cache_dir()).ok()?;
    let mut best: Option<Kernel> = None;
    for entry in rd.flatten() {
        let package = entry.file_name().to_string_lossy().to_string();
        if !matches(line, &package) || !entry.path().join(READY).exists() {
            continue;
        }
        let Some(release) = release_of(&package) else {
            continue;
        };
        if best
            .as_ref()
            .is_none_or(|b| version_key(&b.package) < version_key(&package))
        {
            best = Some(Kernel {
                dir: entry.path(),
                package,
                release,
            });
        }
    }
    best
}

/// The archive's addresses as this machine's own apt configuration names
/// them (main archive, security archive): the private sources list reuses
/// them with other suites, so no address is written down here.
fn archive_uris() -> Result<(String, Option<String>)> {
    let mut uris = Vec::new();
    let mut texts = Vec::new();
    if let Ok(s) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(s);
    }
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            let p = e.path();
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext == "sources" || ext == "list" {
                if let Ok(s) = std::fs::read_to_string(&p) {
                    texts.push(s);
                }
            }
        }
    }
    for text in &texts {
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("URIs:") {
                uris.extend(rest.split_whitespace().map(str::to_string));
            } else if let Some(rest) = line.strip_prefix("deb ") {
                // `deb [opts] URI suite components`
                let uri = rest
                    .split_whitespace()
                    .find(|w| w.contains("://"))
                    .map(str::to_string);
                uris.extend(uri);
            }
        }
    }
    let debian: Vec<&String> = uris.iter().filter(|u| u.contains("debian")).collect();
    let security = debian
        .iter()
        .find(|u| u.contains("security"))
        .map(|s| s.to_string());
    let Some(main) = debian.iter().find(|u| !u.contains("security")) else {
        bail!("no Debian archive in this machine's apt sources (/etc/apt/sources.list*): cannot fetch kernels");
    };
    Ok((main.to_string(), security))
}

struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new() -> Result<Self> {
        let dir = cache_dir().join("apt");
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let (main, security) = archive_uris()?;
        let key = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let mut list = String::new();
        for l in LINES {
            list += &format!("deb [signed-by={key}] {main} {} main\n", l.suite);
            if let Some(sec) = &security {
                list += &format!("deb [signed-by={key}] {sec} {}-security main\n", l.suite);
            }
        }
        std::fs::write(dir.join("sources.list"), list)?;
        Ok(Self { dir })
    }

    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            "-o".into(),
            format!("Dir::Etc::sourcelist={d}/sources.list"),
            "-o".into(),
            "Dir::Etc::sourceparts=-".into(),
            "-o".into(),
            format!("Dir::State::Lists={d}/lists"),
            "-o".into(),
            format!("Dir::Cache={d}/cache"),
            "-o".into(),
            "APT::Sandbox::User=root".into(),
        ]
    }

    fn update(&self) -> Result<()> {
        eprintln!("xtask: reading Debian's kernel package lists (private apt lists)");
        checked(
            Command::new("apt-get")
                .args(self.options())
                .args(["update", "-qq"]),
        )
        .context("apt-get update (private lists)")
    }

    fn newest(&self, line: &KernelLine) -> Result<String> {
        let out = Command::new("apt-cache")
            .args(self.options())
            // A coarse search (the prefix); `matches` decides.
            .args([
                "search",
                "--names-only",
                &format!("^{}", line.prefix.replace('.', "\\.")),
            ])
            .output()
            .context("apt-cache search")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|p| matches(line, p))
            .max_by_key(|p| version_key(p))
            .map(str::to_string)
            .with_context(|| {
                format!(
                    "no package {}<n>{} in Debian {}",
                    line.prefix, line.suffix, line.suite
                )
            })
    }

    fn download(&self, package: &str, into: &Path) -> Result<PathBuf> {
        checked(
            Command::new("apt-get")
                .current_dir(into)
                .args(self.options())
                .args(["download", "-qq", package]),
        )
        .with_context(|| format!("apt-get download {package}"))?;
        let deb = std::fs::read_dir(into)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .with_context(|| format!("{package}: downloaded, but no .deb in {}", into.display()))?;
        Ok(deb)
    }
}

/// Unpacks `deb` into `dir`: the kernel, and its modules decompressed
/// under `lib/modules/<release>` with a fresh `modules.dep`.
fn unpack(deb: &Path, dir: &Path, release: &str) -> Result<()> {
    checked(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir))?;
    // Trixie's packages keep modules under usr/lib (merged /usr).
    let usr_lib = dir.join("usr/lib/modules");
    if usr_lib.exists() && !dir.join("lib/modules").exists() {
        std::os::unix::fs::symlink("usr/lib", dir.join("lib"))
            .with_context(|| format!("linking {}/lib", dir.display()))?;
    }
    let modules = dir.join("lib/modules").join(release);
    if !modules.exists() {
        bail!("{}: no modules for {release}", deb.display());
    }
    // Compressed modules: decompress once so insmod and modprobe need no
    // decompression support in the guest's busybox.
    checked(Command::new("sh").arg("-c").arg(format!(
        "find '{}' -name '*.ko.xz' -print0 | xargs -0 -r -P2 -n64 xz -d",
        modules.display()
    )))?;
    checked(Command::new("depmod").arg("-b").arg(dir).arg(release))?;
    Ok(())
}

/// The newest kernel of `line`: from the cache, or fetched and unpacked.
pub fn ensure(line: &'static KernelLine) -> Result<Kernel> {
    if let Some(k) = cached(line) {
        return Ok(k);
    }
    let apt = PrivateApt::new()?;
    apt.update()?;
    let package = apt.newest(line)?;
    let release = release_of(&package).with_context(|| format!("release of {package}"))?;
    eprintln!("xtask: fetching {package} (Debian {})", line.suite);
    let dir = cache_dir().join(&package);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let download = cache_dir().join("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    let deb = apt.download(&package, &download)?;
    unpack(&deb, &dir, &release)?;
    let _ = std::fs::remove_dir_all(&download);
    std::fs::write(dir.join(READY), &package)?;
    Ok(Kernel {
        package,
        dir,
        release,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_match_their_line_only() {
        let l61 = line("6.1").unwrap();
        let l612 = line("6.12").unwrap();
        assert!(matches(l61, "linux-image-6.1.0-57-amd64-unsigned"));
        assert!(!matches(l61, "linux-image-6.1.0-57-cloud-amd64-unsigned"));
        assert!(matches(l612, "linux-image-6.12.117+deb13-amd64-unsigned"));
        assert!(!matches(l612, "linux-image-6.12.117+deb12-amd64-unsigned"));
        assert!(!matches(
            l612,
            "linux-image-6.12.117+deb13-rt-amd64-unsigned"
        ));
        assert_eq!(
            release_of("linux-image-6.12.117+deb13-amd64-unsigned").as_deref(),
            Some("6.12.117+deb13-amd64")
        );
        assert!(
            version_key("linux-image-6.1.0-9-amd64-unsigned")
                < version_key("linux-image-6.1.0-57-amd64-unsigned")
        );
    }
}
