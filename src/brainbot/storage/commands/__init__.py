"""Redis's data commands by family, one mixin each (as redis-py composes its client), all
written against the small execution protocol of :class:`brainbot.storage.engine.Engine`.

To add a command: write it in its family's module, declare it with ``@reads(...)`` or
``@writes(...)`` naming the parameters that hold keys, and run the differential tests
(``tests/storage/test_differential.py``). ``DualStore`` routes it from the declaration.
"""

from brainbot.storage.commands.expiry import ExpiryCommands
from brainbot.storage.commands.hashes import HashCommands
from brainbot.storage.commands.keyspace import KeyspaceCommands
from brainbot.storage.commands.lists import ListCommands
from brainbot.storage.commands.sets import SetCommands
from brainbot.storage.commands.sorted_sets import SortedSetCommands
from brainbot.storage.commands.strings import StringCommands

__all__ = [
    "ExpiryCommands",
    "HashCommands",
    "KeyspaceCommands",
    "ListCommands",
    "SetCommands",
    "SortedSetCommands",
    "StringCommands",
]
