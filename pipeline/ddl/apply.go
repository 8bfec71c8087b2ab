package ddl

import (
	"context"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// ApplySchema runs the planned statements in order. Each is idempotent. On a cluster, a
// statement that fails on some host is a DDLHostError naming the host; when every host
// that answered ran every statement but some hosts had not within the wait, the
// statements are all applied where they can be and the error is a DDLPendingError
// (errors.Is(err, ErrDDLPending)) naming those hosts: a warning, not a failure.
func ApplySchema(ctx context.Context, conn driver.Conn, stmts []pipeline.Statement) error {
	var pending *connect.DDLPendingError
	timeout := connect.DDLTimeout
	for _, s := range stmts {
		hosts, err := connect.RunDDL(ctx, conn, s, timeout)
		if err != nil {
			return err
		}
		if len(hosts) > 0 {
			if pending == nil {
				pending = &connect.DDLPendingError{}
			}
			pending.Add(s.Object, hosts)
			timeout = connect.DDLPendingTimeout
		}
	}
	if pending != nil {
		return pending
	}
	return nil
}
