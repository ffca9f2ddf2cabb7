//! Build script: embeds the dashboard's own files (`dashboard/`, served as they are: no bundler)
//! and its chart library, Apache ECharts, which comes from the npm registry at a pinned version
//! whose SHA-512 is checked here. Nothing of ECharts is committed to this repository.
//!
//! Offline, point `SPOTSWEEP_ECHARTS_TGZ` at the package's tarball (`npm pack echarts@6.1.0`
//! on a machine with the registry). Without npm and without that file the build still succeeds:
//! the dashboard then says the chart library is missing and how to rebuild with it.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use sha2::{Digest, Sha512};

/// The chart library's version and the `dist.integrity` the registry publishes for it.
const ECHARTS_VERSION: &str = "6.1.0";
const ECHARTS_SHA512: &str =
    "q0yaFPggC9FUdsWH4blavRWFmxdrIodbkoKNAjJudAI6CA9gNPxHtV2RcZNEepZVlk4yvBYkOkbk6HIVpIyHZA==";
/// What the dashboard serves from the package: the minified build and its licences.
const ECHARTS_FILES: &[&str] = &[
    "package/dist/echarts.min.js",
    "package/LICENSE",
    "package/NOTICE",
    "package/licenses/LICENSE-d3",
];

fn main() {
    println!("cargo:rerun-if-changed=dashboard");
    println!("cargo:rerun-if-env-changed=SPOTSWEEP_ECHARTS_TGZ");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    embed_dashboard(&out);
    match vendor_echarts(&out) {
        Ok(dir) => {
            println!("cargo:rustc-env=SPOTSWEEP_ECHARTS_DIR={}", dir.display());
            println!("cargo:rustc-cfg=echarts");
        }
        Err(why) => {
            println!("cargo:warning=the dashboard is built without its chart library: {why}");
            println!("cargo:rustc-env=SPOTSWEEP_ECHARTS_MISSING={why}");
        }
    }
    println!("cargo::rustc-check-cfg=cfg(echarts)");
}

/// Writes `dashboard_assets.rs`: every file under `dashboard/` (but npm's own files), by path.
fn embed_dashboard(out: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboard");
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    files.sort();
    let mut code = String::from(
        "/// The dashboard's files, by path under `/dashboard/`.\npub static ASSETS: &[(&str, &[u8])] = &[\n",
    );
    for (name, path) in files {
        code.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    code.push_str("];\n");
    std::fs::write(out.join("dashboard_assets.rs"), code).expect("cannot write dashboard_assets.rs");
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "node_modules" || name.starts_with("package") {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, files);
        } else if let Ok(rel) = path.strip_prefix(root) {
            let rel = rel.to_string_lossy().replace('\\', "/");
            files.push((rel, path));
        }
    }
}

/// Unpacks the pinned ECharts package into `out/echarts-<version>/`, fetching it with
/// `npm pack` unless `SPOTSWEEP_ECHARTS_TGZ` names it or an earlier build unpacked it.
fn vendor_echarts(out: &Path) -> Result<PathBuf, String> {
    let dir = out.join(format!("echarts-{ECHARTS_VERSION}"));
    if ECHARTS_FILES.iter().all(|f| dir.join(f).is_file()) {
        return Ok(dir);
    }
    let tgz = match std::env::var_os("SPOTSWEEP_ECHARTS_TGZ") {
        Some(path) => PathBuf::from(path),
        None => {
            let spec = format!("echarts@{ECHARTS_VERSION}");
            let status = Command::new("npm")
                .args(["pack", &spec, "--silent", "--pack-destination"])
                .arg(out)
                .stdout(std::process::Stdio::null())
                .status()
                .map_err(|e| {
                    format!("cannot run npm ({e}); install Node.js and npm, or set SPOTSWEEP_ECHARTS_TGZ")
                })?;
            if !status.success() {
                return Err(format!(
                    "`npm pack {spec}` failed ({status}); set SPOTSWEEP_ECHARTS_TGZ to its tarball"
                ));
            }
            out.join(format!("echarts-{ECHARTS_VERSION}.tgz"))
        }
    };
    let bytes = std::fs::read(&tgz).map_err(|e| format!("cannot read {}: {e}", tgz.display()))?;
    let digest = base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&bytes));
    if digest != ECHARTS_SHA512 {
        return Err(format!(
            "{} is not echarts {ECHARTS_VERSION} as published (sha512-{digest})",
            tgz.display()
        ));
    }
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&tgz)
        .arg("-C")
        .arg(&dir)
        .args(ECHARTS_FILES)
        .status()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !status.success() {
        return Err(format!("tar could not unpack {}", tgz.display()));
    }
    Ok(dir)
}
