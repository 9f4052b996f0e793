"""`rigctl keys`: key files are written 0600 (whatever the umask), a secret key others may read is refused, an
allow-list others may write is refused, and every error is one line (exit 2)."""

import os
import stat

from runcli import rigctl


def test_keys_are_private_and_open_ones_are_refused(tmp_path):
    where = tmp_path / "keys"
    old = os.umask(0)
    try:
        made = rigctl("keys", "--keys", str(where), "new", "rig")
    finally:
        os.umask(old)
    assert "rig.key_secret" in made.stdout
    for name in ("rig.key", "rig.key_secret"):
        assert stat.S_IMODE((where / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    again = rigctl("keys", "--keys", str(where), "new", "rig", check=False)
    assert again.returncode == 2 and "exists" in again.stderr

    rigctl("keys", "--keys", str(where), "new", "alice")
    rigctl("keys", "--keys", str(where), "allow", str(where / "alice.key"))
    assert stat.S_IMODE((where / "allowed" / "alice.key").stat().st_mode) == 0o600
    listed = rigctl("keys", "--keys", str(where), "list").stdout
    assert "allowed  alice" in listed

    run = tmp_path / "ten.yaml"
    run.write_text("extends: isomura2023_bss.yaml\nname: t\nsessions: 1\ntrials_per_session: 4\n")
    os.chmod(where / "rig.key_secret", 0o640)
    opened = rigctl("run", str(run), "--control", "--keys", str(where), "--out", str(tmp_path / "r"), check=False)
    assert opened.returncode == 2 and "chmod 600" in opened.stderr and len(opened.stderr.splitlines()) == 1
    assert not (tmp_path / "r").exists()
    os.chmod(where / "rig.key_secret", 0o600)
    os.chmod(where / "allowed", 0o777)
    listed = rigctl("run", str(run), "--control", "--keys", str(where), "--out", str(tmp_path / "r"), check=False)
    assert listed.returncode == 2 and "writable by group or others" in listed.stderr
    os.chmod(where / "allowed", 0o700)
    (where / "allowed" / "alice.key").unlink()
    empty = rigctl("run", str(run), "--control", "--keys", str(where), "--out", str(tmp_path / "r"), check=False)
    assert empty.returncode == 2 and "allow-list" in empty.stderr and "empty" in empty.stderr


def test_control_client_errors_are_one_line(tmp_path):
    where = tmp_path / "keys"
    rigctl("keys", "--keys", str(where), "new", "control")
    missing = rigctl("control", str(tmp_path), "status", "--keys", str(where), check=False)
    assert missing.returncode == 2 and "not a rigctl run directory" in missing.stderr
    nokey = rigctl("control", "tcp://127.0.0.1:5999", "status", "--keys", str(where), "--key", "nobody",
                   "--server-key", str(where / "control.key"), check=False)
    assert nokey.returncode == 2 and "rigctl keys new nobody" in nokey.stderr
    for p in (missing, nokey):
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
