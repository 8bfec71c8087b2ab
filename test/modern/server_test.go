package modern

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl"
)

// server is one ClickHouse the test runs the planners' SQL on: the 18.16 server over the
// native protocol, or 26.x in chdb.
type server interface {
	name() string
	exec(ctx context.Context, sql string) error
	query(ctx context.Context, sql string) (table, error)
	insert(ctx context.Context, db string, s pipeline.StreamConfig, rows [][]any) error
}

// table is a query's result with every value normalized, so that the two servers'
// results compare cell by cell: nil for NULL, float64 for numbers, string for strings
// and for dates ("2006-01-02") and times ("2006-01-02 15:04:05", UTC).
type table struct {
	names, types []string
	rows         [][]any
}

// chdbServer talks to test/modern/chdbsql, which holds one persistent chdb session.
type chdbServer struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// startChdb builds and starts chdbsql. Without CHDB_LIB_PATH the test is skipped, or
// fails under make test (CUSTOMERLOOP_REQUIRE_STACK), which provides the library.
func startChdb(t *testing.T) *chdbServer {
	t.Helper()
	lib := os.Getenv("CHDB_LIB_PATH")
	if lib == "" {
		if os.Getenv("CUSTOMERLOOP_REQUIRE_STACK") != "" {
			t.Fatal("CHDB_LIB_PATH is not set; make test provides it with hack/chdb.sh")
		}
		t.Skip("CHDB_LIB_PATH is not set: ClickHouse 26.x runs here only as chdb's library; export CHDB_LIB_PATH=$(hack/chdb.sh)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "chdbsql")
	// Without cgo: chdb-go loads the library through purego, so no C toolchain is needed.
	build := exec.Command("go", "build", "-o", bin, "./chdbsql")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building chdbsql: %v\n%s", err, out)
	}
	session := filepath.Join(dir, "session")
	cmd := exec.Command(bin, session)
	// The session's time zone is UTC, as the 18.16 server's is here, so that toYYYYMM
	// partitions and the DateTime text of inserts and results mean the same instants.
	cmd.Env = append(os.Environ(), "TZ=UTC")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &chdbServer{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	s.out.Buffer(make([]byte, 1<<20), 256<<20)
	t.Cleanup(func() {
		_ = in.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("chdbsql: %v", err)
		}
	})
	return s
}

func (s *chdbServer) name() string { return "26.x (chdb)" }

func (s *chdbServer) run(query, format string) (string, error) {
	req, _ := json.Marshal(map[string]string{"query": query, "format": format})
	if _, err := s.in.Write(append(req, '\n')); err != nil {
		return "", fmt.Errorf("chdbsql: %w", err)
	}
	if !s.out.Scan() {
		return "", fmt.Errorf("chdbsql ended: %v", s.out.Err())
	}
	var resp struct{ Output, Error string }
	if err := json.Unmarshal(s.out.Bytes(), &resp); err != nil {
		return "", err
	}
	if resp.Error != "" {
		return "", errors.New(resp.Error)
	}
	return resp.Output, nil
}

func (s *chdbServer) exec(_ context.Context, sql string) error {
	_, err := s.run(sql, "JSONCompactEachRow")
	return err
}

// query reads the result as JSON with 64-bit integers as numbers (no count here comes
// near 2^53, where float64 stops being exact).
func (s *chdbServer) query(_ context.Context, sql string) (table, error) {
	// NaN and infinities come as strings ("nan"), not as null, which NULL is.
	out, err := s.run(sql+"\nSETTINGS output_format_json_quote_64bit_integers = 0, output_format_json_quote_denormals = 1",
		"JSONCompactEachRowWithNamesAndTypes")
	if err != nil {
		return table{}, err
	}
	var tb table
	for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var cells []any
		if err := json.Unmarshal([]byte(line), &cells); err != nil {
			return table{}, fmt.Errorf("reading %q: %w", line, err)
		}
		switch i {
		case 0:
			tb.names = strs(cells)
		case 1:
			tb.types = strs(cells)
		default:
			for j, c := range cells {
				if str, ok := c.(string); ok && strings.Contains(tb.types[j], "Float") {
					if cells[j], err = strconv.ParseFloat(str, 64); err != nil {
						return table{}, fmt.Errorf("column %s: %w", tb.names[j], err)
					}
				}
			}
			tb.rows = append(tb.rows, cells)
		}
	}
	return tb, nil
}

func strs(cells []any) []string {
	out := make([]string, len(cells))
	for i, c := range cells {
		out[i] = fmt.Sprint(c)
	}
	return out
}

// insert writes rows as JSONEachRow, the values in the stream's insert order.
func (s *chdbServer) insert(ctx context.Context, db string, st pipeline.StreamConfig, rows [][]any) error {
	cols := st.Columns()
	var b strings.Builder
	b.WriteString(ddl.InsertSQL(db, st) + " FORMAT JSONEachRow\n")
	for _, r := range rows {
		obj := map[string]any{}
		for i, c := range cols {
			obj[c.Name] = jsonValue(c.Type, r[i])
		}
		line, err := json.Marshal(obj)
		if err != nil {
			return err
		}
		b.Write(line)
		b.WriteByte('\n')
	}
	return s.exec(ctx, b.String())
}

func jsonValue(typ string, v any) any {
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return nil
		}
		v = rv.Elem().Interface()
	}
	if tm, ok := v.(time.Time); ok {
		if strings.Contains(typ, "DateTime") {
			return tm.UTC().Format(time.DateTime)
		}
		return tm.UTC().Format(time.DateOnly)
	}
	return v
}

// QueryRow lets pipeline.ReadServerFeatures ask chdb what it asks a real server.
func (s *chdbServer) QueryRow(ctx context.Context, query string, args ...any) driver.Row {
	if len(args) > 0 {
		return chdbRow{err: errors.New("chdbsql binds no parameters")}
	}
	tb, err := s.query(ctx, query)
	if err == nil && len(tb.rows) != 1 {
		err = fmt.Errorf("%d rows, want 1", len(tb.rows))
	}
	if err != nil {
		return chdbRow{err: err}
	}
	return chdbRow{cells: tb.rows[0]}
}

type chdbRow struct {
	cells []any
	err   error
}

func (r chdbRow) Err() error { return r.err }

func (r chdbRow) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	if len(dest) != len(r.cells) {
		return fmt.Errorf("scanning %d columns into %d values", len(r.cells), len(dest))
	}
	for i, c := range r.cells {
		b, _ := json.Marshal(c)
		if err := json.Unmarshal(b, dest[i]); err != nil {
			return fmt.Errorf("column %d: %w", i, err)
		}
	}
	return nil
}

func (r chdbRow) ScanStruct(any) error { return errors.New("not supported") }

// nativeServer is the 18.16 server.
type nativeServer struct{ conn driver.Conn }

func (s nativeServer) name() string { return "18.16" }

func (s nativeServer) exec(ctx context.Context, sql string) error { return s.conn.Exec(ctx, sql) }

// insert uses a batch: 18.16 hangs on INSERT ... VALUES with inline data.
func (s nativeServer) insert(ctx context.Context, db string, st pipeline.StreamConfig, rows [][]any) error {
	b, err := s.conn.PrepareBatch(ctx, ddl.InsertSQL(db, st))
	if err != nil {
		return err
	}
	for _, r := range rows {
		if err := b.Append(r...); err != nil {
			_ = b.Abort()
			return err
		}
	}
	return b.Send()
}

func (s nativeServer) query(ctx context.Context, sql string) (table, error) {
	rows, err := s.conn.Query(ctx, sql)
	if err != nil {
		return table{}, err
	}
	defer rows.Close()
	var tb table
	cts := rows.ColumnTypes()
	for _, ct := range cts {
		tb.names = append(tb.names, ct.Name())
		tb.types = append(tb.types, ct.DatabaseTypeName())
	}
	for rows.Next() {
		dest := make([]any, len(cts))
		for i, ct := range cts {
			dest[i] = reflect.New(ct.ScanType()).Interface()
		}
		if err := rows.Scan(dest...); err != nil {
			return table{}, err
		}
		row := make([]any, len(cts))
		for i := range dest {
			row[i] = normalize(tb.types[i], reflect.ValueOf(dest[i]))
		}
		tb.rows = append(tb.rows, row)
	}
	return tb, rows.Err()
}

func normalize(typ string, v reflect.Value) any {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	switch x := v.Interface().(type) {
	case time.Time:
		if strings.Contains(typ, "DateTime") {
			return x.UTC().Format(time.DateTime)
		}
		return x.UTC().Format(time.DateOnly)
	case string:
		return x
	}
	switch v.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return float64(v.Int())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return float64(v.Uint())
	case reflect.Float32, reflect.Float64:
		return v.Float()
	}
	return fmt.Sprint(v.Interface())
}

// sortRows orders rows by every column, NULL first, so that results compare without an
// ORDER BY (18.16 has no positional ORDER BY).
func sortRows(rows [][]any) {
	slices.SortFunc(rows, func(a, b []any) int {
		for i := range a {
			if c := compareCell(a[i], b[i]); c != 0 {
				return c
			}
		}
		return 0
	})
}

func compareCell(a, b any) int {
	switch {
	case a == nil && b == nil:
		return 0
	case a == nil:
		return -1
	case b == nil:
		return 1
	}
	if x, ok := a.(float64); ok {
		if y, ok := b.(float64); ok {
			switch {
			case x < y:
				return -1
			case x > y:
				return 1
			}
			return 0
		}
	}
	return strings.Compare(fmt.Sprint(a), fmt.Sprint(b))
}

// sameFloat is equality up to summation order: 26.x sums Float64 columns with several
// accumulators (vectorized), 18.16 with one, so a sum of non-integral quantities can
// differ in its last bits; 1e-9 relative is far above that and far below any real error.
func sameFloat(a, b float64) bool {
	return a == b || math.IsNaN(a) && math.IsNaN(b) || math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b))
}

func sameCell(a, b any) bool {
	x, xok := a.(float64)
	y, yok := b.(float64)
	if xok && yok {
		return sameFloat(x, y)
	}
	return reflect.DeepEqual(a, b)
}
