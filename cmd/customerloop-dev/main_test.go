package main

import (
	"bytes"
	"strings"
	"testing"
)

// dev and broker take the arguments make demo, the docs and the end-to-end test pass
// them.
func TestCommandsKeepTheirFlags(t *testing.T) {
	for _, args := range [][]string{
		{"dev", "--keep-running", "--clickhouse-addr", "127.0.0.1:19000", "--timeout", "1m"},
		{"dev", "--kafka-addr", "127.0.0.1:0", "--database", "d", "--workdir", "w", "--customers", "3", "--products", "2",
			"--control-plane-bin", "b", "--dashboard-addr", ""},
		{"broker", "--addr", "127.0.0.1:9092", "--partitions", "3", "--data-dir", "d"},
	} {
		root := newRootCommand(&bytes.Buffer{}, &bytes.Buffer{})
		cmd, rest, err := root.Find(args)
		if err != nil || cmd.Name() != args[0] {
			t.Errorf("%v: found %q: %v", args, cmd.Name(), err)
			continue
		}
		if err := cmd.ParseFlags(rest); err != nil {
			t.Errorf("%s: %v", strings.Join(args, " "), err)
		}
	}
}

// The broker binds loopback only: any other host is refused before it starts.
func TestPortOf(t *testing.T) {
	for _, c := range []struct {
		addr string
		port int
		ok   bool
	}{
		{"127.0.0.1:9092", 9092, true},
		{"localhost:0", 0, true},
		{":9093", 9093, true},
		{"0.0.0.0:9092", 0, false},
		{"10.0.0.1:9092", 0, false},
		{"9092", 0, false},
	} {
		port, err := portOf(c.addr)
		if (err == nil) != c.ok || (c.ok && port != c.port) {
			t.Errorf("portOf(%q) = %d, %v; want %d, ok %v", c.addr, port, err, c.port, c.ok)
		}
	}
}
