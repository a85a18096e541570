"""What happens to a project's vectors when source rows go away: DELETE, TRUNCATE, a key changed, a swap.

pg_vectorize ties its tables to the source with foreign keys (``ON DELETE CASCADE``): a plain ``TRUNCATE`` of
the source then fails, and a ``DELETE`` pays for deleting every vector with its row. Here the source's
triggers only record what was removed in ``vectorize._removed_<job>`` (each key, or a marker row: "any key
may be gone") and take the removed rows off the queue and the errors table, in the statement that removes
them. A removed row's vectors are never read again (every read joins or probes the source: search, RAG,
status, the view) and the next generation run deletes them (``storage.reconcile_removed``) — unless the key
came back meanwhile, as in a full reload (``TRUNCATE`` + ``COPY``, or ``DELETE`` + ``INSERT``): its vectors are
then kept, and embedded again only if its text changed (the stored md5).

An ``append`` project's vectors live in the source rows themselves and go with them: its triggers keep each
removed row's vector and text md5 in ``_removed_<job>``, and the next generation run writes them back into the
rows that came back with the same text, without asking the model.

A table put in the source's place (a rename-swap, or DROP and CREATE) is attached by ``attach``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from psycopg import Cursor, sql

from airflow_vectorize.naming import quoted, transaction_setting

if TYPE_CHECKING:
    from airflow_vectorize.catalog import Project

log = logging.getLogger(__name__)


def create_removed_table(cur: Cursor, project: Project) -> None:
    """``vectorize._removed_<job>``: the key columns (their exact types, copied from the source), and for an
    append project the removed row's vector, text md5 and when it was embedded. No key constraint: a key may be
    removed twice; a join project's TRUNCATE writes one row of NULLs (every key may be gone)."""
    names = project.names
    extra = sql.SQL("")
    if not project.is_join:
        extra = sql.SQL("; ALTER TABLE {removed} ADD COLUMN text_md5 uuid, ADD COLUMN embeddings vector({n}),"
                        " ADD COLUMN updated_at timestamptz").format(
            removed=names.removed, n=sql.Literal(project.dimensions))
    cur.execute(sql.SQL("CREATE TABLE {removed} AS SELECT {keys} FROM {source} WITH NO DATA{extra}").format(
        removed=names.removed, keys=project.key.names(), source=names.source, extra=extra))


def tracks_keys(project: Project) -> bool:
    """Whether a DELETE records each removed key (from the statement's transition table): only for append
    projects, whose removed rows' vectors must be kept. A join project's DELETE records only that rows went
    (one marker row, as a TRUNCATE) and removes queue entries and errors whose row is gone: capturing the
    deleted rows alone costs a DELETE ~1.7× (100k of 1M rows), and the project's next run compares every
    stored key with the source in one anti-join instead (``storage.reconcile_removed``)."""
    return not project.is_join


def define_trigger_function(cur: Cursor, function: sql.Composable, body: str) -> None:
    """Create (or replace) a project's trigger function. It runs as its owner, the role that made the project
    (``SECURITY DEFINER``): a role that writes the source needs no privilege on the project's tables, as with
    pg_vectorize's foreign keys, whose cascades run as the referencing table's owner. Its search_path is
    pinned (every name in it is schema-qualified), and no other role may put it on a table."""
    cur.execute(sql.SQL(
        "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER"
        " SET search_path = pg_catalog, pg_temp AS {body}; REVOKE ALL ON FUNCTION {function}() FROM PUBLIC"
    ).format(function=function, body=sql.Literal(body)))


def fire_always(cur: Cursor, project: Project, triggers: Iterable[str]) -> None:
    """Make the project's ``triggers`` on its source fire in every session (``ENABLE ALWAYS``), also under
    ``session_replication_role = replica``: a logical replication subscriber's apply and ETL loads that skip
    foreign-key checks run so, and would otherwise leave the queue and the removed keys behind the source.
    A partitioned source's partitions, those to come too, take the setting. It needs the table's ownership: a
    role that may only put triggers on it (``GRANT TRIGGER``) leaves them firing in origin sessions, and is
    told so."""
    cur.execute("SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = to_regclass(%s)",
                [project.names.source.as_string(cur)])
    owned = cur.fetchone()
    if not (owned and owned[0]):
        log.warning("Project %r: its triggers on %s fire in origin sessions only (not under session_replication_role"
                    " = replica): setting them ENABLE ALWAYS needs the table's owner, which this role is not",
                    project.name, project.names.source.as_string(cur))
        return
    cur.execute(sql.SQL("ALTER TABLE {} {}").format(project.names.source, sql.SQL(", ").join(
        sql.SQL("ENABLE ALWAYS TRIGGER {}").format(sql.Identifier(trigger)) for trigger in triggers)))


def ensure_fired_always(cur: Cursor, project: Project) -> bool:
    """Give a project made by an earlier version triggers that fire in every session (``fire_always``);
    returns whether it did. One catalog read when they do; a trigger a user disabled stays disabled."""
    names = project.names
    cur.execute("SELECT array_agg(t.tgname) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                " WHERE t.tgrelid = to_regclass(%s) AND t.tgname = ANY(%s) AND t.tgenabled = 'O'"
                " AND pg_has_role(c.relowner, 'USAGE')",  # the owner's to change (a project of a non-owner)
                [names.source.as_string(cur), [*names.removal_triggers, names.insert_trigger, names.update_trigger]])
    triggers = cur.fetchone()[0]
    if not triggers:
        return False
    fire_always(cur, project, triggers)
    return True


def replace_function(cur: Cursor, project: Project) -> None:
    """Write ``vectorize.handle_removal_<job>()`` again for the project as it is configured now (a realtime
    project's queues the new key of a row whose key changed)."""
    define_trigger_function(cur, project.names.removal_function, _function_body(project).as_string(cur))


def refresh_function(cur: Cursor, project: Project) -> bool:
    """Write ``vectorize.handle_removal_<job>()`` again when it is not today's (a project made by an earlier
    version: another body, or running as the writer's role); returns whether it did. One catalog read when
    it is."""
    body = _function_body(project).as_string(cur)
    cur.execute("SELECT prosrc = %s AND prosecdef FROM pg_proc WHERE oid = to_regprocedure(%s)",
                [body, quoted(project.names.removal_function_name) + "()"])
    row = cur.fetchone()
    if row is None or row[0]:
        return False
    from airflow_vectorize import catalog

    if project.is_join and catalog.source_is_partitioned(cur, project):  # its DELETE trigger's WHEN reads _marked
        recreate_triggers(cur, project)
    else:
        replace_function(cur, project)
    return True


def create_triggers(cur: Cursor, project: Project) -> None:
    """The source's DELETE (per statement; from its transition table when ``tracks_keys``), TRUNCATE and
    key-change (per row, only when a key column is updated) triggers, all calling
    ``vectorize.handle_removal_<job>()``.

    On a partitioned source the DELETE trigger is a row trigger: PostgreSQL puts those on every partition
    (those to come too) and fires them for a DELETE naming a partition, which fires none of the partitioned
    table's statement triggers. It fires BEFORE each row, so that its WHEN condition sees what the calls
    before it did: a join project's is called once a transaction (it writes the marker and sets a
    transaction-local setting the condition reads); an append project's for each row with a vector (it keeps
    the vector). The queue entries and errors of the deleted rows go at the next run
    (``storage.reconcile_removed``)."""
    from airflow_vectorize import catalog

    names, key = project.names, project.key
    if not catalog.source_is_partitioned(cur, project):
        deletes = sql.SQL("AFTER DELETE ON {}{} FOR EACH STATEMENT").format(
            names.source, sql.SQL(" REFERENCING OLD TABLE AS vectorize_old_rows" if tracks_keys(project) else ""))
    elif project.is_join:
        deletes = sql.SQL("BEFORE DELETE ON {} FOR EACH ROW WHEN (current_setting({}, true) IS DISTINCT FROM 'yes')"
                          ).format(names.source, _marked(project))
    else:
        deletes = sql.SQL("BEFORE DELETE ON {} FOR EACH ROW WHEN (OLD.{} IS NOT NULL)").format(
            names.source, sql.Identifier(names.embeddings_column))
    define_trigger_function(cur, names.removal_function, _function_body(project).as_string(cur))
    cur.execute(sql.SQL(
        "CREATE TRIGGER {delete} {deletes} EXECUTE FUNCTION {function}();"
        " CREATE TRIGGER {truncate} BEFORE TRUNCATE ON {source} FOR EACH STATEMENT EXECUTE FUNCTION {function}();"
        " CREATE TRIGGER {rekey} AFTER UPDATE OF {keys} ON {source} FOR EACH ROW WHEN ({changed})"
        " EXECUTE FUNCTION {function}()"
    ).format(function=names.removal_function,
             delete=sql.Identifier(names.delete_trigger), truncate=sql.Identifier(names.truncate_trigger),
             rekey=sql.Identifier(names.rekey_trigger), source=names.source, keys=key.names(), deletes=deletes,
             changed=sql.SQL("({}) IS DISTINCT FROM ({})").format(key.names("old"), key.names("new"))))
    fire_always(cur, project, names.removal_triggers)


def recreate_triggers(cur: Cursor, project: Project) -> None:
    """Drop the source's removal triggers (those there) and make today's (``create_triggers``)."""
    for trigger in project.names.removal_triggers:
        cur.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), project.names.source))
    create_triggers(cur, project)


def _marked(project: Project) -> sql.Literal:
    """The transaction-local setting that says a join project's marker is written (a partitioned source)."""
    return transaction_setting("removed", project.job_id)


def _function_body(project: Project) -> sql.Composable:
    names, key = project.names, project.key
    parts = dict(removed=names.removed, queue=names.queue, errors=names.errors, keys=key.names(),
                 o_keys=key.names("o"), old_keys=key.names("old"), new_keys=key.names("new"),
                 in_old=key.equals("x", "o"), source=names.source, target=names.target,
                 emb=sql.Identifier(names.embeddings_column), md5=sql.Identifier(names.text_md5_column),
                 updated_at=sql.Identifier(names.updated_at_column), channel=sql.Literal(names.channel),
                 documents=names.documents)
    marker = sql.SQL(  # a row of NULLs: "any key may be gone"
        "IF NOT EXISTS (SELECT FROM {removed} WHERE {no_key}) THEN INSERT INTO {removed} DEFAULT VALUES; END IF;"
    ).format(no_key=key.any_null(None), **parts)
    if project.is_join:  # a partitioned source's row trigger (see create_triggers): the marker
        on_row_delete = sql.SQL("PERFORM set_config({marked}, 'yes', true); {marker}").format(
            marked=_marked(project), marker=marker)
    else:
        on_row_delete = sql.SQL(
            "INSERT INTO {removed} ({keys}, text_md5, embeddings, updated_at)"
            " VALUES ({old_keys}, OLD.{md5}, OLD.{emb}, OLD.{updated_at});").format(**parts)
    if project.is_join:  # the vectors stay where they are; the next generation run deletes them
        on_truncate = marker
        on_delete = sql.SQL("INSERT INTO {removed} ({keys}) SELECT {o_keys} FROM vectorize_old_rows o;").format(**parts)
        on_rekey = sql.SQL("INSERT INTO {removed} ({keys}) VALUES ({old_keys});").format(**parts)
    else:  # the vectors go with the rows: keep them (BEFORE TRUNCATE, the rows are still there)
        on_truncate = sql.SQL(
            "INSERT INTO {removed} ({keys}, text_md5, embeddings, updated_at) SELECT {keys}, {md5}, {emb}, {updated_at}"
            " FROM {source}"
            " WHERE {emb} IS NOT NULL;").format(**parts)
        on_delete = sql.SQL(
            "INSERT INTO {removed} ({keys}, text_md5, embeddings, updated_at) SELECT {o_keys}, o.{md5}, o.{emb}, o.{updated_at}"
            " FROM vectorize_old_rows o WHERE o.{emb} IS NOT NULL;").format(**parts)
        # The row keeps its vector under its new key, and its stored full-text document follows it
        on_rekey = sql.SQL(
            "DELETE FROM {documents} WHERE {new_key}; UPDATE {documents} x SET {assign} WHERE {old_key};").format(
            assign=sql.SQL(", ").join(sql.SQL("{c} = NEW.{c}").format(c=sql.Identifier(c)) for c in key.columns),
            new_key=key.equals(None, "new"), old_key=key.equals("x", "old"), **parts)
    if tracks_keys(project):
        on_delete = sql.SQL(
            "{recorded} IF EXISTS (SELECT FROM {queue}) THEN"
            " DELETE FROM {queue} x USING vectorize_old_rows o WHERE {in_old}; END IF;"
            " IF EXISTS (SELECT FROM {errors}) THEN"
            " DELETE FROM {errors} x USING vectorize_old_rows o WHERE {in_old}; END IF;").format(recorded=on_delete, **parts)
    else:  # no transition table: entries whose row is gone
        on_delete = sql.SQL(
            "{marker} IF EXISTS (SELECT FROM {queue}) THEN"
            " DELETE FROM {queue} x WHERE NOT EXISTS (SELECT FROM {source} r WHERE {in_source}); END IF;"
            " IF EXISTS (SELECT FROM {errors}) THEN"
            " DELETE FROM {errors} x WHERE NOT EXISTS (SELECT FROM {source} r WHERE {in_source}); END IF;"
        ).format(marker=marker, in_source=key.equals("r", "x"), **parts)
    requeue = sql.SQL("")
    if project.schedule == "realtime":  # a row under a new key is embedded (or found current) by the next run
        requeue = sql.SQL(
            "INSERT INTO {queue} ({keys}) VALUES ({new_keys}) ON CONFLICT ({keys}) DO UPDATE"
            " SET enqueued_at = clock_timestamp(); PERFORM pg_notify({channel}, '');").format(**parts)
    return sql.SQL(
        """
        BEGIN
          IF TG_LEVEL = 'STATEMENT' AND to_regclass({source_name}) IS DISTINCT FROM TG_RELID THEN
            {away}  -- a table that was the source (renamed away, swapped out): its statements must not fail
            RETURN NULL;  -- on the source's name; a join project's marker, as it may come back (renamed back)
          END IF;
          IF TG_OP = 'DELETE' AND TG_LEVEL = 'ROW' THEN
            {on_row_delete}
            RETURN OLD;
          ELSIF TG_OP = 'TRUNCATE' THEN
            {on_truncate}
            DELETE FROM {queue};
            DELETE FROM {errors};
          ELSIF TG_OP = 'DELETE' THEN
            {on_delete}
          ELSE
            {on_rekey}
            IF to_regclass({source_name}) IS DISTINCT FROM TG_RELID THEN  -- a partition's row, a table swapped out
              {dequeue_old}
            ELSIF NOT EXISTS (SELECT FROM {source} r WHERE {old_in_source}) THEN  -- not another row's key now
              {dequeue_old}
            END IF;
            {requeue}
          END IF;
          RETURN NULL;
        END
        """
    ).format(on_truncate=on_truncate, on_delete=on_delete, on_rekey=on_rekey, requeue=requeue,
             away=marker if project.is_join else sql.SQL(""),
             on_row_delete=on_row_delete, old_in_source=key.equals("r", "old"), dequeue_old=sql.SQL(
                 "DELETE FROM {queue} WHERE ({keys}) = ({old_keys}); DELETE FROM {errors} WHERE ({keys}) = ({old_keys});"
             ).format(**parts),
             source_name=sql.Literal(quoted((project.schema, project.relation))), **parts)


def upgrade(cur: Cursor, project: Project) -> bool:
    """Move a project created with pg_vectorize's foreign keys to the removal triggers; returns whether it
    did. Every foreign key of the project's tables goes (today's have none). When they referenced another
    table than the one now under the source's name (a table swapped in since), the triggers are left to
    ``attach``, which settles what the project stores as after a swap. Call with the project locked
    (``catalog.lock_project``)."""
    cur.execute("SELECT to_regclass(%s) IS NULL", [quoted(project.names.removed_name)])
    if not cur.fetchone()[0]:
        return False
    tables = [project.names.queue, project.names.errors] + ([project.names.target] if project.is_join else [])
    cur.execute(
        "SELECT c.conrelid::regclass::text, c.conname, c.confrelid = to_regclass(%s) FROM pg_constraint c"
        " WHERE c.contype = 'f' AND c.conrelid = ANY(ARRAY(SELECT to_regclass(t) FROM unnest(%s::text[]) t))",
        [project.names.source.as_string(cur), [t.as_string(cur) for t in tables]])
    keys = cur.fetchall()
    for table, constraint, _ in keys:
        cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.SQL(table), sql.Identifier(constraint)))
    create_removed_table(cur, project)
    if keys and not any(on_source for _, _, on_source in keys):
        log.info("Project %r: moved from foreign keys; another table is under its source's name now", project.name)
        return True
    create_triggers(cur, project)
    log.info("Project %r: moved from foreign keys to removal triggers (TRUNCATE of its source now works)", project.name)
    return True


# A partitioned source's leaf partitions now (each one's oid and file), when they differ from those the last
# settled run saw (the comment of ``vectorize._removed_<job>``); no row for any other source. Bound: the source
# (twice), then the removed table.
PARTITIONS_CHANGED = (
    "SELECT f.seen FROM (SELECT 'partitions ' || coalesce(md5(string_agg(relid::oid::text || ':' ||"
    " pg_relation_filenode(relid), ',' ORDER BY relid::oid)), '') AS seen FROM pg_partition_tree(to_regclass(%s))"
    " WHERE isleaf) f WHERE EXISTS (SELECT FROM pg_class WHERE oid = to_regclass(%s) AND relkind = 'p')"
    " AND f.seen IS DISTINCT FROM obj_description(to_regclass(%s), 'pg_class')")


def partitions_changed(cur: Cursor, project: Project) -> bool:
    """Whether a partitioned source's leaf partitions differ from those the last settled run saw
    (``PARTITIONS_CHANGED``): a partition truncated (it gets a new file), detached or dropped takes rows away,
    and one attached brings rows, without firing any trigger. Records today's for the next run."""
    source = project.names.source.as_string(cur)
    cur.execute(PARTITIONS_CHANGED, [source, source, quoted(project.names.removed_name)])
    if (now := cur.fetchone()) is None:
        return False
    cur.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(project.names.removed, sql.Literal(now[0])))
    return True


def upgrade_partitioned(cur: Cursor, project: Project) -> bool:
    """Give a partitioned source's project whose DELETE trigger is not a BEFORE row trigger (a statement
    trigger, made before it was one there) today's removal triggers; returns whether it did. Call with the
    project locked."""
    cur.execute("SELECT EXISTS (SELECT FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relkind = 'p'"
                " AND t.tgrelid = to_regclass(%s) AND t.tgname = %s AND t.tgtype & 3 <> 3)",  # ROW 1, BEFORE 2
                [project.names.source.as_string(cur), project.names.delete_trigger])
    if not cur.fetchone()[0]:
        return False
    recreate_triggers(cur, project)
    return True


def attached(cur: Cursor, project: Project) -> bool:
    """Whether the project's triggers are on its source table (not when another table was put in its place)."""
    cur.execute("SELECT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s)",
                [project.names.source.as_string(cur), project.names.delete_trigger])
    return cur.fetchone()[0]


def attach(cur: Cursor, project: Project) -> bool:
    """Make a table now in the source's place (a rename-swap, or dropped and created again) the project's
    source; returns whether it did (False when the project's triggers are on it already).

    The table must pass the checks of ``create_project`` (key, unique, text columns) with the same key types.
    The project's triggers move to it (from wherever the old table is now), its view is made again on its
    columns, and what the project stores is settled as after a full reload: a join project's vectors of
    keys the table no longer has are deleted by the next generation run (the others kept, embedded again
    only where the text changed); an append project's vectors were columns of the old table, so the new
    table gets empty ones (and the old table, if kept, loses them and their index). Queue entries and errors of keys it does not have are deleted; a realtime
    project queues every row of it that needs embedding. Call with the project locked."""
    from airflow_vectorize import catalog, generation, validation

    if attached(cur, project):
        return False
    validation.check_project_source(cur, project, attaching=True)
    names, key = project.names, project.key
    old = None if project.is_join else catalog.append_home(cur, project)
    if old is not None and (old.schema, old.relation) != (project.schema, project.relation):
        # The table swapped out keeps no column of the project, nor the index, whose name the new one takes
        catalog.drop_append_columns(cur, old)
    catalog.drop_triggers(cur, project)
    create_triggers(cur, project)
    if project.schedule == "realtime":
        catalog.ensure_bulk_table(cur, project)
        catalog.create_triggers(cur, project)
    if project.is_join:
        cur.execute(sql.SQL("DROP VIEW IF EXISTS {}; DROP FUNCTION IF EXISTS {}()").format(
            names.view, names.view_function))
        catalog.create_view(cur, project)
        cur.execute(sql.SQL("INSERT INTO {} DEFAULT VALUES").format(names.removed))  # "every key may be gone"
    else:
        cur.execute(sql.SQL(
            "ALTER TABLE {source} ADD COLUMN IF NOT EXISTS {emb} vector({n}), ADD COLUMN IF NOT EXISTS {updated_at}"
            " timestamptz, ADD COLUMN IF NOT EXISTS {md5} uuid"
        ).format(source=names.source, emb=sql.Identifier(names.embeddings_column), n=sql.Literal(project.dimensions),
                 updated_at=sql.Identifier(names.updated_at_column), md5=sql.Identifier(names.text_md5_column)))
        _drop_copied_indexes(cur, project)
        catalog.create_index(cur, project)
        cur.execute(sql.SQL("DELETE FROM {}").format(names.removed))  # vectors of the old table's rows: gone
    gone = [names.queue, names.errors] + ([] if project.is_join else [names.documents])
    for table in gone:
        cur.execute(sql.SQL("DELETE FROM {t} x WHERE NOT EXISTS (SELECT FROM {source} r WHERE {same})").format(
            t=table, source=names.source, same=key.equals("r", "x")))
    if project.schedule == "realtime":
        generation.queue_due_rows(cur, project)
    log.info("Project %r: attached to the table now named %s", project.name, names.source.as_string(cur))
    return True


def _drop_copied_indexes(cur: Cursor, project: Project) -> None:
    """Drop the vector indexes (hnsw, ivfflat) of an append project's vector column that are not the project's:
    a table made ``LIKE <source> INCLUDING ALL`` copies the project's index under another name, and every
    write would pay for both."""
    cur.execute("SELECT n.nspname, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am a ON a.oid = c.relam"
                " JOIN pg_attribute t ON t.attrelid = i.indrelid AND t.attnum = ANY(i.indkey)"
                " WHERE i.indrelid = to_regclass(%s) AND a.amname IN ('hnsw', 'ivfflat') AND t.attname = %s"
                " AND (n.nspname, c.relname) IS DISTINCT FROM (%s, %s)",
                [project.names.source.as_string(cur), project.names.embeddings_column,
                 *project.names.index_qualified_name])
    for schema, index in cur.fetchall():
        cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, index)))
        log.info("Project %r: dropped %s.%s, a copy of its index on the table now its source", project.name,
                 schema, index)


def restore_realtime_triggers(cur: Cursor, project: Project) -> bool:
    """Put back the removal triggers (truncate, key change; a missing DELETE trigger is ``attach``'s) and a
    realtime project's insert or update trigger that are missing from its source (dropped to change the type
    of a column, which PostgreSQL refuses while a trigger depends on it). What happened meanwhile was not
    recorded: a join project's next run compares every stored key with the source, and a realtime project
    queues every row that needs embedding. Returns whether it did. A table put in the source's place is
    ``attach``'s. Call with the project locked."""
    from airflow_vectorize import catalog, generation

    if not attached(cur, project):
        return False
    names = project.names
    realtime = [names.insert_trigger, names.update_trigger] if project.schedule == "realtime" else []
    cur.execute("SELECT array_agg(tgname::text) FROM pg_trigger WHERE tgrelid = to_regclass(%s)"
                " AND tgname = ANY(%s)", [names.source.as_string(cur), [*names.removal_triggers, *realtime]])
    there = cur.fetchone()[0] or []
    missing = [t for t in (*names.removal_triggers, *realtime) if t not in there]
    if not missing:
        return False
    if set(missing) & set(names.removal_triggers):
        recreate_triggers(cur, project)
        if project.is_join:  # keys changed meanwhile left their vectors: "any key may be gone"
            cur.execute(sql.SQL("INSERT INTO {} DEFAULT VALUES").format(names.removed))
    if set(missing) & set(realtime):
        catalog.drop_realtime_triggers(cur, project)  # the one left, if any
        catalog.create_triggers(cur, project)
    queued = generation.queue_due_rows(cur, project) if realtime else 0
    log.warning("Project %r: triggers %s were missing from %s; put back (%d rows that need embedding queued)",
                project.name, ", ".join(missing), names.source.as_string(cur), queued)
    return True
