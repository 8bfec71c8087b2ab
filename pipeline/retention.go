package pipeline

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

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

// retentionColumn is the time a stream's rows are kept by: the raw table's partition
// key's column.
func retentionColumn(kind Kind) string {
	if kind == KindPlan {
		return "period"
	}
	return "ts"
}

// RetentionTTL is the TTL expression of a stream kept for days.
func RetentionTTL(kind Kind, days int) string {
	return fmt.Sprintf("%s + toIntervalDay(%d)", QuoteIdent(retentionColumn(kind)), days)
}

// ExpiredPartitions returns the month partitions (YYYYMM) all of whose rows are older
// than days before now: those whose month ended at or before the cutoff. A month that
// is only partly expired is kept whole.
func ExpiredPartitions(parts []uint32, now time.Time, days int) []uint32 {
	cutoff := now.UTC().AddDate(0, 0, -days)
	var out []uint32
	for _, p := range parts {
		y, m := int(p/100), time.Month(p%100)
		if m < 1 || m > 12 {
			continue
		}
		if end := time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC); !end.After(cutoff) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// ApplyRetention keeps a stream's raw table to days. A server with table TTL gets one
// (set again only when it differs, because newer servers rewrite the table's parts on
// every MODIFY TTL); an older server, such as 18.16, has the table's expired month
// partitions dropped, which the caller repeats (on every reconcile). It returns the
// partitions it dropped.
func ApplyRetention(ctx context.Context, conn driver.Conn, v ServerVersion, db string, s StreamConfig, days int, now time.Time) ([]uint32, error) {
	qt := QualifiedTable(db, s.Table())
	if v.HasTTL() {
		ttl := RetentionTTL(s.Kind, days)
		var engine string
		if err := conn.QueryRow(ctx, "SELECT engine_full FROM system.tables WHERE database = ? AND name = ?", db, s.Table()).Scan(&engine); err != nil {
			return nil, fmt.Errorf("reading the TTL of %s: %w", s.Table(), err)
		}
		if strings.Contains(strings.ReplaceAll(engine, "`", ""), "TTL "+strings.ReplaceAll(ttl, "`", "")) {
			return nil, nil
		}
		if err := conn.Exec(ctx, "ALTER TABLE "+qt+" MODIFY TTL "+ttl); err != nil {
			return nil, fmt.Errorf("setting the TTL of %s: %w", s.Table(), err)
		}
		return nil, nil
	}
	parts, err := tablePartitions(ctx, conn, db, s.Table())
	if err != nil {
		return nil, err
	}
	expired := ExpiredPartitions(parts, now, days)
	for _, p := range expired {
		if err := conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DROP PARTITION %d", qt, p)); err != nil {
			return nil, fmt.Errorf("dropping partition %d of %s: %w", p, s.Table(), err)
		}
	}
	return expired, nil
}

// tablePartitions lists a month-partitioned table's partitions that hold parts.
func tablePartitions(ctx context.Context, conn driver.Conn, db, table string) ([]uint32, error) {
	rows, err := conn.Query(ctx, "SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = ? AND active", db, table)
	if err != nil {
		return nil, fmt.Errorf("reading the partitions of %s: %w", table, err)
	}
	defer rows.Close()
	var parts []uint32
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		if n, err := strconv.ParseUint(s, 10, 32); err == nil {
			parts = append(parts, uint32(n))
		}
	}
	return parts, rows.Err()
}
