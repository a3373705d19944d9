//! `verre users`: accounts of the review UI, with passwords from stdin.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn verre(home: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_verre"))
        .args(args)
        .env("VERRE_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running verre");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn add_list_and_remove_reviewers() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let add = |name: &str, role: &str, pw: &str| {
        verre(
            h,
            &["users", "add", name, "--role", role, "--password-stdin"],
            pw,
        )
    };
    let o = add("alice", "reviewer", "a long password\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(add("bob", "admin", "another long one\n").status.success());

    let o = add("alice", "admin", "a long password\n");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("exists already"),
        "{err}"
    );
    let o = add("carol", "reviewer", "short\n");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("too short"), "{err}");
    let o = add("dave", "boss", "a long password\n");
    assert!(!o.status.success(), "an unknown role is refused");

    let o = verre(h, &["users", "list", "--json"], "");
    let users: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<(&str, &str)> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["name"].as_str().unwrap(), u["role"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("alice", "reviewer"), ("bob", "admin")]);
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("argon2"),
        "the hash is never printed"
    );

    assert!(verre(h, &["users", "remove", "alice"], "").status.success());
    let o = verre(h, &["users", "remove", "alice"], "");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no user"));
}
