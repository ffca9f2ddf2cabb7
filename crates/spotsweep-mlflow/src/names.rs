//! Generated run names (`adjective-animal-NNN`), as the reference gives runs without a name.

use rand::RngExt;

const ADJECTIVES: &[&str] = &[
    "amber", "bold", "brave", "bright", "calm", "clever", "crisp", "daring", "eager", "fancy", "fierce",
    "gentle", "glad", "golden", "honest", "humble", "jolly", "keen", "kind", "lively", "lucky", "merry",
    "mighty", "nimble", "noble", "patient", "polite", "proud", "quick", "quiet", "rare", "shiny", "silent",
    "smart", "steady", "sunny", "swift", "tidy", "upbeat", "vivid", "warm", "wise", "witty", "zesty",
];

const ANIMALS: &[&str] = &[
    "ant", "badger", "bat", "bear", "bee", "bison", "carp", "cat", "crab", "crow", "deer", "dove", "eel",
    "elk", "finch", "fox", "frog", "gnu", "goat", "hare", "hawk", "heron", "ibis", "koala", "lark", "lynx",
    "mole", "moth", "newt", "otter", "owl", "panda", "pike", "puma", "quail", "robin", "seal", "shrew",
    "sloth", "snail", "swan", "toad", "trout", "wolf", "wren", "yak", "zebra",
];

/// A fresh random run name.
pub fn random_run_name() -> String {
    let mut rng = rand::rng();
    let adjective = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
    let animal = ANIMALS[rng.random_range(0..ANIMALS.len())];
    format!("{adjective}-{animal}-{}", rng.random_range(0..1000))
}
