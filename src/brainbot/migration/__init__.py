"""Redis/Upstash to Workers KV: migrate (resumable), verify, document, roll back.

See docs/migration.md for the runbook and docs/rollback.md for the way back.
"""

from brainbot.errors import MigrationError, RollbackError
from brainbot.migration.rollback import RollbackReport, rollback
from brainbot.migration.run import Report, migrate_redis_to_kv
from brainbot.migration.transform import Options
from brainbot.migration.verify import Difference, VerifyReport, verify

__all__ = [
    "Difference",
    "MigrationError",
    "Options",
    "Report",
    "RollbackError",
    "RollbackReport",
    "VerifyReport",
    "migrate_redis_to_kv",
    "rollback",
    "verify",
]
