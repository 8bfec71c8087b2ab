// Command chdbsql runs ClickHouse SQL in chdb, ClickHouse 26.x built as an in-process
// library, for the tests of test/modern. It is a separate process because chdb-go loads
// libchdb.so (CHDB_LIB_PATH) when the program starts and panics without it, and a test
// binary must be able to skip instead; and because chdb allows one session per process.
//
// It opens one persistent session in the directory given as its argument (so that
// tables and materialized views live across queries), then reads requests from stdin,
// one JSON object a line, {"query": "...", "format": "JSONCompactEachRow"}, and answers
// each on stdout with {"output": "..."} or {"error": "..."}. It ends at the end of stdin.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"github.com/chdb-io/chdb-go/chdb"
)

type request struct {
	Query  string `json:"query"`
	Format string `json:"format"`
}

type response struct {
	Output string `json:"output,omitempty"`
	Error  string `json:"error,omitempty"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "chdbsql:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) != 2 {
		return fmt.Errorf("usage: chdbsql <session directory>")
	}
	s, err := chdb.NewSession(os.Args[1])
	if err != nil {
		return fmt.Errorf("opening a session: %w", err)
	}
	defer s.Close()
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 256<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var req request
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			return fmt.Errorf("reading a request: %w", err)
		}
		if req.Format == "" {
			req.Format = "JSONCompactEachRow"
		}
		var resp response
		res, err := s.Query(req.Query, req.Format)
		if err != nil {
			resp.Error = err.Error()
		} else if res != nil {
			resp.Output = res.String()
			res.Free()
		}
		if err := out.Encode(resp); err != nil {
			return err
		}
	}
	return in.Err()
}
