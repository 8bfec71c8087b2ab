package stacktest

import (
	"context"

	"github.com/ClickHouse/clickhouse-go/v2"
)

// SyncInserts makes inserts through Distributed tables synchronous: acknowledged rows are
// on one replica of their shard, not in a node's spool.
func SyncInserts(ctx context.Context) context.Context {
	return clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"insert_distributed_sync": 1}))
}
