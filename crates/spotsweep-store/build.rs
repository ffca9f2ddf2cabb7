//! Build script: rebuild when a migration changes.
fn main() {
    // sqlx::migrate! embeds the files but cannot watch the folder itself.
    println!("cargo:rerun-if-changed=../../migrations");
}
