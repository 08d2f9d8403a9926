"""Installing a Debian package the project's tools need (PostgreSQL, HAProxy), when we may."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

APT_TIMEOUT = 900.0  # seconds: a slow mirror, not a hang


def can_install() -> bool:
    """Root on a machine with apt-get: the tools install what they need instead of failing."""
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_install(package: str, *, recommends: bool = True) -> None:
    """``apt-get install -y package``; a fresh container often has no package lists yet, so they are updated
    only when the plain install fails. The caller checks for the result (the install may still fail).
    ``recommends=False`` leaves out what the package only recommends (prometheus: a node exporter, ipmitool)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", *([] if recommends else ["--no-install-recommends"]), package]
    if subprocess.run(install, env=env, check=False, timeout=APT_TIMEOUT).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=False, timeout=APT_TIMEOUT)
        subprocess.run(install, env=env, check=False, timeout=APT_TIMEOUT)


def find_or_install(
    find: Callable[[], T],
    unavailable: type[Exception],
    package: str,
    *,
    recommends: bool = True,
    after_install: Callable[[], None] | None = None,
) -> T:
    """``find()``; when it raises ``unavailable`` and we may install, ``apt_install(package)``, then ``find()`` again
    (its error stands if the install did not help). ``after_install`` runs once the package is in."""
    try:
        return find()
    except unavailable:
        if not can_install():
            raise
    apt_install(package, recommends=recommends)
    if after_install is not None:
        after_install()
    return find()
