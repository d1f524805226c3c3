/* lua_store_decimal.h -- the sluice_decimal collation of sluice._store
 *
 * sl_store_decimal_collate is the comparison function lua_store.c registers
 * (sqlite3_create_collation_v2, no argument, nothing to free) on every
 * connection it opens; the uint256 and decimal columns of
 * sluice.store.schema declare it. Order: plain decimals ([+-]?D*(.D*)?, at
 * least one digit) by numeric value ("9" < "10", "1.50" = "1.5", "-2" < "1",
 * "-0" = "0"), before any other text, which sorts bytewise (then shorter
 * first) among itself. A total order, so indexes, primary keys, = and
 * ORDER BY agree. Pure and reentrant: any thread may call it.
 */
#ifndef SLUICE_LUA_STORE_DECIMAL_H
#define SLUICE_LUA_STORE_DECIMAL_H

int sl_store_decimal_collate(void *arg, int n1, const void *p1, int n2,
                             const void *p2);

#endif
