package pipeline

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// ServerFeatures is what the loop's server supports, or requires, beyond ClickHouse
// 18.16. The zero value is 18.16: the planners render the same SQL for it as before
// there were features, so that no view or rollup of an 18.16 server changes its
// definition. Read it with ReadServerFeatures and set it in ClickHouseConfig.Features
// (and FeedbackConfig.Features) before planning.
type ServerFeatures struct {
	// DedupToken: the insert_deduplication_token setting (servers from 22.2 on).
	DedupToken bool
	// NullableStates: an aggregate's -State of a Nullable argument has a Nullable
	// argument type, AggregateFunction(max, Nullable(Float64)), and a materialized view
	// cannot write it into AggregateFunction(max, Float64). 18.16 drops the Nullable.
	NullableStates bool
	// SubqueryAliases: a subquery in a JOIN must have an alias
	// (joined_subquery_requires_alias; 18.16 has no such setting, and modern servers
	// refuse the feedback views without aliases, code 206).
	SubqueryAliases bool
}

// QueryRower runs a query that returns one row; driver.Conn is one.
type QueryRower interface {
	QueryRow(ctx context.Context, query string, args ...any) driver.Row
}

// featuresQuery asks the server what it has rather than inferring it from its version:
// the features follow settings and type rules whose version boundaries are not
// documented.
const featuresQuery = `SELECT
    countIf(name = 'insert_deduplication_token'),
    countIf(name = 'joined_subquery_requires_alias'),
    toTypeName(maxState(toNullable(0)))
FROM system.settings`

// ReadServerFeatures asks the server which of the features CustomerLoop may use or must
// follow it has.
func ReadServerFeatures(ctx context.Context, conn QueryRower) (ServerFeatures, error) {
	var (
		token, alias uint64
		state        string
	)
	if err := conn.QueryRow(ctx, featuresQuery).Scan(&token, &alias, &state); err != nil {
		return ServerFeatures{}, fmt.Errorf("reading the server's features: %w", err)
	}
	return ServerFeatures{
		DedupToken:      token > 0,
		NullableStates:  strings.Contains(state, "Nullable"),
		SubqueryAliases: alias > 0,
	}, nil
}

// ServerVersion is a ClickHouse server's major and minor version.
type ServerVersion struct{ Major, Minor int }

// ReadServerVersion asks the server its version.
func ReadServerVersion(ctx context.Context, conn driver.Conn) (ServerVersion, error) {
	var s string
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&s); err != nil {
		return ServerVersion{}, fmt.Errorf("reading the server version: %w", err)
	}
	return ParseServerVersion(s)
}

// ParseServerVersion reads "18.16.1" or "24.3.2.23".
func ParseServerVersion(s string) (ServerVersion, error) {
	parts := strings.SplitN(s, ".", 3)
	if len(parts) < 2 {
		return ServerVersion{}, fmt.Errorf("server version %q: want major.minor", s)
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return ServerVersion{}, fmt.Errorf("server version %q: want major.minor", s)
	}
	return ServerVersion{major, minor}, nil
}

// HasTTL reports whether the server has table TTL (ALTER TABLE ... MODIFY TTL): 19.6
// and later.
func (v ServerVersion) HasTTL() bool { return v.Major > 19 || v.Major == 19 && v.Minor >= 6 }
