package feedback

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// fromTable finds the table a rollup's read view reads.
var fromTable = regexp.MustCompile("FROM\\s+`?[A-Za-z0-9_]+`?\\.`?([A-Za-z0-9_]+)`?")

// partitionBy finds a table's partition key in its CREATE statement.
var partitionBy = regexp.MustCompile("PARTITION BY\\s+(\\S+)")

// partsFromSystem lets the tests take the way that reads the rows' parts.
var partsFromSystem = true

// feedbackTables are the tables a loop's figures are read from.
type feedbackTables struct {
	actuals, plans, planRaw string
	// byMonth: each is partitioned by the month of its period (the schema CustomerLoop
	// creates), so that the parts of a period are those of its months' partitions.
	byMonth bool
}

// signatures returns, per period, a fingerprint of the data parts that hold its rows in
// the two feedback rollups and the plan table. ok is false when the rollups' tables
// could not be found (then nothing is kept).
func signatures(ctx context.Context, conn driver.Conn, cfg pipeline.FeedbackConfig) (map[time.Time]string, bool, error) {
	t, ok, err := readFeedbackTables(ctx, conn, cfg)
	if err != nil || !ok {
		return map[time.Time]string{}, false, err
	}
	var parts map[time.Time][]string
	if t.byMonth && partsFromSystem {
		parts, err = partsByPartition(ctx, conn, cfg, t)
	} else {
		parts, err = partsByRow(ctx, conn, cfg, t)
	}
	if err != nil {
		return nil, false, err
	}
	out := make(map[time.Time]string, len(parts))
	for p, ps := range parts {
		sort.Strings(ps)
		sum := sha256.Sum256([]byte(t.actuals + "," + t.plans + "," + strings.Join(ps, ",")))
		out[p] = hex.EncodeToString(sum[:12])
	}
	return out, true, nil
}

// readFeedbackTables finds the tables the rollups' read views read, and whether all
// three tables are partitioned by month.
func readFeedbackTables(ctx context.Context, conn driver.Conn, cfg pipeline.FeedbackConfig) (feedbackTables, bool, error) {
	db := cfg.Database
	views := []string{ddl.RollupView(pipeline.FeedbackActualsRollup), ddl.RollupView(pipeline.FeedbackPlansRollup)}
	creates, err := createQueries(ctx, conn, db, append(views, cfg.PlanTable))
	if err != nil {
		return feedbackTables{}, false, err
	}
	t := feedbackTables{planRaw: cfg.PlanTable}
	for i, dest := range []*string{&t.actuals, &t.plans} {
		m := fromTable.FindStringSubmatch(creates[views[i]])
		if m == nil {
			return t, false, nil
		}
		*dest = m[1]
	}
	tables, err := createQueries(ctx, conn, db, []string{t.actuals, t.plans})
	if err != nil {
		return t, false, err
	}
	key := func(create string) string {
		if m := partitionBy.FindStringSubmatch(create); m != nil {
			return strings.ReplaceAll(m[1], "`", "")
		}
		return ""
	}
	t.byMonth = key(tables[t.actuals]) == "toYYYYMM(_period)" && key(tables[t.plans]) == "toYYYYMM(_period)" &&
		key(creates[cfg.PlanTable]) == "toYYYYMM(period)"
	return t, true, nil
}

func createQueries(ctx context.Context, conn driver.Conn, db string, names []string) (map[string]string, error) {
	rows, err := conn.Query(ctx, "SELECT name, create_table_query FROM system.tables WHERE database = ? AND has(?, name)", db, names)
	if err != nil {
		return nil, fmt.Errorf("reading the feedback tables of %s: %w", db, err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var name, create string
		if err := rows.Scan(&name, &create); err != nil {
			return nil, err
		}
		out[name] = create
	}
	return out, rows.Err()
}

// partsByPartition lists, per period, the active parts of the partitions that hold its
// rows, from system.parts (no data is read). A rollup holds a period in the partition of
// its start's month; the plan table holds a week's plans in the months of its first and
// last days.
func partsByPartition(ctx context.Context, conn driver.Conn, cfg pipeline.FeedbackConfig, t feedbackTables) (map[time.Time][]string, error) {
	rows, err := conn.Query(ctx, "SELECT table, partition, name, rows FROM system.parts WHERE database = ? AND active AND has(?, table)",
		cfg.Database, []string{t.actuals, t.plans, t.planRaw})
	if err != nil {
		return nil, fmt.Errorf("reading the data parts of %s's feedback: %w", cfg.Database, err)
	}
	defer rows.Close()
	type month = string // YYYYMM
	rollups, plans := map[month][]string{}, map[month][]string{}
	for rows.Next() {
		var (
			table, partition, name string
			n                      uint64
		)
		if err := rows.Scan(&table, &partition, &name, &n); err != nil {
			return nil, err
		}
		part := table + "/" + name + "/" + strconv.FormatUint(n, 10)
		if table == t.planRaw {
			plans[partition] = append(plans[partition], part)
		} else {
			rollups[partition] = append(rollups[partition], part)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := map[time.Time][]string{}
	for m, ps := range rollups {
		start, err := time.Parse("200601", m)
		if err != nil {
			return nil, fmt.Errorf("the feedback rollups of %s: partition %q is not a month", cfg.Database, m)
		}
		// The periods that start in the month.
		p := PeriodStart(cfg.Grain, start)
		if p.Before(start) {
			p = PeriodEnd(cfg.Grain, p)
		}
		for ; p.Before(start.AddDate(0, 1, 0)); p = PeriodEnd(cfg.Grain, p) {
			last := PeriodEnd(cfg.Grain, p).AddDate(0, 0, -1)
			sig := append([]string(nil), ps...)
			sig = append(sig, plans[p.Format("200601")]...)
			if l := last.Format("200601"); l != p.Format("200601") {
				sig = append(sig, plans[l]...)
			}
			out[p] = sig
		}
	}
	return out, nil
}

// partsByRow lists, per period, the parts that hold its rows, reading each row's period
// and part: for tables partitioned otherwise.
func partsByRow(ctx context.Context, conn driver.Conn, cfg pipeline.FeedbackConfig, t feedbackTables) (map[time.Time][]string, error) {
	db := cfg.Database
	planPeriod, _ := cfg.Grain.PeriodSQL("period", true)
	q := "SELECT 0 AS t, _period AS p, _part, count() FROM " + pipeline.QualifiedTable(db, t.actuals) + " GROUP BY p, _part" +
		" UNION ALL SELECT 1 AS t, _period AS p, _part, count() FROM " + pipeline.QualifiedTable(db, t.plans) + " GROUP BY p, _part" +
		" UNION ALL SELECT 2 AS t, " + planPeriod + " AS p, _part, count() FROM " + pipeline.QualifiedTable(db, t.planRaw) + " GROUP BY p, _part"
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("reading the data parts of %s's feedback: %w", db, err)
	}
	defer rows.Close()
	out := map[time.Time][]string{}
	for rows.Next() {
		var (
			table uint8
			p     time.Time
			part  string
			n     uint64
		)
		if err := rows.Scan(&table, &p, &part, &n); err != nil {
			return nil, err
		}
		p = p.UTC()
		out[p] = append(out[p], fmt.Sprintf("%d/%s/%d", table, part, n))
	}
	return out, rows.Err()
}
