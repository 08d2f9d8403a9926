"""Refresh the vendored Socket.IO browser client in ``server/web/vendor/`` from the npm package.

    python -m tools.vendor_socketio              # socket.io-client at VERSION (the contract's locked 4.8.1)
    python -m tools.vendor_socketio --version 4.8.1

Runs ``npm pack socket.io-client@<version>`` in a temporary directory (the registry's ordinary client; no
install, no scripts run), then copies the package's prebuilt browser bundle ``dist/socket.io.esm.min.js``,
its source map and its ``LICENSE`` next to a ``VERSION`` note (package, version, tarball sha512 integrity).
The chat imports the bundle as an ES module; nothing is built.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "socket.io-client"
VERSION = "4.8.1"  # the frontend's locked version (contract §0)
FILES = {
    "package/dist/socket.io.esm.min.js": "socket.io.esm.min.js",
    "package/dist/socket.io.esm.min.js.map": "socket.io.esm.min.js.map",
    "package/LICENSE": "LICENSE",
}
DEST = Path(__file__).resolve().parent.parent / "server" / "web" / "vendor"
NPM_TIMEOUT = 300.0  # seconds: a slow registry, not a hang


def vendor(version: str, dest: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is needed to fetch the package (Debian: apt-get install npm)")
    with tempfile.TemporaryDirectory(prefix="vendor-sio-") as tmp:
        done = subprocess.run(
            [npm, "pack", f"{PACKAGE}@{version}", "--json", "--ignore-scripts"],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=True,
            timeout=NPM_TIMEOUT,
        )
        [info] = json.loads(done.stdout)
        with tarfile.open(Path(tmp) / info["filename"]) as tar:
            dest.mkdir(parents=True, exist_ok=True)
            for member, name in FILES.items():
                source = tar.extractfile(member)
                if source is None:
                    raise SystemExit(f"{member} is not a file in {info['filename']}")
                (dest / name).write_bytes(source.read())
    note = (
        f"{PACKAGE} {info['version']}\n"
        f"integrity {info['integrity']}\n"
        f"files: {', '.join(FILES.values())} (from the npm package's dist/ and its LICENSE, unmodified)\n"
        "refresh: python -m tools.vendor_socketio --version <version>\n"
    )
    (dest / "VERSION").write_text(note)
    print(f"vendored {PACKAGE} {info['version']} into {dest}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default=VERSION, help=f"the package version (default {VERSION})")
    parser.add_argument("--dest", type=Path, default=DEST, help="where the files go (default: server/web/vendor)")
    args = parser.parse_args(argv)
    vendor(args.version, args.dest)


if __name__ == "__main__":
    main(sys.argv[1:])
