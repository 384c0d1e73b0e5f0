"""Spark session factory with Delta Lake configured from the jars Maven resolved.

Spark never downloads packages at run time: ``spark.jars`` lists the local Delta jars and
``spark.jars.packages`` stays unset. Local mode by default; set ``spark.master`` for a cluster.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from bcratos.config import Settings
from infra import jars

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def spark_conf(settings: Settings, app_name: str = "bcratos") -> dict[str, str]:
    """Return the Spark configuration of a session for ``settings``."""
    delta_jars = jars.require(settings.jars_dir, "spark")
    spark_dir = settings.data_dir / "spark"
    conf = {
        "spark.app.name": app_name,
        "spark.master": settings.spark.master,
        "spark.driver.memory": settings.spark.driver_memory,
        "spark.jars": ",".join(str(jar) for jar in delta_jars),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
        "spark.sql.warehouse.dir": str(spark_dir / "warehouse"),
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={spark_dir / 'derby'}",
        "spark.local.dir": str(spark_dir / "tmp"),
        "spark.ui.enabled": "false",
        # Python workers run in this interpreter's environment, not whatever `python3` is.
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.session.timeZone": "UTC",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        # Delta reads its log with 50 tasks by default, which dominates small jobs on few cores.
        "spark.databricks.delta.snapshotPartitions": str(settings.spark.shuffle_partitions),
        "spark.ui.showConsoleProgress": "false",
    }
    conf.update(settings.spark.conf)
    return conf


def spark_session(settings: Settings, app_name: str = "bcratos") -> SparkSession:
    """Return a Spark session with Delta Lake (the active one when it already exists)."""
    from pyspark.sql import SparkSession

    conf = spark_conf(settings, app_name)
    (settings.data_dir / "spark" / "tmp").mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
