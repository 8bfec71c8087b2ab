package main

// The ClickHouse ceiling: the server taking the workers' rows already in its Native format.

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/ch-go"
	"github.com/ClickHouse/ch-go/proto"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	"customerloop.dev/customerloop/pipeline/ingest"
)

// nativeBlocks are the rows of the messages as the workers insert them (the usage stream's
// columns, source columns included), decoded and laid out as typed Native columns in
// blocks of nativeRows, once, before any timing.
type nativeBlocks struct {
	stream pipeline.StreamConfig
	blocks []proto.Input
	rows   int
}

// nativeRows is the ceiling's block: the workers' default batch. Batches of 50k rows were
// measured slower than 20k through clickhouse-go (its string buffers leaving the caches).
const nativeRows = 20_000

func encodeNative(msgs [][]byte) (*nativeBlocks, error) {
	s := benchConfig(nil, "", "", "usage", "bench.usage").Streams[0]
	dec, err := ingest.NewDecoder(s)
	if err != nil {
		return nil, err
	}
	cols := s.Columns()
	now := time.Now().UTC().Truncate(time.Second)
	nb := &nativeBlocks{stream: s, rows: len(msgs)}
	for i := 0; i < len(msgs); i += nativeRows {
		part := msgs[i:min(i+nativeRows, len(msgs))]
		in := make(proto.Input, len(cols))
		for j, c := range cols {
			in[j].Name = c.Name
		}
		for k, m := range part {
			r, err := dec.Decode(m, now)
			if err != nil {
				return nil, err
			}
			r = append(r, s.Topic, int32(0), int64(i+k), now, now.UnixMilli())
			if len(r) != len(cols) {
				return nil, fmt.Errorf("decoded %d values for %d columns", len(r), len(cols))
			}
			for j, v := range r {
				if err := appendNative(&in[j], v, len(part)); err != nil {
					return nil, fmt.Errorf("column %s: %w", cols[j].Name, err)
				}
			}
		}
		nb.blocks = append(nb.blocks, in)
	}
	return nb, nil
}

// appendNative appends v to the column, creating the column of v's type on first use.
func appendNative(c *proto.InputColumn, v any, n int) error {
	switch v := v.(type) {
	case string:
		if c.Data == nil {
			c.Data = &proto.ColStr{Buf: make([]byte, 0, n*32), Pos: make([]proto.Position, 0, n)}
		}
		c.Data.(*proto.ColStr).Append(v)
	case float64:
		if c.Data == nil {
			c.Data = &proto.ColFloat64{}
		}
		c.Data.(*proto.ColFloat64).Append(v)
	case int32:
		if c.Data == nil {
			c.Data = &proto.ColInt32{}
		}
		c.Data.(*proto.ColInt32).Append(v)
	case int64:
		if c.Data == nil {
			c.Data = &proto.ColInt64{}
		}
		c.Data.(*proto.ColInt64).Append(v)
	case time.Time:
		if c.Data == nil {
			c.Data = &proto.ColDateTime{}
		}
		c.Data.(*proto.ColDateTime).Append(v)
	default:
		return fmt.Errorf("no Native column for %T", v)
	}
	return nil
}

// nativeCeiling creates a fresh table of the usage stream's shape in db and times only the
// server taking the prepared blocks, one INSERT per block, one after another on one
// connection, as a worker's flusher inserts.
func nativeCeiling(ctx context.Context, conn driver.Conn, addr, db string, nb *nativeBlocks) (float64, error) {
	s := nb.stream
	s.Name = "ceiling"
	cfg := pipeline.Config{Kafka: pipeline.KafkaConfig{Brokers: []string{"x:1"}, Group: "g"},
		ClickHouse: pipeline.ClickHouseConfig{Addr: "x:1", Database: db}, Streams: []pipeline.StreamConfig{s}}
	stmts, err := ddl.PlanSchema(cfg)
	if err != nil {
		return 0, err
	}
	if err := ddl.ApplySchema(ctx, conn, stmts); err != nil {
		return 0, err
	}
	c, err := ch.Dial(ctx, ch.Options{Address: addr, Database: db, ClientName: "customerloop-bench"})
	if err != nil {
		return 0, fmt.Errorf("ch-go dial %s: %w", addr, err)
	}
	defer c.Close()
	body := ddl.InsertSQL(db, s) + " VALUES"
	start := time.Now()
	for _, in := range nb.blocks {
		if err := c.Do(ctx, ch.Query{Body: body, Input: in}); err != nil {
			return 0, fmt.Errorf("native insert: %w", err)
		}
	}
	return float64(nb.rows) / time.Since(start).Seconds(), nil
}
