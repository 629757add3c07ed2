//! The repository's scripts, run against stand-in tools.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `scripts/test.sh` keeps the SDK's virtual environment under the cargo target directory in
/// use, and hands the tests that environment's Python.
#[test]
fn test_script_keeps_its_venv_under_the_cargo_target_dir() {
    let dir = tempfile::tempdir().unwrap();
    // A copy of the script in a repository of its own (no dbs.sh: no databases are started).
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("scripts")).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test.sh");
    std::fs::copy(script, repo.join("scripts/test.sh")).unwrap();
    std::fs::write(repo.join("scripts/requirements-sdk.txt"), "stripe==0\n").unwrap();
    // Stand-ins: python3 makes a venv whose pip does nothing; cargo reports what it was given.
    let tools = dir.path().join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let report = dir.path().join("cargo-saw");
    executable(
        &tools.join("python3"),
        "#!/bin/sh\n[ \"$1\" = -m ] && [ \"$2\" = venv ] || exit 9\n\
         mkdir -p \"$3/bin\" && printf '#!/bin/sh\\nexit 0\\n' > \"$3/bin/pip\" && chmod +x \"$3/bin/pip\"\n",
    );
    executable(
        &tools.join("cargo"),
        &format!("#!/bin/sh\necho \"$RECONCILED_STRIPE_SDK_PYTHON\" > {}\n", report.display()),
    );
    executable(&tools.join("strace"), "#!/bin/sh\nexit 0\n");
    let path = format!("{}:{}", tools.display(), std::env::var("PATH").unwrap_or_default());
    let target = dir.path().join("elsewhere");
    let status = Command::new("bash")
        .arg(repo.join("scripts/test.sh"))
        .env("PATH", &path)
        .env("CARGO_TARGET_DIR", &target)
        .env("RECONCILED_FAULT_TESTS", "0")
        .status()
        .unwrap();
    assert!(status.success());
    let venv = target.join("sdk-venv");
    assert!(venv.join(".installed").is_file(), "the venv is under CARGO_TARGET_DIR");
    assert!(!repo.join("target").exists(), "nothing under ./target");
    let saw = std::fs::read_to_string(&report).unwrap();
    assert_eq!(saw.trim(), venv.join("bin/python").display().to_string());

    // Without CARGO_TARGET_DIR it is ./target, as before.
    let status = Command::new("bash")
        .arg(repo.join("scripts/test.sh"))
        .env("PATH", &path)
        .env_remove("CARGO_TARGET_DIR")
        .env("RECONCILED_FAULT_TESTS", "0")
        .status()
        .unwrap();
    assert!(status.success());
    assert!(repo.join("target/sdk-venv/.installed").is_file());
    let saw = std::fs::read_to_string(&report).unwrap();
    let saw = Path::new(saw.trim());
    assert_eq!(saw.file_name().unwrap(), "python");
    let want = repo.join("target/sdk-venv/bin").canonicalize().unwrap();
    assert_eq!(saw.parent().unwrap().canonicalize().unwrap(), want);
}
