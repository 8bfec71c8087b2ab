package testkit

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// ClusterNode stops or starts node n (1..3, as hack/clickhouse-cluster.sh numbers them)
// of the local test cluster and waits until it has exited ("stop") or answers ("start").
func ClusterNode(t testing.TB, action string, n int) {
	t.Helper()
	if action != "stop" && action != "start" {
		t.Fatalf("ClusterNode: action %q is neither stop nor start", action)
	}
	script := filepath.Join(RepoRoot(t), "hack", "clickhouse-cluster.sh")
	out, err := exec.Command(script, action+"-node", strconv.Itoa(n)).CombinedOutput()
	if err != nil {
		t.Fatalf("clickhouse-cluster.sh %s-node %d: %v\n%s", action, n, err, out)
	}
}

// RepoRoot is the directory holding go.mod, found by walking up from the test's working
// directory.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's working directory")
		}
		dir = parent
	}
}
