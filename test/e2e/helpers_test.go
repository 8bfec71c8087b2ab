package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl"
)

func requireStack(t *testing.T) {
	t.Helper()
	if os.Getenv("CLICKHOUSE_ADDR") == "" || os.Getenv("KUBEBUILDER_ASSETS") == "" {
		if os.Getenv("CUSTOMERLOOP_REQUIRE_STACK") != "" {
			t.Fatal("CLICKHOUSE_ADDR and KUBEBUILDER_ASSETS must be set; run the tests with make test")
		}
		t.Skip("CLICKHOUSE_ADDR and KUBEBUILDER_ASSETS are not set; make test sets them")
	}
}

// buildBinary builds the customerloop binary as users get it.
func buildBinary(t *testing.T) string {
	t.Helper()
	return buildCommand(t, "customerloop")
}

// buildCommand builds the command cmd/<name>.
func buildCommand(t *testing.T, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	out, err := exec.Command("go", "build", "-o", bin, "../../cmd/"+name).CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// createSchema creates a pipeline config's database and tables and returns the connection
// it used; the caller closes it.
func createSchema(t *testing.T, cfg pipeline.Config) driver.Conn {
	t.Helper()
	ctx := context.Background()
	ch, err := connect.OpenClickHouse(ctx, cfg.ClickHouse)
	if err != nil {
		t.Fatal(err)
	}
	stmts, err := ddl.PlanSchema(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ddl.ApplySchema(ctx, ch, stmts); err != nil {
		t.Fatal(err)
	}
	return ch
}
