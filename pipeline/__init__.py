"""tans: the build pipeline (config, ingestion, acquisition, driver, stages, CLI)."""
import os

# A local Ray started by tans listens on 127.0.0.1 only (Ray reads this when imported, so it
# is set before anything imports ray). Clusters reached with --address are unaffected.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
