//! Pools in the daemon's config file: where a sweep's trials run. `[pools.NAME]` tables with
//! `provider = "gce"` (Spot VMs on Compute Engine) or `provider = "local"` (agents on this
//! machine; `local_agents` sets how many).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Spot prices in USD per hour (host plus GPUs) in us-central1, the default when a pool sets
/// none. As of 2026-11-28, from SkyPilot's GCP catalog (`catalogs/v8/gcp/vms.csv`); Spot
/// prices change up to once a month, so set `spot_price_per_hour` to what the console shows.
pub const SPOT_PRICES: &[(&str, f64)] = &[
    ("a2-highgpu-1g", 1.80),
    ("a2-highgpu-2g", 3.61),
    ("a2-highgpu-4g", 7.22),
    ("a2-highgpu-8g", 14.43),
    ("a2-megagpu-16g", 27.34),
];

/// The date of [`SPOT_PRICES`].
pub const SPOT_PRICES_AS_OF: &str = "2026-11-28";

/// A pool as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase", deny_unknown_fields)]
enum PoolFile {
    Local {
        #[serde(default)]
        setup: Option<String>,
    },
    Gce(Box<GceFile>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GceFile {
    project: String,
    zones: Vec<String>,
    machine_type: String,
    #[serde(default)]
    accelerators: Vec<AcceleratorFile>,
    image_family: Option<String>,
    image: Option<String>,
    disk_gb: Option<u32>,
    slots_per_vm: Option<u32>,
    max_vms: Option<u32>,
    idle_timeout: Option<String>,
    max_vm_lifetime: Option<String>,
    spot_price_per_hour: Option<f64>,
    budget_usd: Option<f64>,
    credentials: Option<PathBuf>,
    compute_endpoint: Option<String>,
    service_account: Option<String>,
    scopes: Option<Vec<String>>,
    network: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    setup: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceleratorFile {
    #[serde(rename = "type")]
    kind: String,
    count: i32,
}

/// A resolved pool.
#[derive(Debug, Clone, PartialEq)]
pub enum Pool {
    /// Agents on the daemon's machine.
    Local {
        /// Run once per agent before its first trial.
        setup: Option<String>,
    },
    /// Spot VMs on Compute Engine.
    Gce(Box<GcePool>),
}

/// A Compute Engine pool.
#[derive(Debug, Clone, PartialEq)]
pub struct GcePool {
    /// The project VMs are created in.
    pub project: String,
    /// Zones in order of preference; a stockout moves to the next.
    pub zones: Vec<String>,
    /// `a2-highgpu-1g`, or an N1 type with `accelerators`.
    pub machine_type: String,
    /// GPUs for N1 types: `(type, count)`.
    pub accelerators: Vec<(String, i32)>,
    /// The boot image or image family URL.
    pub image: String,
    /// Boot disk size.
    pub disk_gb: u32,
    /// Trials a VM runs at once.
    pub slots_per_vm: u32,
    /// At most this many VMs at once.
    pub max_vms: u32,
    /// An idle VM is deleted after this long.
    pub idle_timeout: Duration,
    /// The cloud-side fuse (`maxRunDuration`): the VM deletes itself after this long.
    pub max_vm_lifetime: Duration,
    /// USD per hour while a VM runs.
    pub spot_price_per_hour: f64,
    /// The pool never spends more than this, if set.
    pub budget_usd: Option<f64>,
    /// A service-account key file for the daemon; else gcp_auth's default chain.
    pub credentials: Option<PathBuf>,
    /// The Compute API base URL.
    pub compute_endpoint: String,
    /// The service account VMs run as.
    pub service_account: Option<String>,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// The network.
    pub network: String,
    /// Extra labels on every VM.
    pub labels: BTreeMap<String, String>,
    /// Run once per VM before its first trial (staging data, say).
    pub setup: Option<String>,
}

impl Pool {
    /// The command each of the pool's machines runs once before its first trial.
    pub fn setup(&self) -> Option<&str> {
        match self {
            Self::Local { setup } => setup.as_deref(),
            Self::Gce(g) => g.setup.as_deref(),
        }
    }
}

/// A setup command as configured: `None` when absent, an error when blank.
fn setup_command(pool: &str, setup: Option<String>) -> Result<Option<String>, String> {
    match setup {
        Some(s) if s.trim().is_empty() => Err(format!(
            "pools.{pool}.setup: is empty; remove it or give a shell command"
        )),
        other => Ok(other),
    }
}

/// A duration written as `500ms`, `90s`, `10m`, `24h`, `1h30m`, `2d` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let bad = |why: &str| format!("'{text}' is not a duration: {why}, as in 500ms, 10m or 24h");
    let mut total_ms = 0u64;
    let mut rest = t;
    if rest.is_empty() {
        return Err(bad("it is empty"));
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("a unit needs a number before it"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| bad("the number is too large"))?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.chars().next() {
                Some('s') => (1_000, 1),
                Some('m') => (60_000, 1),
                Some('h') => (3_600_000, 1),
                Some('d') => (86_400_000, 1),
                Some(_) => return Err(bad("use the units ms, s, m, h or d")),
                None => return Err(bad("the last number has no unit")),
            }
        };
        total_ms = n
            .checked_mul(unit_ms)
            .and_then(|v| total_ms.checked_add(v))
            .ok_or_else(|| bad("it is too long"))?;
        rest = &rest[len..];
    }
    Ok(Duration::from_millis(total_ms))
}

/// Resolves the `[pools]` tables: defaults filled in, every value checked, errors naming the
/// pool and the field.
pub fn resolve(raw: toml::Table) -> Result<BTreeMap<String, Pool>, String> {
    let mut out = BTreeMap::new();
    for (name, value) in raw {
        let file: PoolFile = value
            .try_into()
            .map_err(|e: toml::de::Error| format!("pools.{name}: {}", e.message()))?;
        let pool = match file {
            PoolFile::Local { setup } => Pool::Local {
                setup: setup_command(&name, setup)?,
            },
            PoolFile::Gce(g) => Pool::Gce(Box::new(resolve_gce(&name, *g)?)),
        };
        out.insert(name, pool);
    }
    Ok(out)
}

fn resolve_gce(name: &str, g: GceFile) -> Result<GcePool, String> {
    let err = |field: &str, msg: String| format!("pools.{name}.{field}: {msg}");
    if g.zones.is_empty() {
        return Err(err(
            "zones",
            "list at least one zone, as in [\"us-central1-a\"]".into(),
        ));
    }
    let image = match (g.image, g.image_family) {
        (Some(i), None) | (None, Some(i)) => i,
        (Some(_), Some(_)) => return Err(err("image", "set image or image_family, not both".into())),
        (None, None) => {
            return Err(err(
                "image_family",
                "required: the boot image family, as in projects/deeplearning-platform-release/global/images/family/pytorch-latest-gpu".into(),
            ));
        }
    };
    let price = match g.spot_price_per_hour {
        Some(p) if p.is_finite() && p > 0.0 => p,
        Some(p) => return Err(err("spot_price_per_hour", format!("{p} is not a positive price"))),
        None => SPOT_PRICES
            .iter()
            .find(|(m, _)| *m == g.machine_type)
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                err(
                    "spot_price_per_hour",
                    format!(
                        "no default price for {}: set the Spot price in USD per hour",
                        g.machine_type
                    ),
                )
            })?,
    };
    let idle_timeout =
        parse_duration(g.idle_timeout.as_deref().unwrap_or("10m")).map_err(|m| err("idle_timeout", m))?;
    let max_vm_lifetime = parse_duration(g.max_vm_lifetime.as_deref().unwrap_or("24h"))
        .map_err(|m| err("max_vm_lifetime", m))?;
    if max_vm_lifetime < Duration::from_secs(60) {
        return Err(err("max_vm_lifetime", "must be at least 1m".into()));
    }
    if let Some(b) = g.budget_usd
        && !(b.is_finite() && b >= 0.0)
    {
        return Err(err("budget_usd", format!("{b} is not a budget")));
    }
    let slots_per_vm = g.slots_per_vm.unwrap_or(1);
    if slots_per_vm == 0 {
        return Err(err("slots_per_vm", "must be at least 1".into()));
    }
    Ok(GcePool {
        project: g.project,
        zones: g.zones,
        machine_type: g.machine_type,
        accelerators: g.accelerators.into_iter().map(|a| (a.kind, a.count)).collect(),
        image,
        disk_gb: g.disk_gb.unwrap_or(100),
        slots_per_vm,
        max_vms: g.max_vms.unwrap_or(1),
        idle_timeout,
        max_vm_lifetime,
        spot_price_per_hour: price,
        budget_usd: g.budget_usd,
        credentials: g.credentials,
        compute_endpoint: g
            .compute_endpoint
            .unwrap_or_else(|| spotsweep_gce::DEFAULT_ENDPOINT.to_string()),
        service_account: g.service_account,
        scopes: g
            .scopes
            .unwrap_or_else(|| vec!["https://www.googleapis.com/auth/cloud-platform".to_string()]),
        network: g.network.unwrap_or_else(|| "global/networks/default".to_string()),
        labels: g.labels,
        setup: setup_command(name, g.setup)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(text: &str) -> Result<BTreeMap<String, Pool>, String> {
        resolve(toml::from_str::<toml::Table>(text).unwrap())
    }

    #[test]
    fn the_issue_example_resolves_with_defaults() {
        let p = pools(
            r#"
            [a100]
            provider = "gce"
            project = "my-research"
            zones = ["us-central1-a", "us-central1-b", "us-central1-c"]
            machine_type = "a2-highgpu-1g"
            image_family = "projects/deeplearning-platform-release/global/images/family/pytorch-latest-gpu"
            disk_gb = 150
            slots_per_vm = 4
            max_vms = 2
            idle_timeout = "10m"
            max_vm_lifetime = "24h"
            budget_usd = 50
            [here]
            provider = "local"
            "#,
        )
        .unwrap();
        let Pool::Gce(g) = &p["a100"] else { panic!("{p:?}") };
        assert_eq!(g.spot_price_per_hour, 1.80);
        assert_eq!(g.idle_timeout, Duration::from_secs(600));
        assert_eq!(g.max_vm_lifetime, Duration::from_secs(86_400));
        assert_eq!(g.compute_endpoint, "https://compute.googleapis.com/compute/v1/");
        assert_eq!(p["here"], Pool::Local { setup: None });
    }

    #[test]
    fn mistakes_name_the_pool_and_field() {
        let base =
            "provider = \"gce\"\nproject = \"p\"\nmachine_type = \"n1-standard-8\"\nimage_family = \"f\"\n";
        let e = pools(&format!("[t4]\n{base}zones = []\nspot_price_per_hour = 0.5\n")).unwrap_err();
        assert!(e.contains("pools.t4.zones"), "{e}");
        let e = pools(&format!("[t4]\n{base}zones = [\"z\"]\n")).unwrap_err();
        assert!(
            e.contains("pools.t4.spot_price_per_hour") && e.contains("n1-standard-8"),
            "{e}"
        );
        let e = pools(&format!(
            "[t4]\n{base}zones = [\"z\"]\nspot_price_per_hour = 0.5\nidle_timeout = \"ten\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("pools.t4.idle_timeout"), "{e}");
        let e = pools(&format!(
            "[t4]\n{base}zones = [\"z\"]\nspot_price_per_hour = 0.5\nmax_vm = 3\n"
        ))
        .unwrap_err();
        assert!(e.contains("pools.t4") && e.contains("max_vm"), "{e}");
        let e = pools("[x]\nprovider = \"aws\"\n").unwrap_err();
        assert!(e.contains("pools.x"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("120").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("10").is_ok());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("1h30").is_err());
    }
}
