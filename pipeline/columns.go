package pipeline

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"time"
	"unsafe"

	chproto "github.com/ClickHouse/ch-go/proto"
	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
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
// then the source coordinates (_topic, _partition, _offset, _ingested_at). Message ids
// and received times ride along for deduplication and freshness.
type columns struct {
	cols     []colBuf
	decoded  int // number of decoded columns
	scratch  []value
	arena    []byte  // the bytes of every string value
	received []int64 // the broker's time of each row's message, Unix nanoseconds
	n        int
}

// Source columns' positions after the decoded ones.
const (
	srcTopic = iota
	srcPartition
	srcOffset
	srcIngestedAt
)

func newColumns(d *Decoder, s *StreamConfig) *columns {
	c := &columns{decoded: len(d.fields), scratch: make([]value, len(d.fields))}
	for _, f := range d.fields {
		c.cols = append(c.cols, colBuf{kind: f.kind, nullable: f.nullable})
	}
	if s != nil {
		c.cols = append(c.cols, colBuf{kind: vString}, colBuf{kind: vInt32}, colBuf{kind: vInt64}, colBuf{kind: vDateTime})
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
	c.arena, c.received, c.n = c.arena[:0], c.received[:0], 0
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

// appendSource completes a decoded row with where its message came from.
func (c *columns) appendSource(topic string, partition int, offset int64, ingested time.Time, received time.Time) {
	src := c.cols[c.decoded:]
	src[srcTopic].str = append(src[srcTopic].str, topic)
	src[srcPartition].i32 = append(src[srcPartition].i32, int32(partition))
	src[srcOffset].i64 = append(src[srcOffset].i64, offset)
	src[srcIngestedAt].i64 = append(src[srcIngestedAt].i64, ingested.Unix())
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
	var v any
	switch b.kind {
	case vString:
		v = b.str[i]
	case vFloat64:
		v = b.f64[i]
	case vFloat32:
		v = b.f32[i]
	case vInt32:
		v = b.i32[i]
	case vInt64:
		v = b.i64[i]
	case vDateTime:
		v = time.Unix(b.i64[i], 0).UTC()
	case vUInt32:
		v = b.u32[i]
	case vUInt64:
		v = b.u64[i]
	case vBool:
		v = b.u8[i]
	case vDate:
		v = b.date[i]
	}
	if !b.nullable {
		return v
	}
	null := b.nulls[i]
	switch t := v.(type) {
	case string:
		return nullablePtr(t, null)
	case float64:
		return nullablePtr(t, null)
	case float32:
		return nullablePtr(t, null)
	case int32:
		return nullablePtr(t, null)
	case int64:
		return nullablePtr(t, null)
	case uint32:
		return nullablePtr(t, null)
	case uint64:
		return nullablePtr(t, null)
	case uint8:
		return nullablePtr(t, null)
	case time.Time:
		return nullablePtr(t, null)
	}
	return nil
}

func nullablePtr[T any](v T, null bool) *T {
	if null {
		return nil
	}
	return &v
}

// slice returns the whole column in a shape clickhouse-go's column Append takes.
func (b *colBuf) slice() any {
	if b.nullable {
		n := len(b.nulls)
		out := make([]any, n)
		for i := range n {
			out[i] = b.any(i)
		}
		return nullableSlice(b.kind, out)
	}
	switch b.kind {
	case vString:
		return b.str
	case vFloat64:
		return b.f64
	case vFloat32:
		return b.f32
	case vInt32:
		return b.i32
	case vInt64, vDateTime:
		return b.i64
	case vUInt32:
		return b.u32
	case vUInt64:
		return b.u64
	case vBool:
		return b.u8
	default:
		return b.date
	}
}

// nullableSlice turns boxed pointers into the typed pointer slice of the kind.
func nullableSlice(k valKind, vals []any) any {
	switch k {
	case vString:
		return ptrs[string](vals)
	case vFloat64:
		return ptrs[float64](vals)
	case vFloat32:
		return ptrs[float32](vals)
	case vInt32:
		return ptrs[int32](vals)
	case vInt64:
		return ptrs[int64](vals)
	case vUInt32:
		return ptrs[uint32](vals)
	case vUInt64:
		return ptrs[uint64](vals)
	case vBool:
		return ptrs[uint8](vals)
	default:
		return ptrs[time.Time](vals)
	}
}

func ptrs[T any](vals []any) []*T {
	out := make([]*T, len(vals))
	for i, v := range vals {
		out[i], _ = v.(*T)
	}
	return out
}

// keep drops the rows whose keep[i] is false, in place.
func (c *columns) keep(keep []bool) {
	j := 0
	for i := range c.n {
		if !keep[i] {
			continue
		}
		for k := range c.cols {
			c.cols[k].move(j, i)
		}
		c.received[j] = c.received[i]
		j++
	}
	for k := range c.cols {
		c.cols[k].truncate(j)
	}
	c.received, c.n = c.received[:j], j
}

func (b *colBuf) move(to, from int) {
	if b.nullable {
		b.nulls[to] = b.nulls[from]
	}
	switch b.kind {
	case vString:
		b.str[to] = b.str[from]
	case vFloat64:
		b.f64[to] = b.f64[from]
	case vFloat32:
		b.f32[to] = b.f32[from]
	case vInt32:
		b.i32[to] = b.i32[from]
	case vInt64, vDateTime:
		b.i64[to] = b.i64[from]
	case vUInt32:
		b.u32[to] = b.u32[from]
	case vUInt64:
		b.u64[to] = b.u64[from]
	case vBool:
		b.u8[to] = b.u8[from]
	case vDate:
		b.date[to] = b.date[from]
	}
}

func (b *colBuf) truncate(n int) {
	if b.nullable {
		b.nulls = b.nulls[:n]
	}
	switch b.kind {
	case vString:
		b.str = b.str[:n]
	case vFloat64:
		b.f64 = b.f64[:n]
	case vFloat32:
		b.f32 = b.f32[:n]
	case vInt32:
		b.i32 = b.i32[:n]
	case vInt64, vDateTime:
		b.i64 = b.i64[:n]
	case vUInt32:
		b.u32 = b.u32[:n]
	case vUInt64:
		b.u64 = b.u64[:n]
	case vBool:
		b.u8 = b.u8[:n]
	case vDate:
		b.date = b.date[:n]
	}
}

// presizeString gives a String column of clickhouse-go room for strs before they are
// appended. Appending grows its buffers a quarter at a time once they are large, which
// copied each batch's string bytes four times over and was a sixth of the worker's CPU.
// clickhouse-go has no way to reserve capacity, but decoding a column sizes it exactly
// (ch-go's ColStr.DecodeColumn): so decode a column of the same shape, all zeros, and
// reset it, which keeps the capacity. Should that stop sizing the column, appending
// still works, only slower.
func presizeString(col *column.String, strs []string) {
	if len(strs) < 2 {
		return
	}
	total := 0
	for _, s := range strs {
		total += len(s)
	}
	// On the wire: a length (uvarint) and the bytes of each string. One string holding
	// every byte, then empty ones, sizes the buffer and the positions in one step each.
	head := binary.AppendUvarint(nil, uint64(total))
	r := io.MultiReader(bytes.NewReader(head), &zeroReader{n: total + len(strs) - 1})
	_ = col.Decode(chproto.NewReader(r), len(strs))
	col.Reset()
}

// zeroReader reads n zero bytes.
type zeroReader struct{ n int }

func (z *zeroReader) Read(p []byte) (int, error) {
	if z.n == 0 {
		return 0, io.EOF
	}
	k := min(len(p), z.n)
	clear(p[:k])
	z.n -= k
	return k, nil
}

// insertColumns writes the batch in one INSERT, column by column, so that it lands as a
// whole or not at all.
func insertColumns(ctx context.Context, conn driver.Conn, database string, s StreamConfig, c *columns) error {
	batch, err := conn.PrepareBatch(ctx, InsertSQL(database, s))
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
