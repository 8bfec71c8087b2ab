package pipeline

// Addresses returns Addr and then the Failover addresses: the order connections try them.
func (c ClickHouseConfig) Addresses() []string {
	return append([]string{c.Addr}, c.Failover...)
}

// On a ClickHouse cluster (ClickHouseConfig.Cluster set) every table CustomerLoop owns is
// a pair:
//
//   - <name>_local: a Replicated* table on every node, one replica set per shard
//     ({shard}/{replica} macros), holding that shard's rows;
//   - <name>: a Distributed table over <name>_local, the name everything writes to and
//     reads from, exactly as on a single server.
//
// Views are created on every node over the Distributed names; materialized views are
// created on every node over the local raw tables, so each shard aggregates its own rows.
// Without a cluster, <name> is a plain MergeTree table and nothing else changes.

// LocalSuffix is appended to a table's name for its per-shard Replicated table.
const LocalSuffix = "_local"

// LocalTable is the name of the per-shard table behind the Distributed table name.
func LocalTable(name string) string { return name + LocalSuffix }

// Clustered reports whether the loop's objects live on a ClickHouse cluster.
func (c ClickHouseConfig) Clustered() bool { return c.Cluster != "" }

// OnCluster is the ON CLUSTER clause of a DDL statement, or "" on a single server.
func (c ClickHouseConfig) OnCluster() string {
	if c.Cluster == "" {
		return ""
	}
	return " ON CLUSTER " + QuoteIdent(c.Cluster)
}

// StoredTable is the table that holds a table's rows on the connected node: the local
// table on a cluster, the table itself on a single server. Mutations, partition and TTL
// changes and schema introspection address it.
func (c ClickHouseConfig) StoredTable(name string) string {
	if c.Clustered() {
		return LocalTable(name)
	}
	return name
}
