"""CURVE key pairs and the rig's allow-list: who may steer a run or read a stream that leaves the machine.

Files (default directory `~/.config/rigctl/keys`, or $RIGCTL_KEYS, or `--keys DIR`):
  NAME.key           the public key (ZeroMQ certificate text, readable by `zmq.auth.load_certificate`)
  NAME.key_secret    the public and the secret key; written 0600, refused when group or world may read it
  allowed/NAME.key   the rig's allow-list: public keys of the clients it accepts (file name = client name)
Both files are written 0600 in a 0700 directory; the allow-list is refused when others may write to it
(whoever can add a file there can steer the stimulator).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from rigctl.errors import RigctlError

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


class KeyFileError(RigctlError):
    """A key file is missing, malformed, or too open."""


@dataclass(frozen=True)
class KeyPair:
    name: str
    public: bytes  # z85, 40 bytes
    secret: bytes | None  # z85, 40 bytes; None for a public key only


def key_dir(given: Path | str | None = None) -> Path:
    if given:
        return Path(given)
    env = os.environ.get("RIGCTL_KEYS")
    return Path(env) if env else Path.home() / ".config" / "rigctl" / "keys"


def allow_dir(keys: Path) -> Path:
    return Path(keys) / "allowed"


def check_name(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= NAME_CHARS or name.startswith("."):
        raise KeyFileError(f"key name {name[:80]!r}: allowed: 1-64 letters, digits, '_', '-', '.' (not first)")
    return name


def _certificate_text(public: bytes, secret: bytes | None) -> str:
    lines = ["#   rigctl CURVE key (ZeroMQ certificate format)", "metadata", "curve",
             f'    public-key = "{public.decode("ascii")}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Create `path` 0600 (never more open, whatever the umask), refusing to replace an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; remove it first or choose another name") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write ({exc.strerror or exc})") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _private_dir(path: Path) -> Path:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create ({exc.strerror or exc})") from None
    return path


def new_keypair(name: str, keys: Path) -> tuple[Path, Path]:
    """Make a CURVE key pair NAME in `keys`; returns (public file, secret file)."""
    check_name(name)
    _private_dir(Path(keys))
    public, secret = zmq.curve_keypair()
    pub_path, sec_path = Path(keys) / f"{name}.key", Path(keys) / f"{name}.key_secret"
    if pub_path.exists() or sec_path.exists():
        raise KeyFileError(f"{pub_path} or {sec_path} exists; remove them first or choose another name")
    _write_private(sec_path, _certificate_text(public, secret))
    _write_private(pub_path, _certificate_text(public, None))
    return pub_path, sec_path


def _check_not_readable_by_others(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path}: a secret key readable or writable by group or others (mode "
                        f"{stat.S_IMODE(mode):o}) is refused; `chmod 600 {path}`")


def _check_not_writable_by_others(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KeyFileError(f"{path}: writable by group or others (mode {stat.S_IMODE(mode):o}); anyone who can "
                        f"write there could add a key; `chmod go-w {path}`")


def _load(path: Path, name: str) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a CURVE key file ({exc})") from None
    if public is None or len(public) != 40:
        raise KeyFileError(f"{path}: no valid public-key line")
    return public, secret


def load_keypair(name: str, keys: Path) -> KeyPair:
    """The key pair NAME (its secret file, which must be private)."""
    check_name(name)
    path = Path(keys) / f"{name}.key_secret"
    if not path.is_file():
        raise KeyFileError(f"no key {name!r}: {path} is missing; make one with `rigctl keys new {name}"
                        f"{'' if Path(keys) == key_dir() else ' --keys ' + str(keys)}`")
    _check_not_readable_by_others(path)
    public, secret = _load(path, name)
    if secret is None or len(secret) != 40:
        raise KeyFileError(f"{path}: no valid secret-key line")
    return KeyPair(name, public, secret)


def load_public(ref: str, keys: Path) -> bytes:
    """A public key: a 40-character z85 string, a key file, or the name of a key in `keys`."""
    if len(ref) == 40 and not Path(ref).exists():
        try:
            zmq.utils.z85.decode(ref.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            pass
        else:
            return ref.encode("ascii")
    path = Path(ref)
    if not path.is_file():
        path = Path(keys) / f"{check_name(ref)}.key"
    if not path.is_file():
        raise KeyFileError(f"public key {ref[:80]!r}: not a z85 key, a key file, or a key in {keys}")
    return _load(path, path.stem)[0]


def allow(public_file: Path, keys: Path, name: str | None = None) -> Path:
    """Add a client's public key to the rig's allow-list (as allowed/NAME.key, 0600)."""
    public = load_public(str(public_file), keys)
    name = check_name(name or Path(public_file).name.split(".")[0])
    target = _private_dir(allow_dir(keys)) / f"{name}.key"
    _write_private(target, _certificate_text(public, None))
    return target


def allowed_clients(keys: Path) -> dict[bytes, str]:
    """The allow-list: z85 public key -> client name. The directory and its files must not be writable by
    others; an empty or missing list admits nobody."""
    where = allow_dir(keys)
    if not where.is_dir():
        return {}
    _check_not_writable_by_others(where)
    out: dict[bytes, str] = {}
    for path in sorted(where.glob("*.key")):
        _check_not_writable_by_others(path)
        public, _ = _load(path, path.stem)
        out[public] = path.stem
    return out
