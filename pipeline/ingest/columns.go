package ingest

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"time"
	"unsafe"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
	chproto "github.com/ClickHouse/ch-go/proto"
	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/valyala/fastjson"
)

// valKind is the Go shape of a raw-table column.
type valKind uint8

const (
	vString valKind = iota
	vFloat64
	vFloat32
	vInt32
	vInt64
	vUInt32
	vUInt64
	vBool
	vDate
	vDateTime
)

// value is one decoded field, held in the decoder's scratch until the whole message is
// valid. Strings point into the parser's memory or buf and are copied when appended.
type value struct {
	str  []byte
	buf  []byte // scratch for a number's text
	f    float64
	i    int64 // signed integers; Date and DateTime as Unix seconds
	u    uint64
	null bool
}

// colBuf holds one column of a batch in its ClickHouse shape. Only the slice of its kind
// is used. The slices are pointer-free except str and date, so a batch of many thousand
// rows costs the garbage collector little, and they keep their capacity from batch to
// batch.
type colBuf struct {
	kind     valKind
	nullable bool
	str      []string // views into columns.arena
	f64      []float64
	f32      []float32
	i32      []int32
	i64      []int64 // Int64, and DateTime as Unix seconds
	u32      []uint32
	u64      []uint64
	u8       []uint8
	date     []time.Time
	nulls    []bool // nullable columns only
}

// columns is a batch of one stream's rows, column by column: the decoded columns first,
// then the source coordinates (_topic, _partition, _offset, _ingested_at,
// _produced_at_ms). Message ids
// and received times ride along for deduplication and freshness.
type columns struct {
	cols     []colBuf
	decoded  int // number of decoded columns
	scratch  []value
	arena    []byte  // the bytes of every string value
	received []int64 // the broker's time of each row's message, Unix nanoseconds
	n        int
	bytes    int // of the messages behind the rows, as added (keep does not lower it)
	// parser holds the last decoded message: scratch's strings point into its memory
	// until the next decode. It is the columns' own, never pooled: a parser shared with
	// another goroutine could be overwritten before appendDecoded copies the strings.
	parser fastjson.Parser
}

// Source columns' positions after the decoded ones.
const (
	srcTopic = iota
	srcPartition
	srcOffset
	srcIngestedAt
	srcProducedAt
)

func newColumns(d *Decoder, s *pipeline.StreamConfig) *columns {
	c := &columns{decoded: len(d.fields), scratch: make([]value, len(d.fields))}
	for _, f := range d.fields {
		c.cols = append(c.cols, colBuf{kind: f.kind, nullable: f.nullable})
	}
	if s != nil {
		c.cols = append(c.cols, colBuf{kind: vString}, colBuf{kind: vInt32}, colBuf{kind: vInt64}, colBuf{kind: vDateTime}, colBuf{kind: vInt64})
	}
	return c
}

// reset empties the batch and keeps its memory.
func (c *columns) reset() {
	for i := range c.cols {
		b := &c.cols[i]
		b.str, b.f64, b.f32, b.i32, b.i64 = b.str[:0], b.f64[:0], b.f32[:0], b.i32[:0], b.i64[:0]
		b.u32, b.u64, b.u8, b.date, b.nulls = b.u32[:0], b.u64[:0], b.u8[:0], b.date[:0], b.nulls[:0]
	}
	c.arena, c.received, c.n, c.bytes = c.arena[:0], c.received[:0], 0, 0
}

// internString copies b into the arena and returns a string viewing the copy. The arena
// only grows within a batch (a reallocation leaves earlier strings on the old array,
// which they keep alive), and is reused only after the batch is written.
func (c *columns) internString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if cap(c.arena)-len(c.arena) < len(b) {
		c.arena = make([]byte, 0, max(2*cap(c.arena), len(b), 64<<10))
	}
	start := len(c.arena)
	c.arena = append(c.arena, b...)
	return unsafe.String(&c.arena[start], len(b))
}

// appendDecoded appends the scratch values of a message the decoder accepted.
func (c *columns) appendDecoded() {
	for i := range c.decoded {
		c.cols[i].append(c, &c.scratch[i])
	}
	if len(c.cols) == c.decoded { // a row-shaped decode, without source columns
		c.n++
	}
}

// appendSource completes a decoded row with where its message came from; produced is
// the message's produce time in Unix milliseconds (see producedAt).
func (c *columns) appendSource(topic string, partition int, offset int64, ingested time.Time, produced int64, received time.Time) {
	src := c.cols[c.decoded:]
	src[srcTopic].str = append(src[srcTopic].str, topic)
	src[srcPartition].i32 = append(src[srcPartition].i32, int32(partition))
	src[srcOffset].i64 = append(src[srcOffset].i64, offset)
	src[srcIngestedAt].i64 = append(src[srcIngestedAt].i64, ingested.Unix())
	src[srcProducedAt].i64 = append(src[srcProducedAt].i64, produced)
	c.received = append(c.received, received.UnixNano())
	c.n++
}

func (b *colBuf) append(c *columns, v *value) {
	if b.nullable {
		b.nulls = append(b.nulls, v.null)
	}
	switch b.kind {
	case vString:
		s := ""
		if !v.null {
			s = c.internString(v.str)
		}
		b.str = append(b.str, s)
	case vFloat64:
		b.f64 = append(b.f64, v.f)
	case vFloat32:
		b.f32 = append(b.f32, float32(v.f))
	case vInt32:
		b.i32 = append(b.i32, int32(v.i))
	case vInt64, vDateTime:
		b.i64 = append(b.i64, v.i)
	case vUInt32:
		b.u32 = append(b.u32, uint32(v.u))
	case vUInt64:
		b.u64 = append(b.u64, v.u)
	case vBool:
		b.u8 = append(b.u8, uint8(v.u))
	case vDate:
		b.date = append(b.date, time.Unix(v.i, 0).UTC())
	}
}

// any returns row i of the column as the value clickhouse-go takes for it: a pointer for a
// nullable column (nil for NULL), time.Time for dates and times.
func (b *colBuf) any(i int) any {
	switch b.kind {
	case vString:
		return row(b, b.str[i], i)
	case vFloat64:
		return row(b, b.f64[i], i)
	case vFloat32:
		return row(b, b.f32[i], i)
	case vInt32:
		return row(b, b.i32[i], i)
	case vInt64:
		return row(b, b.i64[i], i)
	case vDateTime:
		return row(b, time.Unix(b.i64[i], 0).UTC(), i)
	case vUInt32:
		return row(b, b.u32[i], i)
	case vUInt64:
		return row(b, b.u64[i], i)
	case vBool:
		return row(b, b.u8[i], i)
	default:
		return row(b, b.date[i], i)
	}
}

// row is v, or for a nullable column a pointer to it (nil when row i is NULL).
func row[T any](b *colBuf, v T, i int) any {
	if !b.nullable {
		return v
	}
	if b.nulls[i] {
		return (*T)(nil)
	}
	return &v
}

// slice returns the whole column in a shape clickhouse-go's column Append takes: its
// values, or pointers to them (nil for NULL) for a nullable column.
func (b *colBuf) slice() any {
	switch b.kind {
	case vString:
		return orPointers(b, b.str)
	case vFloat64:
		return orPointers(b, b.f64)
	case vFloat32:
		return orPointers(b, b.f32)
	case vInt32:
		return orPointers(b, b.i32)
	case vInt64, vDateTime:
		return orPointers(b, b.i64)
	case vUInt32:
		return orPointers(b, b.u32)
	case vUInt64:
		return orPointers(b, b.u64)
	case vBool:
		return orPointers(b, b.u8)
	default:
		return orPointers(b, b.date)
	}
}

// orPointers returns vals as they are for a column that is not nullable, and as pointers
// for one that is.
func orPointers[T any](b *colBuf, vals []T) any {
	if !b.nullable {
		return vals
	}
	out := make([]*T, len(vals))
	for i := range vals {
		if !b.nulls[i] {
			out[i] = &vals[i]
		}
	}
	return out
}

// keep drops the rows whose keep[i] is false, in place.
func (c *columns) keep(keep []bool) { c.keepFrom(0, keep) }

// keepFrom drops the rows from on whose keep[row-from] is false, in place; the rows
// before from stay as they are.
func (c *columns) keepFrom(from int, keep []bool) {
	for k := range c.cols {
		b := &c.cols[k]
		// Only the slice of the column's kind holds rows; the others are empty.
		b.str, b.f64, b.f32, b.i32, b.i64 = kept(b.str, from, keep), kept(b.f64, from, keep), kept(b.f32, from, keep), kept(b.i32, from, keep), kept(b.i64, from, keep)
		b.u32, b.u64, b.u8, b.date, b.nulls = kept(b.u32, from, keep), kept(b.u64, from, keep), kept(b.u8, from, keep), kept(b.date, from, keep), kept(b.nulls, from, keep)
	}
	c.received = kept(c.received, from, keep)
	c.n = len(c.received)
}

// kept compacts s from from on to the elements whose keep[i-from] is true. An empty s
// stays empty.
func kept[T any](s []T, from int, keep []bool) []T {
	if len(s) == 0 {
		return s
	}
	j := from
	for i := from; i < len(s); i++ {
		if keep[i-from] {
			s[j] = s[i]
			j++
		}
	}
	return s[:j]
}

// presizeString gives a String column of clickhouse-go room for strs before they are
// appended. Appending grows its buffers a quarter at a time once they are large, which
// copied each batch's string bytes four times over and was a sixth of the worker's CPU.
// clickhouse-go has no way to reserve capacity, but decoding a column sizes it exactly
// (ch-go's ColStr.DecodeColumn): so decode a column of the same size and reset it,
// which keeps the capacity. Should that stop sizing the column, appending still works,
// only slower (TestPresizeStringSizesColumn tells).
//
// DecodeColumn sizes the positions for every row before it reads any, and the bytes
// at the first string, which holds them all: so the input ends there, and the decode
// fails at the second row instead of reading an empty string for each of the others.
func presizeString(col *column.String, strs []string) {
	if len(strs) < 2 {
		return
	}
	total := 0
	for _, s := range strs {
		total += len(s)
	}
	// On the wire: a length (uvarint) and the bytes of each string. One string holding
	// every byte sizes the buffer and the positions in one step each.
	head := binary.AppendUvarint(nil, uint64(total))
	r := io.MultiReader(bytes.NewReader(head), &filler{n: total})
	_ = col.Decode(chproto.NewReader(r), len(strs))
	col.Reset()
}

// filler reads n bytes without writing them: p keeps what it holds. presizeString's
// column drops its bytes unread, so writing zeros over them would only cost time.
type filler struct{ n int }

func (f *filler) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, io.EOF
	}
	k := min(len(p), f.n)
	f.n -= k
	return k, nil
}

// insertColumns writes the batch in one INSERT, column by column, so that it lands as a
// whole or not at all.
func insertColumns(ctx context.Context, conn driver.Conn, database string, s pipeline.StreamConfig, c *columns) error {
	batch, err := conn.PrepareBatch(ctx, ddl.InsertSQL(database, s))
	if err != nil {
		return fmt.Errorf("preparing insert into %s: %w", s.Table(), err)
	}
	cols := batch.Columns()
	for i := range c.cols {
		if b := &c.cols[i]; b.kind == vString && !b.nullable && i < len(cols) {
			if sc, ok := cols[i].(*column.String); ok {
				presizeString(sc, b.str)
			}
		}
		if err := batch.Column(i).Append(c.cols[i].slice()); err != nil {
			_ = batch.Abort()
			return fmt.Errorf("appending column %d to %s: %w", i, s.Table(), err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("inserting into %s: %w", s.Table(), err)
	}
	return nil
}
