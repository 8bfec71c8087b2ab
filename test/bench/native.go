package main

// The ClickHouse ceiling: the server taking the workers' rows already in its Native format.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

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
	// bodies are the blocks as the Native format's bytes, one INSERT's body each.
	bodies [][]byte
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
		var buf proto.Buffer
		// The revision of 18.16: no custom serialization flags in the block.
		if err := (proto.Block{Columns: len(in), Rows: len(part)}).EncodeRawBlock(&buf, 54412, in); err != nil {
			return nil, err
		}
		nb.bodies = append(nb.bodies, buf.Buf)
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
// server taking the prepared blocks over its HTTP interface (FORMAT Native), one INSERT
// per block, one after another on one kept-alive connection, as a worker's flusher
// inserts. (The native TCP protocol's Go clients either encode while inserting or, as
// ch-go, do not speak 18.16's revision of it.)
func nativeCeiling(ctx context.Context, conn driver.Conn, httpAddr, db string, nb *nativeBlocks) (float64, error) {
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
	u := "http://" + httpAddr + "/?" + url.Values{"query": {ddl.InsertSQL(db, s) + " FORMAT Native"}}.Encode()
	client := &http.Client{Timeout: time.Minute}
	start := time.Now()
	for _, body := range nb.bodies {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
		if err != nil {
			return 0, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, fmt.Errorf("native insert: %w", err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("native insert: %s: %.300s", resp.Status, msg)
		}
	}
	return float64(nb.rows) / time.Since(start).Seconds(), nil
}

// clickhouseHTTP returns the server's HTTP address: CLICKHOUSE_HTTP_ADDR, or the port of
// the server process (serving the native address) that answers /ping.
func clickhouseHTTP(o options) (string, error) {
	if a := os.Getenv("CLICKHOUSE_HTTP_ADDR"); a != "" {
		return a, nil
	}
	host, _, _ := strings.Cut(o.clickhouse, ":")
	client := &http.Client{Timeout: time.Second}
	for _, port := range listenPorts(o.serverPID) {
		resp, err := client.Get(fmt.Sprintf("http://%s:%d/ping", host, port))
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.TrimSpace(string(b)) == "Ok." {
			return fmt.Sprintf("%s:%d", host, port), nil
		}
	}
	return "", fmt.Errorf("no HTTP port of the ClickHouse server at %s found: set CLICKHOUSE_HTTP_ADDR", o.clickhouse)
}
