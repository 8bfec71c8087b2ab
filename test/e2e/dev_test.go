// Package e2e runs CustomerLoop the way a user does: the built binary, on the real local
// stack (kube-apiserver and etcd, ClickHouse, a Kafka-protocol broker).
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestDevDemo runs `customerloop-dev dev`, the command behind `make demo`: it must bring the
// stack up, land every produced message, print matching counts, and tear down cleanly.
func TestDevDemo(t *testing.T) {
	requireStack(t)
	bin := buildCommand(t, "customerloop-dev")
	db := fmt.Sprintf("e2e_demo_%d", time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "dev",
		"--kafka-addr", "127.0.0.1:0", // any free port
		"--database", db,
		"--workdir", t.TempDir(),
		"--customers", "3", "--products", "2")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	t.Logf("customerloop-dev dev:\n%s", out.String())
	if err != nil {
		t.Fatalf("customerloop-dev dev failed: %v", err)
	}
	for _, want := range []string{
		"Loop Ready",
		"Dead-letter topics hold 3 messages (3 malformed were sent)",
		"Every count matches what was produced",
		"has no members left",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// Six customer/product rows in the count table, none marked as differing; then the
	// gap report with the accuracy of last month's plans.
	counts, gaps, found := strings.Cut(out.String(), "Every count matches what was produced")
	if !found || !strings.Contains(gaps, "Plan against actual") || !strings.Contains(gaps, "accuracy by horizon") {
		t.Errorf("no gap report after the counts")
	}
	if strings.Contains(gaps, "(no completed period with a plan yet)") {
		t.Error("the gap report has no accuracy for last month's plans")
	}
	if n := strings.Count(counts, "acme-0"); n != 6 {
		t.Errorf("the table has %d customer rows, want 6", n)
	}
	if strings.Contains(out.String(), "differs") {
		t.Error("the table marks a difference")
	}
	drop := exec.Command("clickhouse-client", "--host", strings.Split(os.Getenv("CLICKHOUSE_ADDR"), ":")[0],
		"--port", strings.Split(os.Getenv("CLICKHOUSE_ADDR"), ":")[1], "--query", "DROP DATABASE IF EXISTS "+db)
	_ = drop.Run()
}
