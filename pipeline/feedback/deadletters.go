package feedback

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// DeadLetterFirst is how many source positions a summary lists of each period and
// reason.
const DeadLetterFirst = 5

// DeadLetterSummary is what a customer's dead letters of one period and reason come to.
type DeadLetterSummary struct {
	// Period is the first day of the period (UTC) the dead letters' event times fall in.
	Period Date `json:"period"`
	// Reason is the dead-letter reason (pipeline.Reason).
	Reason string `json:"reason"`
	// Count is the number of distinct messages, by source position.
	Count uint64 `json:"count"`
	// First are the first DeadLetterFirst source positions, in offset order (then
	// topic and partition).
	First []DeadLetterSource `json:"first"`
}

// DeadLetterSource is the position of a dead-lettered message in its source topic.
type DeadLetterSource struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
}

// StatementDeadLetters is one period of a customer's dead letters in their statement.
type StatementDeadLetters struct {
	// Period is the period's first day (UTC).
	Period Date `json:"period"`
	// Count is the period's dead letters over every reason.
	Count uint64 `json:"count"`
	// Reasons are the period's dead letters by reason, by reason's name.
	Reasons []StatementDeadLetterReason `json:"reasons"`
}

// StatementDeadLetterReason is one reason of a period of StatementDeadLetters.
type StatementDeadLetterReason struct {
	Reason string             `json:"reason"`
	Count  uint64             `json:"count"`
	First  []DeadLetterSource `json:"first"`
}

// ReadDeadLetters reads a customer's dead letters (customer as the loop stores it: see
// pipeline.DeadLettersTable), per period of the loop's grain and reason, oldest period
// first, reasons by name: how many distinct messages, and the first few source
// positions. Both queries are point reads by the customer_id that leads the table's sort
// key. A message written twice (a batch read again after a crash before the ledger)
// counts once: rows are counted by distinct source position. A loop whose schema has no
// dead_letters table yet (a manager newer than the loop's last reconcile) has none.
func ReadDeadLetters(ctx context.Context, conn driver.Conn, cfg pipeline.FeedbackConfig, customer string) ([]DeadLetterSummary, error) {
	all, err := readDeadLetters(ctx, conn, cfg, "customer_id = ?", []any{customer})
	if err != nil {
		return nil, err
	}
	if out := all[customer]; out != nil {
		return out, nil
	}
	return []DeadLetterSummary{}, nil
}

// readDeadLetters reads the dead letters of the customers that meet cond as
// ReadDeadLetters does, by customer.
func readDeadLetters(ctx context.Context, conn driver.Conn, cfg pipeline.FeedbackConfig, cond string, args []any) (map[string][]DeadLetterSummary, error) {
	if cfg.Grain != pipeline.GrainWeek && cfg.Grain != pipeline.GrainMonth {
		return nil, fmt.Errorf("feedback grain %q: want %s or %s", cfg.Grain, pipeline.GrainWeek, pipeline.GrainMonth)
	}
	table := pipeline.QualifiedTable(cfg.Database, pipeline.DeadLettersTable)
	period, _ := cfg.Grain.PeriodSQL("event_time", false)
	type key struct {
		customer string
		period   time.Time
		reason   string
	}
	byKey := map[key]*DeadLetterSummary{}
	rows, err := conn.Query(ctx, "SELECT customer_id, "+period+" AS p, reason, uniqExact(source_topic, source_partition, source_offset) FROM "+table+
		" WHERE "+cond+" GROUP BY customer_id, p, reason", args...)
	if err != nil {
		if missingTable(err) {
			return map[string][]DeadLetterSummary{}, nil
		}
		return nil, fmt.Errorf("reading the dead letters: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k key
		var n uint64
		if err := rows.Scan(&k.customer, &k.period, &k.reason, &n); err != nil {
			return nil, fmt.Errorf("reading the dead letters: %w", err)
		}
		k.period = k.period.UTC()
		byKey[k] = &DeadLetterSummary{Period: Date{k.period}, Reason: k.reason, Count: n, First: []DeadLetterSource{}}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows.Close()
	if len(byKey) > 0 {
		// GROUP BY the position makes each message one row however often it was written.
		first, err := conn.Query(ctx, "SELECT customer_id, "+period+" AS p, reason, source_offset, source_topic, source_partition FROM "+table+
			" WHERE "+cond+" GROUP BY customer_id, p, reason, source_offset, source_topic, source_partition"+
			" ORDER BY customer_id, p, reason, source_offset, source_topic, source_partition LIMIT "+strconv.Itoa(DeadLetterFirst)+" BY customer_id, p, reason", args...)
		if err != nil {
			return nil, fmt.Errorf("reading the dead letters' first positions: %w", err)
		}
		defer first.Close()
		for first.Next() {
			var k key
			var src DeadLetterSource
			if err := first.Scan(&k.customer, &k.period, &k.reason, &src.Offset, &src.Topic, &src.Partition); err != nil {
				return nil, fmt.Errorf("reading the dead letters' first positions: %w", err)
			}
			k.period = k.period.UTC()
			if s := byKey[k]; s != nil {
				s.First = append(s.First, src)
			}
		}
		if err := first.Err(); err != nil {
			return nil, err
		}
	}
	out := map[string][]DeadLetterSummary{}
	for k, s := range byKey {
		out[k.customer] = append(out[k.customer], *s)
	}
	for _, ss := range out {
		sort.Slice(ss, func(i, j int) bool {
			if !ss[i].Period.Equal(ss[j].Period.Time) {
				return ss[i].Period.Before(ss[j].Period.Time)
			}
			return ss[i].Reason < ss[j].Reason
		})
	}
	return out, nil
}

// StatementDeadLettersOf groups summaries (as ReadDeadLetters orders them) by period.
func StatementDeadLettersOf(summaries []DeadLetterSummary) []StatementDeadLetters {
	out := []StatementDeadLetters{}
	for _, s := range summaries {
		if len(out) == 0 || !out[len(out)-1].Period.Equal(s.Period.Time) {
			out = append(out, StatementDeadLetters{Period: s.Period, Reasons: []StatementDeadLetterReason{}})
		}
		p := &out[len(out)-1]
		p.Count += s.Count
		p.Reasons = append(p.Reasons, StatementDeadLetterReason{Reason: s.Reason, Count: s.Count, First: s.First})
	}
	return out
}

// missingTable reports whether err is ClickHouse's "table doesn't exist" (code 60).
func missingTable(err error) bool {
	var ex *clickhouse.Exception
	return errors.As(err, &ex) && ex.Code == 60
}
