"""verify compares in SQL (``Ledger.mismatches``) what the source plans with what KV lists;
the rules are ``verify._compare``'s. Hypothesis checks that the SQL never calls a match
what ``_compare`` calls a difference, and the other way round."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brainbot.kv import EmbeddedKV
from brainbot.kv.namespace import PutItem
from brainbot.migration.ledger import Expected, Ledger, seen_of
from brainbot.migration.verify import _compare

DIGESTS = st.sampled_from(["a" * 24, "b" * 24])
TYPES = st.sampled_from(["string", "list", "hash", "set", "zset"])
EXACT = st.one_of(st.none(), st.integers(4_000_000_000_000, 4_000_000_020_000))
KV_EXPIRY = st.one_of(st.none(), st.just(1_800_000_000))
TOLERANCE = 5_000

expected_entries = st.builds(
    lambda digest, type_, typed, x, expiration: (digest, type_, typed, x, expiration),
    DIGESTS,
    TYPES,
    st.sampled_from([0, 1]),
    EXACT,
    KV_EXPIRY,
)
listed_entries = st.one_of(
    st.none(),  # not on KV
    st.fixed_dictionaries(
        {
            "digest": st.one_of(st.none(), DIGESTS),  # None: no stamp (written by the bot)
            "t": st.one_of(st.none(), TYPES, st.just("nonsense"), st.just(3)),
            "x": st.one_of(st.none(), EXACT, st.just(True), st.just("soon")),
            "expiration": KV_EXPIRY,
        }
    ),
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pairs=st.lists(st.tuples(expected_entries, listed_entries), min_size=1, max_size=25))
def test_sql_and_python_agree_on_what_matches(
    tmp_path_factory: object,
    pairs: list[tuple[tuple[str, str, int, int | None, int | None], dict[str, object] | None]],
) -> None:
    async def run() -> None:
        directory: Path = tmp_path_factory.mktemp("cmp")  # type: ignore[attr-defined]
        wanted, listed, reference = [], [], {}
        async with EmbeddedKV(directory / "kv.sqlite3", clock=lambda: 1_700_000_000) as kv:
            for i, ((digest, type_, typed, x, expiration), kv_side) in enumerate(pairs):
                want = Expected(f"k{i}".encode(), f"key {i}", digest, type_, typed, x, expiration)
                wanted.append(want)
                if kv_side is None:
                    reference[want.name] = False
                    continue
                meta: dict[str, object] = {}
                if kv_side["digest"] is not None:
                    meta["_m"] = f"abcd1234.run1.{kv_side['digest']}"
                for field in ("t", "x"):
                    if kv_side[field] is not None:
                        meta[field] = kv_side[field]
                item = PutItem(want.key, b"v", kv_side["expiration"], None, meta)  # type: ignore[arg-type]
                listed.append(item)
                seen = seen_of(meta, kv_side["expiration"])  # type: ignore[arg-type]
                reference[want.name] = (
                    seen.digest is not None and _compare(want, seen, TOLERANCE) is None
                )
            if listed:
                await kv.put_many(listed)
            ledger = Ledger(directory / "ledger.sqlite3")
            await ledger.load(kv, "")
        ledger.expect(wanted)
        ledger.expected_all()
        flagged = {want.name for want, _ in ledger.mismatches(TOLERANCE)}
        ledger.close()
        assert {n for n, ok in reference.items() if not ok} == flagged

    asyncio.run(run())


async def test_a_ledger_left_by_a_killed_run_is_not_read_again(tmp_path: Path) -> None:
    """A run killed before it discarded its ledger left a view of KV at that moment (and,
    after an upgrade, of another schema): the resumed run lists KV afresh."""
    path = tmp_path / "kv-state.sqlite3"
    async with EmbeddedKV(tmp_path / "kv.sqlite3") as kv:
        await kv.put("gone-since", b"v", metadata={"_m": "abcd1234.run1." + "a" * 24})
        first = Ledger(path)
        await first.load(kv, "")
        first.close()  # killed: never discarded
        await kv.delete("gone-since")
        await kv.put("new", b"v")
        again = Ledger(path)
        await again.load(kv, "")
        assert again.lookup(["gone-since", "new"]).keys() == {"new"}
        again.close()
    import sqlite3

    old = sqlite3.connect(path)  # another version's schema
    old.execute("DROP TABLE kv")
    old.execute("CREATE TABLE kv (name BLOB PRIMARY KEY, mark, run, digest, expiration, meta)")
    old.commit()
    old.close()
    async with EmbeddedKV(tmp_path / "kv.sqlite3") as kv:
        ledger = Ledger(path)
        assert await ledger.load(kv, "") == 1
        ledger.close()
