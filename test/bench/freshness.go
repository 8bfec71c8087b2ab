package main

// The freshness run: from the broker's acknowledgement to a queryable row, at a set rate.

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
)

// freshness runs a worker on an empty topic, produces at a fixed rate, and measures for
// every message the time from its acknowledgement by the broker to the moment the ledger
// says its row is queryable (polled every 20 ms).
func freshness(ctx context.Context, o options, work string, brokers []string, db string, ch driver.Conn) (p50, p99 float64, err error) {
	cfg := benchConfig(brokers, o.clickhouse, db, "fresh", "bench.fresh")
	cfg.Batch = pipeline.BatchConfig{MaxWait: pipeline.Duration{Duration: 200 * time.Millisecond}}
	stmts, err := ddl.PlanSchema(cfg)
	if err != nil {
		return 0, 0, err
	}
	if err := ddl.ApplySchema(ctx, ch, stmts); err != nil {
		return 0, 0, err
	}
	n := o.rate * int(o.freshFor/time.Second)
	msgs := makeMessages(n)
	visible := map[int32][]time.Time{}
	stop := make(chan struct{})
	polled := make(chan error, 1)
	go func() {
		q := "SELECT partition, max(last_offset) FROM " + pipeline.QualifiedTable(db, pipeline.LedgerTable) +
			" WHERE topic = 'bench.fresh' GROUP BY partition"
		for {
			rows, err := ch.Query(ctx, q)
			if err != nil {
				polled <- err
				return
			}
			now := time.Now()
			for rows.Next() {
				var p int32
				var last int64
				if err := rows.Scan(&p, &last); err != nil {
					polled <- err
					return
				}
				for int64(len(visible[p])) <= last {
					visible[p] = append(visible[p], now)
				}
			}
			rows.Close()
			select {
			case <-stop:
				polled <- nil
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	workerDone := make(chan error, 1)
	go func() {
		_, err := runWorker(ctx, o, work, cfg, ch, uint64(n))
		workerDone <- err
	}()
	time.Sleep(3 * time.Second) // the worker joins its group
	acks, err := produce(ctx, brokers, "bench.fresh", msgs, o.rate)
	if err != nil {
		return 0, 0, err
	}
	if err := <-workerDone; err != nil {
		return 0, 0, err
	}
	close(stop)
	if err := <-polled; err != nil {
		return 0, 0, err
	}
	var lat []float64
	for p, a := range acks {
		for off, at := range a {
			if off < len(visible[p]) {
				lat = append(lat, float64(visible[p][off].Sub(at).Milliseconds()))
			}
		}
	}
	if len(lat) != n {
		return 0, 0, fmt.Errorf("saw %d of %d messages become queryable", len(lat), n)
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}
