"""verify compares in SQL (``Ledger.mismatches``) what the source plans with what KV lists;
the rules are ``ledger.difference``'s. Hypothesis checks that the SQL never calls a match
what ``_compare`` calls a difference, and the other way round."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brainbot.kv import EmbeddedKV
from brainbot.kv.namespace import PutItem
from brainbot.migration.ledger import Expected, Ledger, difference, expiry_floor, seen_of, shape_of

DIGESTS = st.sampled_from(["a" * 24, "b" * 24])
TYPES = st.sampled_from(["string", "list", "hash", "set", "zset"])
EXACT = st.one_of(st.none(), st.integers(4_000_000_000_000, 4_000_000_020_000))
NOW = 1_700_000_000
KV_EXPIRY = st.one_of(
    st.none(),
    # far off: the same second, within the tolerance, beyond it
    st.sampled_from([1_800_000_000, 1_800_000_004, 1_800_000_100]),
    # KV's 60-second floor: any two under it are the same expiry
    st.sampled_from([NOW + 30, NOW + 66, NOW + 67, NOW + 70]),
)
ENCODING = st.sampled_from([None, "b"])
TOLERANCE = 5_000
FLOOR = expiry_floor(TOLERANCE, NOW)

expected_entries = st.builds(
    lambda digest, type_, typed, x, expiration, e: (digest, type_, typed, x, expiration, e),
    DIGESTS,
    TYPES,
    st.sampled_from([0, 1]),
    EXACT,
    KV_EXPIRY,
    ENCODING,
)
listed_entries = st.one_of(
    st.none(),  # not on KV
    st.fixed_dictionaries(
        {
            "digest": st.one_of(st.none(), DIGESTS),  # None: no stamp (written by the bot)
            "t": st.one_of(st.none(), TYPES, st.just("nonsense"), st.just(3)),
            "x": st.one_of(st.none(), EXACT, st.just(True), st.just("soon")),
            "e": ENCODING,
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
    pairs: list[
        tuple[tuple[str, str, int, int | None, int | None, str | None], dict[str, object] | None]
    ],
) -> None:
    async def run() -> None:
        directory: Path = tmp_path_factory.mktemp("cmp")  # type: ignore[attr-defined]
        wanted, listed, reference = [], [], {}
        async with EmbeddedKV(directory / "kv.sqlite3", clock=lambda: NOW - 100) as kv:
            for i, ((digest, type_, typed, x, expiration, e), kv_side) in enumerate(pairs):
                shape = shape_of({"t": type_} | ({"e": e} if e else {}))
                want = Expected(
                    f"k{i}".encode(), f"key {i}", digest, type_, typed, x, expiration, shape
                )
                wanted.append(want)
                if kv_side is None:
                    reference[want.name] = False
                    continue
                meta: dict[str, object] = {}
                if kv_side["digest"] is not None:
                    meta["_m"] = f"abcd1234.run1.{kv_side['digest']}"
                for field in ("t", "x", "e"):
                    if kv_side[field] is not None:
                        meta[field] = kv_side[field]
                item = PutItem(want.key, b"v", kv_side["expiration"], None, meta)  # type: ignore[arg-type]
                listed.append(item)
                seen = seen_of(meta, kv_side["expiration"])  # type: ignore[arg-type]
                reference[want.name] = (
                    seen.digest is not None and difference(want, seen, TOLERANCE, FLOOR) is None
                )
            if listed:
                await kv.put_many(listed)
            ledger = Ledger(directory / "ledger.sqlite3")
            await ledger.load(kv, "")
        ledger.expect(wanted)
        ledger.expected_all()
        flagged = {want.name for want, _ in ledger.mismatches(TOLERANCE, FLOOR)}
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
