"""The SQL of a split (see partitions/split.py for the plan and why): built from a SplitPlan,
executed or printed (--dry-run) by split.py."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from psycopg import sql

from partitions import catalog
from partitions.catalog import LooseTable, Partition, PartitionedTable
from partitions.splitstate import SourceState

SQL = Path(__file__).parent / "sql"


@dataclass(frozen=True)
class SplitPlan:
    """Everything the statements need, fixed before the first one runs."""

    table: PartitionedTable
    modulus: int
    remainder: int
    source: Partition | LooseTable
    source_state: SourceState
    low: tuple[str, int, int]  # (name, modulus, remainder)
    high: tuple[str, int, int]
    resumed: bool = False
    mirror_function: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mirror_function", f"{self.source.name}_split_mirror")

    def ident(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.table.schema, name)

    @property
    def targets(self) -> tuple[tuple[str, int, int], tuple[str, int, int]]:
        return self.low, self.high

    @property
    def mirror_lock(self) -> sql.Composed:
        """The arguments of the split's mirror advisory lock, `namespace, key`."""
        return sql.SQL("{}, {}").format(sql.Literal(catalog.MIRROR_LOCK_NAMESPACE),
                                        sql.Literal(catalog.mirror_lock_key(self.source.oid)))

    def check_name(self, target: str) -> sql.Identifier:
        return sql.Identifier(target + catalog.SPLIT_CHECK_SUFFIX)


def _cols(names: tuple[str, ...], prefix: str = "") -> sql.Composed:
    pre = sql.SQL(prefix)
    return sql.SQL(", ").join(pre + sql.Identifier(c) for c in names)


def _fits(plan: SplitPlan, target: tuple[str, int, int], prefix: str = "") -> sql.Composed:
    _, m, r = target
    return sql.SQL("pg_catalog.satisfies_hash_partition({parent}::regclass, {m}, {r}, {keys})").format(
        parent=sql.Literal(f"{sql.Identifier(plan.table.schema).as_string(None)}."
                           f"{sql.Identifier(plan.table.name).as_string(None)}"),
        m=sql.Literal(m), r=sql.Literal(r), keys=_cols(plan.table.key_columns, prefix))


def create_target_sql(plan: SplitPlan, target: tuple[str, int, int], owner: str | None) -> list[sql.Composed]:
    name = target[0]
    out = [
        sql.SQL("create table {t} (like {parent} including all)").format(t=plan.ident(name),
                                                                         parent=plan.table.identifier()),
        sql.SQL("alter table {t} add constraint {c} check ({fits})").format(
            t=plan.ident(name), c=plan.check_name(name), fits=_fits(plan, target)),
    ]
    if owner:
        out.append(sql.SQL("alter table {t} owner to {o}").format(t=plan.ident(name), o=sql.Identifier(owner)))
    return out


def mirror_function_sql(plan: SplitPlan) -> sql.Composed:
    t = plan.table
    pk = _cols(t.primary_key)
    non_key = [c for c in t.columns if c not in t.primary_key]
    on_conflict = (sql.SQL("do update set ") + sql.SQL(", ").join(
        sql.SQL("{c} = excluded.{c}").format(c=sql.Identifier(c)) for c in non_key)) if non_key else sql.SQL("do nothing")

    def upsert(target: tuple[str, int, int]) -> sql.Composed:
        return sql.SQL("insert into {t} as t ({cols}) values ({vals}) on conflict ({pk}) {conflict};").format(
            t=plan.ident(target[0]), cols=_cols(t.columns), vals=_cols(t.columns, "new."), pk=pk,
            conflict=on_conflict)

    def delete(target: tuple[str, int, int]) -> sql.Composed:
        return sql.SQL("delete from {t} as t where ({pk}) = ({old});").format(
            t=plan.ident(target[0]), pk=_cols(t.primary_key, "t."), old=_cols(t.primary_key, "old."))

    body = sql.SQL((SQL / "mirror.sql").read_text()).format(
        source=sql.SQL(plan.source.qualified), old=_cols(t.primary_key, "old."), new=_cols(t.primary_key, "new."),
        lock=plan.mirror_lock, delete_low=delete(plan.low), delete_high=delete(plan.high),
        fits_low=_fits(plan, plan.low, "new."), upsert_low=upsert(plan.low), upsert_high=upsert(plan.high))
    text = body.as_string(None)
    quote = "$mirror$" if "$mirror$" not in text else "$pgvote_split_mirror$"
    return sql.SQL("create or replace function {fn}() returns trigger language plpgsql "
                   "set search_path = pg_catalog, pg_temp as {q}{body}{q}").format(
        fn=plan.ident(plan.mirror_function), q=sql.SQL(quote), body=sql.SQL(text))


def mirror_sql(plan: SplitPlan) -> list[sql.Composed]:
    fn, src, trg = plan.ident(plan.mirror_function), plan.source.identifier(), sql.Identifier(catalog.MIRROR_TRIGGER)
    return [
        mirror_function_sql(plan),
        sql.SQL("revoke all on function {fn}() from public").format(fn=fn),
        sql.SQL("drop trigger if exists {trg} on {src}").format(trg=trg, src=src),
        sql.SQL("create trigger {trg} after insert or update or delete on {src} "
                "for each row execute function {fn}()").format(trg=trg, src=src, fn=fn),
        sql.SQL("alter table {src} enable always trigger {trg}").format(src=src, trg=trg),
    ]


def batch_sql(plan: SplitPlan, batch_size: int, first: bool) -> sql.Composed:
    t = plan.table
    pk = _cols(t.primary_key)
    after = sql.SQL("") if first else sql.SQL("where ({pk}) > ({params})").format(
        pk=pk, params=sql.SQL(", ").join(sql.Placeholder() * len(t.primary_key)))
    return sql.SQL((SQL / "copy_batch.sql").read_text()).format(
        cols=_cols(t.columns), source=plan.source.identifier(), after=after, pk=pk, n=sql.Literal(batch_size),
        low=plan.ident(plan.low[0]), high=plan.ident(plan.high[0]), fits=_fits(plan, plan.low),
        pk_desc=sql.SQL(", ").join(sql.SQL("{} desc").format(sql.Identifier(c)) for c in t.primary_key))


def retired_name(plan: SplitPlan) -> str:
    return plan.source.name + catalog.RETIRED_SUFFIX


def switch_sql(plan: SplitPlan) -> tuple[list[sql.Composed], list[sql.Composed]]:
    """(lock statements, statements run under the locks)."""
    parent, src = plan.table.identifier(), plan.source.identifier()
    locks = [sql.SQL("lock table {} in access exclusive mode").format(parent),
             sql.SQL("lock table {} in access exclusive mode").format(src)]
    work: list[sql.Composed] = []
    if plan.source_state == "attached":
        work.append(sql.SQL("alter table {} detach partition {}").format(parent, src))
    elif plan.source_state == "detach pending":
        work.append(sql.SQL("alter table {} detach partition {} finalize").format(parent, src))
    for name, m, r in plan.targets:
        work.append(sql.SQL("alter table {} attach partition {} for values with (modulus {}, remainder {})").format(
            parent, plan.ident(name), sql.Literal(m), sql.Literal(r)))
    for name, _, _ in plan.targets:
        work.append(sql.SQL("alter table {} drop constraint {}").format(plan.ident(name), plan.check_name(name)))
    if plan.source_state == "attached":
        work.append(sql.SQL("drop trigger if exists {} on {}").format(sql.Identifier(catalog.MIRROR_TRIGGER), src))
    work.append(sql.SQL("drop function if exists {}()").format(plan.ident(plan.mirror_function)))
    # Dropping a big table costs its commit real time (dropping its buffers, truncating its
    # files): done after the switch, when no writer waits for it.
    work.append(sql.SQL("alter table {} rename to {}").format(src, sql.Identifier(retired_name(plan))))
    return locks, work


def drop_retired_sql(schema: str, name: str) -> sql.Composed:
    return sql.SQL("drop table if exists {}").format(sql.Identifier(schema, name))
