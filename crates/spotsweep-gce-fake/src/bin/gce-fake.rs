//! The fake Compute API as a process of its own, for tests that are not in Rust (the
//! dashboard's browser tests drive a real gce pool on it).
//!
//! `gce-fake DIR` starts the fake on a loopback port, writes a service account key for it to
//! `DIR/sa.json` (its token URI is the fake's), boots each RUNNING instance's startup script under
//! `DIR/guests`, and prints one JSON line: `{"base_url": ..., "credentials": ...}`. Then it reads
//! commands on stdin, one per line, and answers each with one line:
//! - `preempt ZONE NAME`: a preemption notice to that instance (`true`, or `false` if unknown);
//! - `instances`: every instance as JSON (`[{"zone", "name", "status"}]`);
//! - `inserts`: how many inserts created an instance (a repeated `requestId` does not count);
//! - `quit` (or the end of stdin): stops, deleting every guest.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use spotsweep_gce_fake::{Boot, FakeCompute, FakeConfig};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: gce-fake DIR");
        std::process::exit(2);
    };
    let guests = dir.join("guests");
    std::fs::create_dir_all(&guests)?;
    let fake = FakeCompute::start(FakeConfig {
        op_delay: Duration::from_millis(100),
        boot_delay: Duration::from_millis(200),
        wait_cap: Duration::from_millis(200),
        preempt_grace: Some(Duration::from_secs(3)),
        boot: Some(Boot {
            dir: guests,
            env: Vec::new(),
        }),
        ..FakeConfig::default()
    })
    .await?;
    let credentials = dir.join("sa.json");
    std::fs::write(
        &credentials,
        fake.service_account_json(&spotsweep_gce_fake::new_private_key()?),
    )?;
    println!(
        "{}",
        serde_json::json!({"base_url": fake.base_url(), "credentials": credentials})
    );
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = commands.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["preempt", zone, name] => println!("{}", fake.preempt(zone, name)),
            ["instances"] => {
                let all: Vec<_> = fake
                    .instances()
                    .into_iter()
                    .map(|i| serde_json::json!({"zone": i.zone, "name": i.name, "status": i.status}))
                    .collect();
                println!("{}", serde_json::Value::Array(all));
            }
            ["inserts"] => println!("{}", fake.inserts_executed()),
            ["quit"] => break,
            _ => println!(
                "{}",
                serde_json::json!({"error": format!("unknown command: {line}")})
            ),
        }
    }
    Ok(())
}
