#!/usr/bin/python
"""Ansible module: the gateway's records (audit log, baseline, state, exports), snapshotted or compared."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: halfbridge_records
short_description: Snapshot the half-gateway's records into an archive, or compare them with a backup's
description:
  - The records are every file of O(audit_dir) whose name starts with C(audit) (the log, its rotations,
    its head, its checkpoints, files set aside), the single O(files) and the directories O(trees)
    (regular files and symbolic links), those that exist.
  - With O(archive), writes them to that tar file, with C(SHA256SUMS) (sha256sum's format) and
    C(manifest.json), each under its path on the host without the leading C(/). The audit log is
    appended to while it is read, so the copy is made in the order the writer seals it, backwards.
    The head and checkpoints first, the rotated files next, the current log last, cut after
    its last complete line. The log then holds every entry the head and the checkpoints name, and
    never a partial line. If a rotation, a compression or an expiry renames a file meanwhile, the
    snapshot starts again (O(attempts) times).
  - Without O(archive), reports the records as they are (checksums, the audit chain, its last seq).
    With O(backup_files), also which of them a restore of that backup replaces, and with
    O(set_aside), renames those to C(<name><set_aside>); it never deletes.
  - With O(mtimes), sets those files' modification times (a restored rotation keeps its age).
  - The archive is the module's output, a file outside the records; the records are only read.
version_added: "0.1.0"
options:
  audit_dir:
    description: The audit log's directory.
    type: path
    required: true
  files:
    description: Single files kept with the records (the change window's baseline, the interconnect's state).
    type: list
    elements: path
    default: []
  trees:
    description: Directories kept whole (the cartography exports sent to the PP).
    type: list
    elements: path
    default: []
  archive:
    description: Write the snapshot to this gzipped tar file (its directory must exist).
    type: path
  host:
    description: The gateway's inventory name, written to the manifest.
    type: str
    default: ""
  taken:
    description: The snapshot's UTC time, written to the manifest.
    type: str
    default: ""
  attempts:
    description: Snapshots tried while files keep moving, before giving up.
    type: int
    default: 5
  backup_files:
    description: A backup's manifest entries (path, kind, type, sha256), to say what a restore of it replaces.
    type: list
    elements: dict
  set_aside:
    description: With O(backup_files), rename what a restore replaces to C(<name><set_aside>).
    type: str
  mtimes:
    description:
      - Files whose modification time to set, as {path, mtime} (seconds since the epoch), after a restore.
      - The audit writer ages its rotated files by it (compression, then expiry), so a restored file keeps its age.
    type: list
    elements: dict
attributes:
  check_mode:
    support: full
    description: Only O(set_aside) and O(mtimes) change the host; in check mode they say what they would do.
  diff_mode:
    support: none
    description: Nothing is rewritten.
author: Partner half-gateway maintainers
"""

EXAMPLES = r"""
- name: Snapshot the records
  halfbridge_records:
    audit_dir: /var/log/halfbridge
    files: [/var/lib/halfbridge/interconnect-baseline.json, /var/lib/halfbridge/interconnect.json]
    trees: [/var/lib/halfbridge/cartography]
    archive: /tmp/records.tar.gz
    host: "{{ inventory_hostname }}"
    taken: 20261129T095850Z

- name: Move aside what the restore of a backup would replace
  halfbridge_records:
    audit_dir: /var/log/halfbridge
    backup_files: "{{ manifest.files }}"
    set_aside: .replaced-20261129T101500Z
"""

RETURN = r"""
files:
  description: Each record (path, kind audit, file or tree, type file, link or directory, size, sha256, target).
  returned: always
  type: list
  elements: dict
chain:
  description: The audit log's files, oldest first (old rotations, rotations, the current file).
  returned: always
  type: list
  elements: str
last_seq:
  description: The last seq of the audit chain (the current file's last entry, else the newest rotation's).
  returned: always
  type: int
head_seq:
  description: The seq the head file sealed, if there is one.
  returned: always
  type: int
replaced:
  description: With O(backup_files), the host's files a restore replaces or that would break the restored chain.
  returned: when backup_files is given
  type: list
  elements: str
set_aside:
  description: The files renamed, as {from, to}.
  returned: when set_aside is given
  type: list
  elements: dict
touched:
  description: The files whose modification time was set back.
  returned: when mtimes is given
  type: list
  elements: str
archive:
  description: The tar file written.
  returned: when archive is given
  type: str
attempt:
  description: Which attempt gave a consistent snapshot.
  returned: when archive is given
  type: int
"""

import gzip
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import time
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

# The writer appends to these two while they are read: their copies end at their last complete line.
APPENDED = ("audit.log", "audit.checkpoints")
HEADS = ("audit.head", "audit.log.head")  # the writer's sealed head; the old in-process writer's
OLD_ROTATION = re.compile(r"^audit\.log\.(\d+)(\.gz)?$")  # logrotate's audit.log.1, audit.log.2.gz
# halfbridge-auditd's: audit-<UTC time>-<seq>.log, -<n> more on a clash, .gz once a day old.
ROTATION = re.compile(r"^audit-(\d{8}T\d{6}Z)((?:-\d+)*)\.log(\.gz)?$")
ASIDE = re.compile(r"\.replaced-\d{8}T\d{6}Z$")  # what an earlier restore moved aside
BLOCK = 1 << 16


class Moved(Exception):
    """A file of the audit log was renamed or removed while it was read (a rotation): start again."""


class _Reader(io.RawIOBase):
    """The first `size` bytes of an open file, hashed as they are read."""

    def __init__(self, handle, size: int) -> None:
        self.handle, self.left, self.digest = handle, size, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.handle.read(n)
        if len(data) != n:
            raise Moved(f"{self.handle.name} shrank while it was read")
        self.left -= n
        self.digest.update(data)
        return data


def complete_size(handle, size: int) -> int:
    """The length of the file's complete lines: up to and including its last newline within `size`."""
    end = size
    while end > 0:
        start = max(0, end - BLOCK)
        handle.seek(start)
        cut = handle.read(end - start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def last_seq_of(path: Path, size: int | None = None) -> int | None:
    """The seq of the last complete line of a log file (a .gz one is read through), or None."""
    if path.name.endswith(".gz"):
        last = b""
        with gzip.open(path, "rb") as handle:
            for line in handle:
                if line.endswith(b"\n"):
                    last = line
        return _seq(last)
    with path.open("rb") as handle:
        end = complete_size(handle, size if size is not None else os.fstat(handle.fileno()).st_size)
        start = max(0, end - BLOCK)
        while end > 0:
            handle.seek(start)
            body = handle.read(end - start)[:-1]
            cut = body.rfind(b"\n")
            if cut >= 0 or start == 0:
                return _seq(body[cut + 1 :])
            start = max(0, start - BLOCK)
    return None


def _seq(line: bytes) -> int | None:
    try:
        value = json.loads(line).get("seq")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def chain_order(names: list[str]) -> list[str]:
    """The audit log's files oldest first: logrotate's (highest number first), the writer's by time, the current."""
    old = sorted((int(m.group(1)), n) for n in names if (m := OLD_ROTATION.match(n)))
    new = sorted(
        (m.group(1), tuple(int(x) for x in m.group(2).split("-")[1:]), n) for n in names if (m := ROTATION.match(n))
    )
    return [n for _, n in reversed(old)] + [n for *_, n in new] + (["audit.log"] if "audit.log" in names else [])


def read_order(names: list[str]) -> list[str]:
    """The order a snapshot reads them: heads, then checkpoints, then the rest, the current log last."""

    def rank(name: str) -> tuple[int, str]:
        if name in HEADS:
            return 0, name
        if "checkpoints" in name:
            return 1, name
        return (3, name) if name == "audit.log" else (2, name)

    return sorted(names, key=rank)


def _plain(name: str) -> bool:
    """A name sha256sum writes without escaping it."""
    return "\n" not in name and "\\" not in name


class Records:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.audit_dir = Path(self.params["audit_dir"])

    # -- what the records are -------------------------------------------------

    def audit_names(self) -> list[str]:
        try:
            names = os.listdir(self.audit_dir)
        except FileNotFoundError:
            return []
        return sorted(
            n
            for n in names
            if n.startswith("audit")
            and not n.endswith(".tmp")
            and _plain(n)
            and stat.S_ISREG((self.audit_dir / n).lstat().st_mode)
        )

    def others(self) -> list[dict]:
        """The single files and the trees' contents, as entries without checksums."""
        found = []
        for name in self.params["files"]:
            path = Path(name)
            if path.is_file():
                found.append({"path": str(path), "kind": "file", "root": str(path), "type": "file"})
        for name in self.params["trees"]:
            root = Path(name)
            for top, dirs, files in os.walk(root):
                dirs.sort()
                for leaf in sorted(dirs) + sorted(files):
                    path = Path(top) / leaf
                    kind = "link" if path.is_symlink() else "directory" if path.is_dir() else "file"
                    if (kind != "file" or path.is_file()) and _plain(str(path)):
                        entry = {"path": str(path), "kind": "tree", "root": str(root), "type": kind}
                        if kind == "link":
                            entry["target"] = str(path.readlink())
                        found.append(entry)
        return found

    # -- the snapshot -----------------------------------------------------------

    def snapshot(self) -> dict:
        archive = Path(self.params["archive"])
        attempts = max(1, self.params["attempts"])
        why = ""
        for attempt in range(1, attempts + 1):
            try:
                result = self._snapshot(archive, final=attempt == attempts)
                result["attempt"] = attempt
                return result
            except (Moved, FileNotFoundError) as exc:
                why = str(exc)
                time.sleep(0.2 * attempt)
        self.module.fail_json(
            msg=f"The audit log kept moving while it was copied ({why}), {attempts} times: "
            "run the backup again (a rotation or a compression was under way)."
        )
        return {}  # not reached

    def _snapshot(self, archive: Path, final: bool) -> dict:
        names = self.audit_names()
        current = self.audit_dir / "audit.log"
        current_inode = current.stat().st_ino if "audit.log" in names else None
        entries, sums, head_seq = [], {}, None
        # Compressed: with become, Ansible's fetch carries the file in memory (slurp).
        with tarfile.open(archive, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
            for name in read_order(names):
                path = self.audit_dir / name
                entry = {"path": str(path), "kind": "audit", "root": str(self.audit_dir), "type": "file"}
                entry.update(self._add(tar, path, cut=name in APPENDED))
                seq = entry.pop("seq", None)
                if name in HEADS and head_seq is None:
                    head_seq = seq
                entries.append(entry)
            # The copy is consistent if nothing was renamed meanwhile and the log reaches its head.
            if self.audit_names() != names:
                raise Moved("a file of the audit log was renamed, added or removed")
            if current_inode is not None and current.stat().st_ino != current_inode:
                raise Moved("audit.log was rotated")
            chain = [self.audit_dir / n for n in chain_order(names)]
            last = self._last_seq(chain, entries)
            if head_seq is not None and (last is None or head_seq > last):
                if not final:
                    raise Moved(f"the head says seq {head_seq} but the copied log ends at {last}")
                # Not a race, then: the log itself is shorter than its head. Keep it as it is (evidence).
                self.module.warn(
                    f"the audit head says seq {head_seq} but the log ends at {last}: entries were cut off the "
                    "end on the gateway (halfbridge-audit verify says more); the backup keeps the files as they are"
                )
            for entry in self.others():
                if entry["type"] == "file":
                    entry.update(self._add(tar, Path(entry["path"]), cut=False))
                    entry.pop("seq", None)
                else:
                    self._add_other(tar, entry)
                entries.append(entry)
            for entry in entries:
                if entry["type"] == "file":
                    sums[entry["path"].lstrip("/")] = entry["sha256"]
            manifest = {
                "format": 1,
                "host": self.params["host"],
                "taken": self.params["taken"],
                "audit_dir": str(self.audit_dir),
                "chain": [str(p) for p in chain],
                "last_seq": last,
                "head_seq": head_seq,
                "files": entries,
            }
            data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
            sums["manifest.json"] = hashlib.sha256(data).hexdigest()
            self._add_bytes(tar, "manifest.json", data)
            text = "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))
            self._add_bytes(tar, "SHA256SUMS", text.encode())
        return {
            "changed": False,
            "archive": str(archive),
            "files": entries,
            "chain": manifest["chain"],
            "last_seq": last,
            "head_seq": head_seq,
        }

    @staticmethod
    def _add(tar: tarfile.TarFile, path: Path, cut: bool) -> dict:
        """Add the file (its complete lines only if `cut`), hashing the bytes added; a head's seq too."""
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if cut:
                size = complete_size(handle, size)
                handle.seek(0)
            mtime = int(os.fstat(handle.fileno()).st_mtime)
            info = tarfile.TarInfo(str(path).lstrip("/"))
            info.size, info.mode, info.mtime = size, 0o640, mtime
            if path.name in HEADS and size <= BLOCK:
                # The head is replaced whole (written beside, renamed over): its seq comes from the bytes kept.
                data = handle.read(size)
                if len(data) != size:
                    raise Moved(f"{path} shrank while it was read")
                tar.addfile(info, io.BytesIO(data))
                digest = hashlib.sha256(data).hexdigest()
                return {"size": size, "sha256": digest, "mtime": mtime, "seq": _seq(data.strip())}
            reader = _Reader(handle, size)
            tar.addfile(info, reader)
        return {"size": size, "sha256": reader.digest.hexdigest(), "mtime": mtime}

    @staticmethod
    def _add_other(tar: tarfile.TarFile, entry: dict) -> None:
        info = tarfile.TarInfo(entry["path"].lstrip("/"))
        if entry["type"] == "link":
            info.type, info.linkname = tarfile.SYMTYPE, entry["target"]
        else:
            info.type, info.mode = tarfile.DIRTYPE, 0o750
        tar.addfile(info)

    @staticmethod
    def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o640, int(time.time())
        tar.addfile(info, io.BytesIO(data))

    @staticmethod
    def _last_seq(chain: list[Path], entries: list[dict]) -> int | None:
        """The chain's last seq: the current file's last entry, else the newest rotation's (as copied)."""
        sizes = {e["path"]: e["size"] for e in entries}
        for path in reversed(chain):
            seq = last_seq_of(path, sizes.get(str(path)))
            if seq is not None:
                return seq
        return None

    # -- as they are ---------------------------------------------------------------

    def inspect(self) -> dict:
        names = self.audit_names()
        entries = []
        for name in names:
            path = self.audit_dir / name
            entries.append(
                {"path": str(path), "kind": "audit", "root": str(self.audit_dir), "type": "file", **_sum(path)}
            )
        for entry in self.others():
            if entry["type"] == "file":
                entry.update(_sum(Path(entry["path"])))
            entries.append(entry)
        chain = [self.audit_dir / n for n in chain_order(names)]
        heads = [_head(self.audit_dir / n) for n in HEADS if n in names]
        seqs = [s for s in [self._last_seq(chain, []), *heads] if s is not None]
        result = {
            "changed": False,
            "files": entries,
            "chain": [str(p) for p in chain],
            "last_seq": max(seqs) if seqs else None,
            "head_seq": heads[0] if heads else None,
        }
        if self.params["mtimes"] is not None:
            result["touched"] = self.touch(self.params["mtimes"])
            result["changed"] = bool(result["touched"])
        if self.params["backup_files"] is not None:
            result["replaced"] = replaced(entries, self.params["backup_files"])
            if self.params["set_aside"]:
                result["set_aside"] = self.move_aside(result["replaced"], self.params["set_aside"])
                result["changed"] = result["changed"] or bool(result["set_aside"])
        return result

    def touch(self, times: list[dict]) -> list[str]:
        """Set each file's modification time (its access time too); the files already right are left."""
        touched = []
        for item in times:
            path, mtime = Path(str(item.get("path"))), item.get("mtime")
            if not isinstance(mtime, int) or not path.is_file() or int(path.stat().st_mtime) == mtime:
                continue
            if not self.module.check_mode:
                os.utime(path, (mtime, mtime))
            touched.append(str(path))
        return touched

    def move_aside(self, paths: list[str], suffix: str) -> list[dict]:
        moved = [{"from": path, "to": path + suffix} for path in paths]
        for move in moved:
            if Path(move["to"]).is_symlink() or Path(move["to"]).exists():
                self.module.fail_json(
                    msg=f"{move['to']} exists already: nothing was moved aside; run the restore again"
                )
        if not self.module.check_mode:
            for move in moved:
                Path(move["from"]).rename(move["to"])
        return moved


def replaced(here: list[dict], backup: list[dict]) -> list[str]:
    """What a restore of `backup` replaces: a file that differs, and every audit file the backup does not
    have (a log of another chain would mix with the restored one). Files set aside earlier stay."""
    theirs = {b.get("path"): b for b in backup}
    found = []
    for entry in here:
        if ASIDE.search(entry["path"]) or entry["type"] == "directory":
            continue
        other = theirs.get(entry["path"])
        if other is None:
            if entry["kind"] == "audit":
                found.append(entry["path"])
        elif (
            other.get("type") != entry["type"]
            or other.get("sha256") != entry.get("sha256")
            or other.get("target") != entry.get("target")
        ):
            found.append(entry["path"])
    return found


def _sum(path: Path) -> dict:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(BLOCK):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def _head(path: Path) -> int | None:
    try:
        with path.open("rb") as handle:
            return _seq(handle.read(BLOCK).strip())
    except OSError:
        return None


def build_module() -> AnsibleModule:
    return AnsibleModule(
        argument_spec={
            "audit_dir": {"type": "path", "required": True},
            "files": {"type": "list", "elements": "path", "default": []},
            "trees": {"type": "list", "elements": "path", "default": []},
            "archive": {"type": "path"},
            "host": {"type": "str", "default": ""},
            "taken": {"type": "str", "default": ""},
            "attempts": {"type": "int", "default": 5},
            "backup_files": {"type": "list", "elements": "dict"},
            "set_aside": {"type": "str"},
            "mtimes": {"type": "list", "elements": "dict"},
        },
        mutually_exclusive=[("archive", "backup_files")],
        required_by={"set_aside": "backup_files"},
        supports_check_mode=True,
    )


def main() -> None:
    module = build_module()
    records = Records(module)
    module.exit_json(**(records.snapshot() if module.params["archive"] else records.inspect()))


if __name__ == "__main__":
    main()
