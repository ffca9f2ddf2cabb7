//! The parts of the Compute v1 resources the fleet reads and writes (field names as on the
//! wire; `int64` fields are strings there).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An operation (`compute#operation`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Its name (`operation-…`), for `zoneOperations.get` and `wait`.
    pub name: String,
    /// `insert`, `delete`, `setLabels`, `compute.instances.preempted`, ...
    #[serde(default)]
    pub operation_type: Option<String>,
    /// `PENDING`, `RUNNING` or `DONE` (DONE is not success: see `error`).
    pub status: String,
    /// The instance it is about.
    #[serde(default)]
    pub target_link: Option<String>,
    /// The zone's URL.
    #[serde(default)]
    pub zone: Option<String>,
    /// The `requestId` it was made with.
    #[serde(default)]
    pub client_operation_id: Option<String>,
    /// "Instance was preempted.", ...
    #[serde(default)]
    pub status_message: Option<String>,
    /// The errors of a failed operation.
    #[serde(default)]
    pub error: Option<OperationErrors>,
    /// The HTTP status the failure corresponds to.
    #[serde(default)]
    pub http_error_status_code: Option<u16>,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub insert_time: Option<String>,
}

impl Operation {
    /// Whether it has ended (with or without an error).
    pub fn is_done(&self) -> bool {
        self.status == "DONE"
    }

    /// The zone's name, from its URL.
    pub fn zone_name(&self) -> Option<&str> {
        self.zone.as_deref().and_then(|z| z.rsplit('/').next())
    }

    /// The target instance's name, from its URL.
    pub fn target_name(&self) -> Option<&str> {
        self.target_link.as_deref().and_then(|t| t.rsplit('/').next())
    }
}

/// The errors of a failed operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationErrors {
    /// Each error.
    #[serde(default)]
    pub errors: Vec<OperationError>,
}

/// One error of a failed operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationError {
    /// `ZONE_RESOURCE_POOL_EXHAUSTED`, `QUOTA_EXCEEDED`, ...
    pub code: String,
    /// Google's message.
    #[serde(default)]
    pub message: Option<String>,
    /// Structured hints (`errorInfo.metadatas.zonesAvailable`, `quotaInfo`, ...).
    #[serde(default)]
    pub error_details: Option<Value>,
}

/// An instance (`compute#instance`), the fields the fleet reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// Its name.
    pub name: String,
    /// Its numeric id (a string on the wire).
    #[serde(default)]
    pub id: Option<String>,
    /// The zone's URL.
    #[serde(default)]
    pub zone: Option<String>,
    /// `PROVISIONING`, `STAGING`, `RUNNING`, `STOPPING`, `TERMINATED`, ...
    #[serde(default)]
    pub status: Option<String>,
    /// The machine type's URL.
    #[serde(default)]
    pub machine_type: Option<String>,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The fingerprint `setLabels` needs.
    #[serde(default)]
    pub label_fingerprint: Option<String>,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    /// Its scheduling (Spot settings).
    #[serde(default)]
    pub scheduling: Option<Scheduling>,
}

impl Instance {
    /// The zone's name, from its URL.
    pub fn zone_name(&self) -> Option<&str> {
        self.zone.as_deref().and_then(|z| z.rsplit('/').next())
    }
}

/// `instances.list`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstanceList {
    #[serde(default)]
    pub items: Vec<Instance>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// `instances.aggregatedList`: instances by scope (`zones/us-central1-a`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstanceAggregatedList {
    #[serde(default)]
    pub items: BTreeMap<String, InstancesScoped>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct InstancesScoped {
    #[serde(default)]
    pub instances: Vec<Instance>,
}

/// `zoneOperations.list`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct OperationList {
    #[serde(default)]
    pub items: Vec<Operation>,
}

/// An instance to create: the body of `instances.insert` (see [`NewInstance::spot`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewInstance {
    /// Its name (`[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?`).
    pub name: String,
    /// `zones/{zone}/machineTypes/{type}`.
    pub machine_type: String,
    /// Spot settings.
    pub scheduling: Scheduling,
    /// The boot disk.
    pub disks: Vec<AttachedDisk>,
    /// The network.
    pub network_interfaces: Vec<NetworkInterface>,
    /// GPUs for N1 shapes (A2 shapes have theirs built in).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guest_accelerators: Vec<Accelerator>,
    /// The service account the VM runs as.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccount>,
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Its metadata (the startup script, the daemon's URL, the VM's token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

impl NewInstance {
    /// A Spot VM that deletes itself when preempted and in any case after `max_run_seconds`
    /// (so a VM abandoned by a dead daemon still dies), with a boot disk from `image` and an
    /// ephemeral external address.
    pub fn spot(
        name: &str,
        zone: &str,
        machine_type: &str,
        image: &str,
        disk_gb: u32,
        max_run_seconds: u64,
    ) -> Self {
        Self {
            name: name.to_string(),
            machine_type: format!("zones/{zone}/machineTypes/{machine_type}"),
            scheduling: Scheduling {
                provisioning_model: Some("SPOT".into()),
                instance_termination_action: Some("DELETE".into()),
                on_host_maintenance: Some("TERMINATE".into()),
                automatic_restart: Some(false),
                max_run_duration: Some(RunDuration {
                    seconds: max_run_seconds.to_string(),
                }),
            },
            disks: vec![AttachedDisk {
                boot: true,
                auto_delete: true,
                initialize_params: Some(DiskParams {
                    source_image: image.to_string(),
                    disk_size_gb: disk_gb.to_string(),
                    disk_type: Some(format!("zones/{zone}/diskTypes/pd-balanced")),
                }),
            }],
            network_interfaces: vec![NetworkInterface {
                network: "global/networks/default".into(),
                access_configs: vec![AccessConfig {
                    kind: "ONE_TO_ONE_NAT".into(),
                    name: "External NAT".into(),
                }],
            }],
            guest_accelerators: Vec::new(),
            service_accounts: Vec::new(),
            labels: BTreeMap::new(),
            metadata: None,
        }
    }
}

/// `Scheduling`: how the VM is provisioned and when it ends.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    /// `SPOT` or `STANDARD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_model: Option<String>,
    /// `DELETE` or `STOP` on preemption (and at `maxRunDuration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_termination_action: Option<String>,
    /// `TERMINATE` for GPU machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_host_maintenance: Option<String>,
    /// Never for Spot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic_restart: Option<bool>,
    /// The cloud-side fuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_run_duration: Option<RunDuration>,
}

/// A `Duration` on the wire (seconds as an `int64` string).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDuration {
    /// Whole seconds.
    pub seconds: String,
}

/// A disk attached at creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachedDisk {
    /// The boot disk.
    pub boot: bool,
    /// Deleted with the instance.
    pub auto_delete: bool,
    /// How to create it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialize_params: Option<DiskParams>,
}

/// A new disk's image, size and type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskParams {
    /// An image or image family URL.
    pub source_image: String,
    /// GB, as an `int64` string.
    pub disk_size_gb: String,
    /// `zones/{zone}/diskTypes/pd-balanced`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_type: Option<String>,
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterface {
    /// `global/networks/default`.
    pub network: String,
    /// An external address, when present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_configs: Vec<AccessConfig>,
}

/// An external address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessConfig {
    /// `ONE_TO_ONE_NAT`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// GPUs attached to an N1 machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accelerator {
    /// `zones/{zone}/acceleratorTypes/nvidia-tesla-t4`.
    pub accelerator_type: String,
    /// How many.
    pub accelerator_count: i32,
}

/// The service account a VM runs as.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceAccount {
    /// Its e-mail.
    pub email: String,
    /// OAuth scopes.
    pub scopes: Vec<String>,
}

/// Instance metadata.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Metadata {
    /// The entries.
    pub items: Vec<MetadataItem>,
}

/// One metadata entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataItem {
    /// `[a-zA-Z0-9-_]{1,128}`.
    pub key: String,
    /// At most 256 KiB.
    pub value: String,
}
