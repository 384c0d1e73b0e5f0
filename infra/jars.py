"""Jar folders resolved by Maven from the poms under ``infra/maven/``.

``resolve`` runs ``mvn package`` once per folder and leaves a stamp; the broker and Spark only read
the folders, so nothing is downloaded when they start.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path
from typing import Literal

from infra.exceptions import JarsMissingError

logger = logging.getLogger(__name__)

JarSet = Literal["kafka", "spark"]
POM_DIR = Path(__file__).resolve().parent / "maven"
STAMP = ".resolved"


def jar_dir(jars_root: Path, jar_set: JarSet) -> Path:
    """Return the folder of one resolved jar set."""
    return jars_root / jar_set


def is_resolved(jars_root: Path, jar_set: JarSet) -> bool:
    """Tell whether ``resolve`` completed for ``jar_set``."""
    return (jar_dir(jars_root, jar_set) / STAMP).is_file()


def require(jars_root: Path, jar_set: JarSet) -> list[Path]:
    """Return the jars of ``jar_set``, raising ``JarsMissingError`` when they were not resolved."""
    folder = jar_dir(jars_root, jar_set)
    if not is_resolved(jars_root, jar_set):
        raise JarsMissingError(
            f"the {jar_set} jars are not resolved in {folder}; "
            f"run `bcratos stack jars` (or `make`) to fetch them from Maven Central once"
        )
    return sorted(folder.glob("*.jar"))


def resolve(jars_root: Path, jar_set: JarSet, *, force: bool = False) -> Path:
    """Resolve ``jar_set`` with Maven into its folder unless already done; return the folder."""
    folder = jar_dir(jars_root, jar_set)
    if is_resolved(jars_root, jar_set) and not force:
        return folder

    mvn = shutil.which("mvn")
    if mvn is None:
        raise JarsMissingError(
            "Maven (`mvn`) is not on PATH; install Maven 3.8+ to resolve the broker and Delta jars"
        )
    if folder.exists():
        shutil.rmtree(folder)
    pom = POM_DIR / jar_set / "pom.xml"
    logger.info("resolving %s jars with Maven into %s", jar_set, folder)
    command = [mvn, "-q", "-B", "-f", str(pom), "package", f"-Djars.dir={folder}"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise JarsMissingError(
            f"Maven failed to resolve the {jar_set} jars from {pom} "
            f"(exit code {result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    (folder / STAMP).write_text("resolved by infra/jars.py\n")
    return folder
