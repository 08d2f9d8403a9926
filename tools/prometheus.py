"""Prometheus and promtool for the tests of ``deploy/prometheus/`` (Debian's ``prometheus`` package, 2.x).

``ensure_prometheus()`` finds both executables, installing the package first when they are absent and we are
root (``tools/debian.py``). The package's own service is never used: the tests run a Prometheus of their own on
a free port with a throwaway config and data directory. On a machine with systemd the install would start the
packaged service (port 9090, /var/lib/prometheus), so it is stopped and disabled again right after; in a
container without an init nothing is started.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tools.debian import APT_TIMEOUT, find_or_install

PACKAGE = "prometheus"


class PrometheusUnavailable(RuntimeError):
    """prometheus or promtool is not on this machine and could not be installed."""


def find_prometheus() -> tuple[Path, Path]:
    """The ``prometheus`` and ``promtool`` executables on PATH."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        raise PrometheusUnavailable(
            "prometheus and promtool were not found on PATH: install Prometheus 2.x (Debian/Ubuntu: "
            "`apt-get install prometheus`, elsewhere the release tarball from prometheus.io) and try again."
        )
    return Path(prometheus), Path(promtool)


def ensure_prometheus() -> tuple[Path, Path]:
    """``find_prometheus()``, installing Debian's package first when it is absent and we are root."""
    return find_or_install(
        find_prometheus, PrometheusUnavailable, PACKAGE, recommends=False, after_install=_stop_packaged_service
    )


def _stop_packaged_service() -> None:
    """Under systemd the package starts ``prometheus.service``; we only wanted the executables."""
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None:
        subprocess.run(["systemctl", "disable", "--now", f"{PACKAGE}.service"], check=False, timeout=APT_TIMEOUT)
