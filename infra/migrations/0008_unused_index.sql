-- No reader looks events up by item: the projections read in (tx_id, position) order and the
-- query side reads only the read models. The (item_id, position) index was maintained on every
-- append for nothing: one B-tree insert and its WAL per event.
DROP INDEX events_item;
DROP INDEX ledger_archive.events_item;
